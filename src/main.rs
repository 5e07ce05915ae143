//! `tally`: the ledger service and its operator commands.

use tally::cli::{self, Command};

// Requests allocate and free many small buffers on every worker thread; mimalloc's
// per-thread heaps serve them with less contention and less work than the system
// allocator (malloc and free were about a sixth of the server's CPU in profiles).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
