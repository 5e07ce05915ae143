//! The command line: `setup`, `run`, `verify` and `chaos`, with every flag documented
//! (`--help`), and what each command does with them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tally_actors::Store;

use crate::chaos::{self, ChaosPlan};
use crate::client::{ApiClient, RetryPolicy, amount_flag};
use crate::database;
use crate::owners::OwnerTokens;
use crate::runner::{Pacing, RunPlan, Stop};
use crate::session::{LoadSession, SessionOptions};
use crate::setup::{self, SetupPlan};
use crate::verify::{self, RunRecord, VerifyInputs};
use crate::workload::{HoldMix, Mix, Shape, WorkloadConfig};

/// The default PostgreSQL server: the one the tests and CI use.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The command that restarts PostgreSQL on a Debian machine like this one.
pub const DEFAULT_POSTGRES_RESTART: &str = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main restart";

/// Load tester for Tally: sets up and funds accounts, sends load (closed or open loop)
/// with a chosen account shape, reports throughput and latency percentiles, verifies
/// the ledger afterwards, and runs chaos (SIGKILL and database restarts mid-load).
///
/// Exit status: 0 when everything passed, 1 when verification found a problem, 2 when
/// the tester itself could not do its job (server unreachable, bad flags…).
#[derive(Debug, Parser)]
#[command(name = "tally-loadtest", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create users {prefix}0..{prefix}{N-1} in the database (idempotent) and fund each
    /// to the initial balance through the API (credits with idempotency keys; accounts
    /// already at the balance are skipped).
    Setup(SetupCommand),
    /// Send load to a running Tally, print progress each second and a report, write
    /// result.json, run.json, report.txt and timeline.svg, then verify.
    Run(RunCommand),
    /// Check the ledger: the store's invariants, API balances against the store, and
    /// (with --run) every write of an earlier run.
    Verify(VerifyCommand),
    /// Start Tally on a fresh database, load it with idempotency keys while killing it
    /// (SIGKILL) and restarting it, and restarting PostgreSQL; then verify that every
    /// acknowledged write survived and nothing applied twice.
    Chaos(ChaosCommand),
}

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Base URL of the Tally to load (without /api/v1).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// The admin to log in as; the server's TALLY_ADMIN_USERNAME.
    #[arg(long, default_value = "admin")]
    pub admin_username: String,
    /// The admin's password; the server's TALLY_ADMIN_PASSWORD.
    #[arg(long, default_value = "admin-password", env = "TALLY_LOADTEST_ADMIN_PASSWORD")]
    pub admin_password: String,
    /// The server's JWT_SECRET. With it, the tester signs each load-test user a token of
    /// their own and sends every transfer as the owner of the account it debits (and every
    /// balance or history read as the account's owner), as ordinary users do. Without it,
    /// everything goes as the admin, whose transfers between other users' accounts Tally
    /// audits as administrative money actions. Credits, debits, holds and batches always
    /// go as the admin.
    #[arg(long, env = "TALLY_LOADTEST_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// The server's JWT_ISSUER (with --jwt-secret).
    #[arg(long, default_value = crate::owners::DEFAULT_ISSUER)]
    pub jwt_issuer: String,
    /// The server's JWT_AUDIENCE (with --jwt-secret).
    #[arg(long, default_value = crate::owners::DEFAULT_AUDIENCE)]
    pub jwt_audience: String,
    /// Longest a single HTTP request may take before it counts as a transport timeout.
    #[arg(long, default_value = "30s", value_parser = duration_flag)]
    pub request_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// The database Tally uses (postgres://… or sqlite:…): users are created and the
    /// ledger verified there directly.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,
}

#[derive(Debug, Args)]
pub struct AccountArgs {
    /// How many load-test users (accounts) there are.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Usernames are {prefix}{index}; different prefixes give independent account sets.
    #[arg(long, default_value = "lt")]
    pub prefix: String,
}

#[derive(Debug, Args)]
pub struct FundingArgs {
    /// Balance each account is topped up to, e.g. 1000.00.
    #[arg(long, default_value = "1000.00", value_parser = amount_flag)]
    pub initial_balance: i64,
    /// Funding requests in flight during set-up.
    #[arg(long, default_value_t = 32)]
    pub setup_concurrency: usize,
}

