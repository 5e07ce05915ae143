//! The command line: `tally` (serve, the default), `tally migrate`, `tally verify`.

use anyhow::{Context, bail};
use tally_actors::{Role, Store};

use crate::configuration::{Environment, Settings};
use crate::routes::auth::create_user;
use crate::startup::{Application, build_auth};
use crate::telemetry;

const USAGE: &str = "usage: tally [serve | migrate | verify | admin create --username NAME [--email ADDRESS] | help]

  serve         run the HTTP service (the default)
  migrate       apply the database migrations and exit
  verify        check the ledger's invariants in the store and exit non-zero on any violation
  admin create  create an admin user; the password is the first line of standard input

Configuration comes from the environment (and .env); see README.md.";

/// How many violations of each kind `tally verify` lists.
const VERIFY_LIST_MAX: i64 = 100;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Serve,
    Migrate,
    Verify,
    CreateAdmin { username: String, email: Option<String> },
    Help,
}

impl Command {
    pub fn parse(arguments: &[String]) -> anyhow::Result<Command> {
        match arguments.first().map(String::as_str) {
            None | Some("serve") => Ok(Command::Serve),
            Some("migrate") => Ok(Command::Migrate),
            Some("verify") => Ok(Command::Verify),
            Some("help" | "--help" | "-h") => Ok(Command::Help),
            Some("admin") if arguments.get(1).map(String::as_str) == Some("create") => {
                let mut username = None;
                let mut email = None;
                let mut rest = arguments[2..].iter();
                while let Some(flag) = rest.next() {
                    let value = rest.next().cloned();
                    match (flag.as_str(), value) {
                        ("--username", Some(value)) => username = Some(value),
                        ("--email", Some(value)) => email = Some(value),
                        (flag, _) => bail!("admin create: unexpected {flag:?}\n{USAGE}"),
                    }
                }
                let username = username.with_context(|| format!("admin create needs --username\n{USAGE}"))?;
                Ok(Command::CreateAdmin { username, email })
            }
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
    let telemetry = telemetry::init(&settings.log);
    match command {
        Command::Serve => {
            let application = Application::build(settings).await?;
            let served = application.run_until_stopped().await;
            telemetry.shutdown();
            served?;
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
        Command::CreateAdmin { username, email } => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            let password = line.trim_end_matches(['\r', '\n']).to_string();
            let store = Store::connect(&settings.engine.database_url, 2)
                .await
                .context("connecting to the store")?;
            let auth = build_auth(&settings, store.clone(), None)?;
            let email = email.unwrap_or_else(|| format!("{username}@tally.invalid"));
            let created = create_user(&store, &auth, &username, &email, &password, Role::Admin, None)
                .await
                .map_err(|error| anyhow::anyhow!("{}: {}", error.code.as_str(), error.detail))?;
            println!("created admin {} (user id {})", created.username, created.id);
            Ok(0)
        }
        Command::Help => unreachable!("handled above"),
    }
}
