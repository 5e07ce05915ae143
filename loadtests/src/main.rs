//! `tally-loadtest`: parse the command line, run the command, exit 0 (passed), 1
//! (verification failed) or 2 (the tester could not do its job).

use clap::Parser;
use tally_loadtest::cli::{self, Cli};

// Every request builds and drops a handful of small buffers on both runtime threads; the
// system allocator spent about half the tester's CPU on them, CPU the measured server
// shares on one machine. mimalloc is the allocator the server uses for the same reason.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
