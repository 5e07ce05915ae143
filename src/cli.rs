//! The command line: `tally` (serve, the default), `tally migrate`, `tally verify`.

use anyhow::{Context, bail};
use tally_actors::Store;

use crate::configuration::{Environment, Settings};
use crate::startup::Application;
use crate::telemetry;

const USAGE: &str = "usage: tally [serve | migrate | verify | help]

  serve    run the HTTP service (the default)
  migrate  apply the database migrations and exit
  verify   check the ledger's invariants in the store and exit non-zero on any violation

Configuration comes from the environment (and .env); see README.md.";

/// How many violations of each kind `tally verify` lists.
const VERIFY_LIST_MAX: i64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Serve,
    Migrate,
    Verify,
    Help,
}

impl Command {
    pub fn parse(arguments: &[String]) -> anyhow::Result<Command> {
        match arguments.first().map(String::as_str) {
            None | Some("serve") => Ok(Command::Serve),
            Some("migrate") => Ok(Command::Migrate),
            Some("verify") => Ok(Command::Verify),
            Some("help" | "--help" | "-h") => Ok(Command::Help),
            Some(other) => bail!("unknown command {other:?}\n{USAGE}"),
        }
    }
}

/// Run `command`; the returned code is the process exit code.
pub async fn run(command: Command) -> anyhow::Result<i32> {
    if let Command::Help = command {
        println!("{USAGE}");
        return Ok(0);
    }
    let settings = Settings::from_environment(&Environment::from_process())?;
    telemetry::init(&settings.log);
    match command {
        Command::Serve => {
            let application = Application::build(settings).await?;
            application.run_until_stopped().await?;
            Ok(0)
        }
        Command::Migrate => {
            Store::connect(&settings.engine.database_url, 1)
                .await
                .context("connecting to the store")?;
            println!("migrations applied");
            Ok(0)
        }
        Command::Verify => {
            let store = Store::connect(&settings.engine.database_url, 2)
                .await
                .context("connecting to the store")?;
            let violations = store.verify(VERIFY_LIST_MAX).await?;
            if violations.is_empty() {
                let (_, accounts) = store.balance_sum().await?;
                println!("ok: {accounts} accounts, every invariant holds");
                Ok(0)
            } else {
                for violation in &violations {
                    println!("violation: {violation}");
                }
                Ok(1)
            }
        }
        Command::Help => unreachable!("handled above"),
    }
}
