//! `tally`: the ledger service and its operator commands.

use tally::cli::{self, Command};

#[actix_web::main]
async fn main() {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match Command::parse(&arguments) {
        Ok(command) => cli::run(command).await,
        Err(error) => Err(error),
    };
    match outcome {
        Ok(code) => std::process::exit(code),
        Err(error) => {
            // One line: what failed and why, without a backtrace.
            eprintln!("tally: {error:#}");
            std::process::exit(2);
        }
    }
}
