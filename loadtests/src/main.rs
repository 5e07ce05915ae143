//! `tally-loadtest`: parse the command line, run the command, exit 0 (passed), 1
//! (verification failed) or 2 (the tester could not do its job).

use clap::Parser;
use tally_loadtest::cli::{self, Cli};

#[tokio::main]
async fn main() {
    let arguments = Cli::parse();
    match cli::execute(arguments).await {
        Ok(status) => std::process::exit(status),
        Err(error) => {
            eprintln!("tally-loadtest: {error:#}");
            std::process::exit(2);
        }
    }
}