/// How accounts are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ShapeArg {
    /// Every account equally likely on both sides.
    Uniform,
    /// Zipf over account ranks (see --zipf-exponent).
    Zipf,
    /// Every transfer leaves the first account (it drains; refusals are counted).
    HotSource,
    /// Every transfer goes to the first account.
    HotTarget,
    /// Every transfer is between the first two accounts, either way.
    HotPair,
    /// Both sides uniform within the first --hot-accounts accounts.
    HotSet,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Which accounts operations touch.
    #[arg(long, value_enum, default_value_t = ShapeArg::Uniform)]
    pub shape: ShapeArg,
    /// Skew of the zipf shape: rank k is chosen with weight 1/k^exponent.
    #[arg(long, default_value_t = 1.0)]
    pub zipf_exponent: f64,
    /// Size of the hot set (shape hot-set).
    #[arg(long, default_value_t = 10)]
    pub hot_accounts: usize,
    /// Closed loop: this many workers, each sending its next request when answered.
    /// Ignored with --rate.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Open loop: send this many requests per second whatever the server does;
    /// latency counts from each request's scheduled time (coordinated omission
    /// corrected).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: most requests unanswered at once; when reached, sending waits (and
    /// the wait counts as latency).
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    /// How long to send load, e.g. 30s, 2m (default 30s unless --requests is given).
    #[arg(long, value_parser = duration_flag)]
    pub duration: Option<Duration>,
    /// Stop after this many requests (with --duration: whichever comes first).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Operation mix in percent, adding up to 100: transfer, credit, debit, history
    /// (GET /transactions/user/{id}), balance (GET /balances/current/{id}), hold (a
    /// pending transfer, then its post or void: one operation of two requests) and batch
    /// (one atomic batch of --batch-legs transfers).
    #[arg(long, default_value = "transfer=100")]
    pub mix: Mix,
    /// Transfers in each batch operation (1 to 100), each between accounts the shape
    /// chooses.
    #[arg(long, default_value_t = 4)]
    pub batch_legs: usize,
    /// How holds are settled, in percent adding up to 100: post (all of it), partial
    /// (a post of a random amount below the held one; the rest is released) and void.
    #[arg(long, default_value = "post=60,partial=20,void=20")]
    pub hold_mix: HoldMix,
    /// Smallest amount moved, e.g. 0.01.
    #[arg(long, default_value = "0.01", value_parser = amount_flag)]
    pub amount_min: i64,
    /// Largest amount moved, e.g. 10.00.
    #[arg(long, default_value = "10.00", value_parser = amount_flag)]
    pub amount_max: i64,
    /// Send an Idempotency-Key with every write ({run}-{n}; a hold's post or void
    /// {run}-{n}-settle), and retry writes whose outcome is unknown (503, timeouts, lost
    /// connections) with the same key; reads are retried too.
    #[arg(long)]
    pub idempotency_keys: bool,
    /// With keys: attempts per request, the first included (each request of a hold has
    /// its own).
    #[arg(long, default_value_t = 100)]
    pub retry_attempts: u32,
    /// With keys: the longest one request keeps retrying.
    #[arg(long, default_value = "60s", value_parser = duration_flag)]
    pub retry_time_max: Duration,
    /// Seed of the operation generator (the same seed gives the same operations).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Directory for result.json, run.json, report.txt and timeline.svg (default
    /// target/loadtest-results/<command>-<time>).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Skip the verification after the run.
    #[arg(long)]
    pub no_verify: bool,
    /// Longest to wait for the server to make everything durable before verifying.
    #[arg(long, default_value = "60s", value_parser = duration_flag)]
    pub idle_timeout: Duration,
    /// No progress line each second.
    #[arg(long)]
    pub quiet: bool,
}

/// The default duration when neither --duration nor --requests is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(30);

impl LoadArgs {
    fn shape(&self) -> Shape {
        match self.shape {
            ShapeArg::Uniform => Shape::Uniform,
            ShapeArg::Zipf => Shape::Zipf {
                exponent: self.zipf_exponent,
            },
            ShapeArg::HotSource => Shape::HotSource,
            ShapeArg::HotTarget => Shape::HotTarget,
            ShapeArg::HotPair => Shape::HotPair,
            ShapeArg::HotSet => Shape::HotSet {
                accounts: self.hot_accounts,
            },
        }
    }

    pub fn plan(&self, accounts: Vec<i64>) -> anyhow::Result<RunPlan> {
        let workload = WorkloadConfig {
            accounts: Arc::new(accounts),
            shape: self.shape(),
            mix: self.mix.clone(),
            amount_min_minor: self.amount_min,
            amount_max_minor: self.amount_max,
            batch_legs: self.batch_legs,
            hold_mix: self.hold_mix.clone(),
        };
        if !workload.accounts.is_empty() {
            workload.validate().map_err(anyhow::Error::msg)?;
        }
        let pacing = match self.rate {
            Some(rate) if rate > 0.0 => Pacing::Open {
                rate_per_second: rate,
                in_flight_max: self.max_in_flight.max(1),
            },
            Some(rate) => anyhow::bail!("--rate must be positive, got {rate}"),
            None => Pacing::Closed {
                concurrency: self.concurrency.max(1),
            },
        };
        let duration = match (self.duration, self.requests) {
            (None, None) => Some(DEFAULT_DURATION),
            (duration, _) => duration,
        };
        Ok(RunPlan {
            pacing,
            stop: Stop {
                duration,
                requests: self.requests,
            },
            workload,
            seed: self.seed,
            progress: !self.quiet,
        })
    }

    fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            attempts_max: self.retry_attempts.max(1),
            retry_time_max: self.retry_time_max,
        }
    }

    fn output(&self, what: &str) -> PathBuf {
        self.output.clone().unwrap_or_else(|| {
            PathBuf::from("target/loadtest-results")
                .join(format!("{what}-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S")))
        })
    }
}

#[derive(Debug, Args)]
pub struct SetupCommand {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub accounts: AccountArgs,
    #[command(flatten)]
    pub funding: FundingArgs,
}

#[derive(Debug, Args)]
pub struct RunCommand {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub accounts: AccountArgs,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, Args)]
pub struct VerifyCommand {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// run.json of an earlier run: also check each of its writes, and every balance
    /// against the balances before it plus its movements (which only holds while
    /// nothing else has moved money since that run).
    #[arg(long)]
    pub run: Option<PathBuf>,
    /// Check the store only: no idle wait and no API balances (the server may be down).
    #[arg(long)]
    pub no_api: bool,
    /// Longest to wait for the server to make everything durable.
    #[arg(long, default_value = "60s", value_parser = duration_flag)]
    pub idle_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ChaosCommand {
    /// The Tally binary to start (build it first: cargo build --release -p tally).
    #[arg(long, default_value = "target/release/tally")]
    pub tally_binary: PathBuf,
    /// PostgreSQL server to create the run's fresh database on.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_POSTGRES_URL)]
    pub database_url: String,
    /// The admin Tally is started with and the load logs in as.
    #[arg(long, default_value = "admin")]
    pub admin_username: String,
    /// The first admin's password (8+ characters), given to Tally and used to log in.
    #[arg(long, default_value = "admin-password")]
    pub admin_password: String,
    /// SIGKILL-and-restart cycles, spread evenly over --duration.
    #[arg(long, default_value_t = 5)]
    pub kills: u32,
    /// Do not restart PostgreSQL during the run.
    #[arg(long)]
    pub skip_postgres_restart: bool,
    /// How PostgreSQL is restarted (run with sh -c).
    #[arg(long, default_value = DEFAULT_POSTGRES_RESTART)]
    pub postgres_restart_command: String,
    /// Longest to wait for Tally to be ready after a (re)start.
    #[arg(long, default_value = "60s", value_parser = duration_flag)]
    pub ready_timeout: Duration,
    /// Longest a single HTTP request may take.
    #[arg(long, default_value = "15s", value_parser = duration_flag)]
    pub request_timeout: Duration,
    /// Keep the run's database even when every check passed.
    #[arg(long)]
    pub keep_database: bool,
    #[command(flatten)]
    pub accounts: AccountArgs,
    #[command(flatten)]
    pub funding: FundingArgs,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// Parse `30s`, `2m`, `1500ms` or a bare number of seconds.
pub fn duration_flag(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, scale) = if let Some(number) = text.strip_suffix("ms") {
        (number, 0.001)
    } else if let Some(number) = text.strip_suffix('s') {
        (number, 1.0)
    } else if let Some(number) = text.strip_suffix('m') {
        (number, 60.0)
    } else if let Some(number) = text.strip_suffix('h') {
        (number, 3600.0)
    } else {
        (text, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 2m or 1500ms"))?;
    if !(value.is_finite() && value >= 0.0) {
        return Err(format!("{text:?} is not a duration like 30s, 2m or 1500ms"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// Database connections of the tester's own store handle.
const STORE_CONNECTIONS: u32 = verify::VERIFY_CONCURRENCY as u32;

async fn login(server: &ServerArgs) -> anyhow::Result<Arc<ApiClient>> {
    let client = ApiClient::login(
        &server.target,
        &server.admin_username,
        &server.admin_password,
        server.request_timeout,
    )
    .await?;
    Ok(Arc::new(match &server.jwt_secret {
        Some(secret) => client.with_owners(OwnerTokens::new(
            secret,
            &server.jwt_issuer,
            &server.jwt_audience,
            crate::owners::TOKEN_LIFETIME,
        )),
        None => client,
    }))
}

/// Run a command; the exit status is 0 (passed), 1 (verification failed).
pub async fn execute(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Setup(command) => {
            let client = login(&command.server).await?;
            let store = Store::connect(&command.database.database_url, STORE_CONNECTIONS).await?;
            let plan = SetupPlan {
                prefix: command.accounts.prefix,
                users: command.accounts.users,
                initial_balance_minor: command.funding.initial_balance,
                concurrency: command.funding.setup_concurrency,
            };
            setup::setup(&store, client, &plan).await?;
            Ok(0)
        }
        Command::Run(command) => {
            let client = login(&command.server).await?;
            let store = Store::connect(&command.database.database_url, STORE_CONNECTIONS).await?;
            let users = database::users(&store, &command.accounts.prefix, command.accounts.users).await?;
            if let Some(owners) = client.owners() {
                owners.enroll(users.iter().copied());
            }
            let plan = command.load.plan(users.into_iter().map(|(id, _)| id).collect())?;
            let verify = !command.load.no_verify;
            let options = SessionOptions {
                idempotency_keys: command.load.idempotency_keys,
                retry: command.load.retry(),
                snapshot: verify,
                idle_timeout: command.load.idle_timeout,
            };
            let mut session = LoadSession::prepare(command_line(), client.clone(), store, plan, options).await?;
            let elapsed = session.execute().await;
            let notes = session.server_notes().await;
            let output = command.load.output("run");
            let report = session
                .finish(
                    elapsed,
                    notes,
                    &output,
                    verify,
                    command.load.idle_timeout,
                    Some(&client),
                )
                .await?;
            Ok(exit_status(&report.verification))
        }
        Command::Verify(command) => {
            let store = Store::connect(&command.database.database_url, STORE_CONNECTIONS).await?;
            let client = if command.no_api {
                None
            } else {
                Some(login(&command.server).await?)
            };
            let run: Option<RunRecord> = match &command.run {
                Some(path) => Some(
                    serde_json::from_reader(std::io::BufReader::new(
                        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
                    ))
                    .with_context(|| format!("reading {}", path.display()))?,
                ),
                None => None,
            };
            let verification = verify::verify(VerifyInputs {
                store: &store,
                api: client.as_deref(),
                run: run.as_ref(),
                idle_timeout: command.idle_timeout,
            })
            .await?;
            print!("{}", verification.render());
            Ok(exit_status(&Some(verification)))
        }
        Command::Chaos(command) => {
            let plan = ChaosPlan {
                command: command_line(),
                binary: command.tally_binary,
                server_url: command.database_url,
                admin_username: command.admin_username,
                admin_password: command.admin_password,
                kills: command.kills,
                postgres_restart: (!command.skip_postgres_restart).then_some(command.postgres_restart_command),
                ready_timeout: command.ready_timeout,
                setup: SetupPlan {
                    prefix: command.accounts.prefix.clone(),
                    users: command.accounts.users,
                    initial_balance_minor: command.funding.initial_balance,
                    concurrency: command.funding.setup_concurrency,
                },
                plan: command.load.plan(Vec::new())?,
                retry: command.load.retry(),
                request_timeout: command.request_timeout,
                idle_timeout: command.load.idle_timeout,
                keep_database: command.keep_database,
                output: command.load.output("chaos"),
            };
            let report = chaos::chaos(plan).await?;
            Ok(exit_status(&report.verification))
        }
    }
}

fn exit_status(verification: &Option<verify::Verification>) -> i32 {
    match verification {
        Some(verification) if !verification.passed() => 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_read_like_a_person_writes_them() {
        assert_eq!(duration_flag("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration_flag("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration_flag("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration_flag("45"), Ok(Duration::from_secs(45)));
        assert_eq!(duration_flag("0.5s"), Ok(Duration::from_millis(500)));
        for bad in ["", "soon", "-3s", "5x"] {
            assert!(duration_flag(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_run_is_closed_loop_for_30_seconds_unless_told_otherwise() {
        let cli = Cli::try_parse_from(["tally-loadtest", "run", "--database-url", "sqlite:x.db"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("a run")
        };
        let plan = run.load.plan(vec![1, 2, 3]).unwrap();
        assert_eq!(plan.pacing, Pacing::Closed { concurrency: 64 });
        assert_eq!(plan.stop.duration, Some(Duration::from_secs(30)));
        assert_eq!(plan.stop.requests, None);
        assert_eq!(plan.workload.shape, Shape::Uniform);
        assert_eq!(plan.workload.mix, Mix::default());
        assert!(!run.load.idempotency_keys);
    }

    #[test]
    fn rate_shape_mix_and_amounts_are_read_from_flags() {
        let cli = Cli::try_parse_from([
            "tally-loadtest",
            "run",
            "--database-url",
            "sqlite:x.db",
            "--rate",
            "2000",
            "--requests",
            "500",
            "--shape",
            "hot-set",
            "--hot-accounts",
            "2",
            "--mix",
            "transfer=70,balance=30",
            "--amount-min",
            "1",
            "--amount-max",
            "2.50",
            "--idempotency-keys",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("a run")
        };
        let plan = run.load.plan(vec![1, 2, 3]).unwrap();
        assert_eq!(
            plan.pacing,
            Pacing::Open {
                rate_per_second: 2000.0,
                in_flight_max: 4096
            }
        );
        assert_eq!(plan.stop.duration, None, "a request count alone stops the run");
        assert_eq!(plan.stop.requests, Some(500));
        assert_eq!(plan.workload.shape, Shape::HotSet { accounts: 2 });
        assert_eq!(plan.workload.mix.balance_percent, 30);
        assert_eq!(
            (plan.workload.amount_min_minor, plan.workload.amount_max_minor),
            (100, 250)
        );
        assert!(run.load.idempotency_keys);
    }

    #[test]
    fn holds_and_batches_are_read_from_flags() {
        let parse = |extra: &[&str]| {
            let mut arguments = vec!["tally-loadtest", "run", "--database-url", "sqlite:x.db"];
            arguments.extend_from_slice(extra);
            let Command::Run(run) = Cli::try_parse_from(arguments).unwrap().command else {
                panic!("a run")
            };
            run.load.plan(vec![1, 2, 3])
        };
        let plan = parse(&[]).unwrap();
        assert_eq!(plan.workload.batch_legs, 4);
        assert_eq!(plan.workload.hold_mix, HoldMix::default());
        let plan = parse(&[
            "--mix",
            "hold=50,batch=50",
            "--batch-legs",
            "10",
            "--hold-mix",
            "post=10,partial=10,void=80",
        ])
        .unwrap();
        assert_eq!(
            (plan.workload.mix.hold_percent, plan.workload.mix.batch_percent),
            (50, 50)
        );
        assert_eq!(plan.workload.batch_legs, 10);
        assert_eq!(plan.workload.hold_mix.void_percent, 80);
        let error = parse(&["--batch-legs", "101"]).unwrap_err().to_string();
        assert!(error.contains("1 to 100 legs"), "{error}");
        let refused = Cli::try_parse_from([
            "tally-loadtest",
            "run",
            "--database-url",
            "sqlite:x.db",
            "--hold-mix",
            "post=100,void=10",
        ]);
        assert!(refused.unwrap_err().to_string().contains("add up to 110"));
    }

    #[test]
    fn chaos_defaults_to_five_kills_and_a_database_restart() {
        let cli = Cli::try_parse_from(["tally-loadtest", "chaos"]).unwrap();
        let Command::Chaos(chaos) = cli.command else {
            panic!("chaos")
        };
        assert_eq!(chaos.kills, 5);
        assert!(!chaos.skip_postgres_restart);
        assert_eq!(chaos.tally_binary, PathBuf::from("target/release/tally"));
    }

    #[test]
    fn impossible_workloads_are_refused_before_any_load() {
        let cli = Cli::try_parse_from([
            "tally-loadtest",
            "run",
            "--database-url",
            "sqlite:x.db",
            "--shape",
            "hot-set",
            "--hot-accounts",
            "50",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("a run")
        };
        let error = run.load.plan(vec![1, 2, 3]).unwrap_err().to_string();
        assert!(error.contains("hot set"), "{error}");
    }
}
