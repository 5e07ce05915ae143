//! Chaos: the tester starts Tally itself on a fresh PostgreSQL database (strict
//! durability), loads it with idempotency keys, and meanwhile kills it with SIGKILL and
//! restarts it several times and restarts PostgreSQL once. Transfers go as the owners of
//! the accounts they debit, with tokens signed with the secret the tester started Tally
//! with ([`crate::owners`]); credits, holds and batches as the admin. Clients retry every write
//! whose answer was lost with the same key until they get an answer (bounded in attempts
//! and time). Afterwards the verifier checks that every acknowledged write survived,
//! that nothing applied twice, and the ledger's invariants.
//!
//! Everything is bounded: the load's duration, each operation's retries, the wait for
//! Tally to come back, the PostgreSQL restart command and the final idle wait.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::{Connection, Executor, PgConnection};
use tally_actors::Store;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::client::{ApiClient, RetryPolicy};
use crate::owners::{self, OwnerTokens};
use crate::report::{Recorder, Report};
use crate::runner::RunPlan;
use crate::server::{ServerConfig, TallyProcess};
use crate::session::{LoadSession, SessionOptions};
use crate::setup::{self, SetupPlan};

/// The longest the PostgreSQL restart command may take; a restart of an idle cluster
/// takes a second or two.
const POSTGRES_RESTART_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a graceful stop of Tally may take at the end.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Database connections of the tester's own store handle (set-up and verification).
const STORE_CONNECTIONS: u32 = 16;

/// One chaos run.
#[derive(Clone, Debug)]
pub struct ChaosPlan {
    pub command: String,
    pub binary: PathBuf,
    /// A PostgreSQL server URL; the run creates its own database there.
    pub server_url: String,
    pub admin_username: String,
    pub admin_password: String,
    pub kills: u32,
    /// The shell command that restarts PostgreSQL; `None` skips that step.
    pub postgres_restart: Option<String>,
    pub ready_timeout: Duration,
    pub setup: SetupPlan,
    /// The load; its accounts are filled in once the users exist.
    pub plan: RunPlan,
    pub retry: RetryPolicy,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub keep_database: bool,
    pub output: PathBuf,
}

/// What happens when during the run.
#[derive(Clone, Debug, PartialEq)]
pub enum Disruption {
    KillTally,
    RestartPostgres,
}

/// When each disruption happens: kills spread evenly over the duration, the PostgreSQL
/// restart half-way between the first two kills (or in the middle when there are fewer),
/// so no two disruptions overlap.
pub fn schedule(duration: Duration, kills: u32, restart_postgres: bool) -> Vec<(Duration, Disruption)> {
    let slot = duration / (kills + 1);
    let mut events: Vec<(Duration, Disruption)> =
        (1..=kills).map(|kill| (slot * kill, Disruption::KillTally)).collect();
    if restart_postgres {
        let at = if kills >= 2 {
            slot * 3 / 2
        } else {
            duration / 2 + slot / 4
        };
        events.push((at, Disruption::RestartPostgres));
    }
    events.sort_by_key(|(at, _)| *at);
    events
}

/// A fresh database on the server at `server_url`; returns its URL and name.
async fn create_database(server_url: &str) -> anyhow::Result<(String, String)> {
    let name = format!(
        "tally_chaos_{}_{}",
        chrono::Utc::now().format("%Y%m%d%H%M%S"),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let mut connection = PgConnection::connect(server_url)
        .await
        .with_context(|| format!("connecting to {server_url}"))?;
    connection
        .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .with_context(|| format!("creating database {name}"))?;
    let mut url = url::Url::parse(server_url).context("the database URL is a URL")?;
    url.set_path(&name);
    Ok((url.to_string(), name))
}

async fn drop_database(server_url: &str, name: &str) -> anyhow::Result<()> {
    let mut connection = PgConnection::connect(server_url).await?;
    connection
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .await?;
    Ok(())
}

async fn restart_postgres(command: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let run = tokio::process::Command::new("sh")
        .args(["-c", command])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(POSTGRES_RESTART_TIMEOUT, run)
        .await
        .with_context(|| format!("`{command}` took over {} s", POSTGRES_RESTART_TIMEOUT.as_secs()))??;
    if !output.status.success() {
        bail!(
            "`{command}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(started.elapsed())
}

/// Carry out the schedule against the running server, recording each disruption.
async fn disrupt(
    events: Vec<(Duration, Disruption)>,
    server: &Mutex<TallyProcess>,
    plan: &ChaosPlan,
    recorder: &Recorder,
) -> anyhow::Result<u32> {
    let started = Instant::now();
    let mut kills = 0;
    for (at, disruption) in events {
        tokio::time::sleep_until(started + at).await;
        match disruption {
            Disruption::KillTally => {
                let mut server = server.lock().await;
                let pid = server.pid().unwrap_or(0);
                server.kill().await?;
                let killed_at = started.elapsed();
                let back_in = server
                    .start(plan.ready_timeout)
                    .await
                    .context("restarting Tally after SIGKILL")?;
                kills += 1;
                let what = format!(
                    "SIGKILL Tally (pid {pid}); restarted and ready in {:.2} s",
                    back_in.as_secs_f64()
                );
                println!("chaos [{:>6.2} s] {what}", killed_at.as_secs_f64());
                recorder.event(killed_at, what);
            }
            Disruption::RestartPostgres => {
                let Some(command) = &plan.postgres_restart else {
                    continue;
                };
                let at = started.elapsed();
                let took = restart_postgres(command).await?;
                let what = format!("PostgreSQL restarted ({:.2} s)", took.as_secs_f64());
                println!("chaos [{:>6.2} s] {what}", at.as_secs_f64());
                recorder.event(at, what);
            }
        }
    }
    Ok(kills)
}

/// Run the chaos plan; the report's verification says whether the ledger survived.
pub async fn chaos(mut plan: ChaosPlan) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&plan.output).with_context(|| format!("creating {}", plan.output.display()))?;
    let (database_url, database_name) = create_database(&plan.server_url).await?;
    println!("chaos: fresh database {database_name}");
    let port = crate::server::free_port()?;
    let server = TallyProcess::new(ServerConfig {
        binary: plan.binary.clone(),
        database_url: database_url.clone(),
        port,
        admin_username: plan.admin_username.clone(),
        admin_password: plan.admin_password.clone(),
        durability: "strict".into(),
        log_directory: plan.output.clone(),
        extra_environment: Vec::new(),
    });
    let server = Mutex::new(server);
    let ready = server.lock().await.start(plan.ready_timeout).await?;
    println!(
        "chaos: Tally ({}) ready on {} in {:.2} s",
        plan.binary.display(),
        server.lock().await.base_url(),
        ready.as_secs_f64()
    );
    let (base_url, jwt_secret) = {
        let server = server.lock().await;
        (server.base_url(), server.jwt_secret().to_string())
    };
    // Transfers and reads go as the users themselves, as in compare.sh (see
    // `crate::owners`): their keyed retries across kills are what the verifier checks.
    let client = Arc::new(
        ApiClient::login(
            &base_url,
            &plan.admin_username,
            &plan.admin_password,
            plan.request_timeout,
        )
        .await?
        .with_owners(OwnerTokens::new(
            &jwt_secret,
            owners::DEFAULT_ISSUER,
            owners::DEFAULT_AUDIENCE,
            owners::TOKEN_LIFETIME,
        )),
    );
    let store = Store::connect(&database_url, STORE_CONNECTIONS).await?;
    let summary = setup::setup(&store, client.clone(), &plan.setup).await?;
    plan.plan.workload.accounts = Arc::new(summary.ids);
    plan.plan.workload.validate().map_err(anyhow::Error::msg)?;
    let options = SessionOptions {
        idempotency_keys: true,
        retry: plan.retry,
        snapshot: true,
        idle_timeout: plan.idle_timeout,
    };
    let mut session = LoadSession::prepare(
        plan.command.clone(),
        client.clone(),
        store.clone(),
        plan.plan.clone(),
        options,
    )
    .await?;
    let duration = plan.plan.stop.duration.context("a chaos run needs a duration")?;
    let events = schedule(duration, plan.kills, plan.postgres_restart.is_some());
    let recorder = session.recorder.clone();
    let (elapsed, disrupted) = tokio::join!(session.execute(), disrupt(events, &server, &plan, &recorder));
    let server_notes = session.server_notes().await;
    let kills = match disrupted {
        Ok(kills) => kills,
        Err(error) => {
            let _ = server.lock().await.kill().await;
            return Err(error.context("the chaos schedule failed"));
        }
    };
    println!("chaos: {kills} SIGKILL restarts done; verifying");
    let report = session
        .finish(
            elapsed,
            server_notes,
            &plan.output,
            true,
            plan.idle_timeout,
            Some(&client),
        )
        .await;
    let stopped = server.lock().await.terminate(SHUTDOWN_TIMEOUT).await;
    let report = report?;
    match stopped {
        Ok(true) => println!("chaos: Tally stopped gracefully"),
        Ok(false) => println!(
            "chaos: Tally did not stop gracefully within {} s",
            SHUTDOWN_TIMEOUT.as_secs()
        ),
        Err(error) => println!("chaos: stopping Tally: {error:#}"),
    }
    let passed = report
        .verification
        .as_ref()
        .is_some_and(|verification| verification.passed());
    if let Some(pool) = store.postgres_pool() {
        pool.close().await;
    }
    if passed && !plan.keep_database {
        drop_database(&plan.server_url, &database_name).await?;
        println!("chaos: dropped {database_name}");
    } else {
        println!("chaos: kept database {database_name} ({database_url}) for inspection");
    }
    if kills < plan.kills {
        bail!("only {kills} of {} kills happened", plan.kills);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kills_spread_evenly_and_the_database_restart_falls_between_two_of_them() {
        let events = schedule(Duration::from_secs(30), 5, true);
        let at: Vec<f64> = events.iter().map(|(at, _)| at.as_secs_f64()).collect();
        assert_eq!(at, vec![5.0, 7.5, 10.0, 15.0, 20.0, 25.0]);
        assert_eq!(events[1].1, Disruption::RestartPostgres);
        assert_eq!(
            events.iter().filter(|(_, what)| *what == Disruption::KillTally).count(),
            5
        );
    }

    #[test]
    fn without_a_database_restart_only_kills_are_scheduled() {
        let events = schedule(Duration::from_secs(10), 1, false);
        assert_eq!(events, vec![(Duration::from_secs(5), Disruption::KillTally)]);
        let events = schedule(Duration::from_secs(10), 1, true);
        assert_eq!(events.len(), 2);
        assert!(events[1].0 > events[0].0, "the restart comes after the only kill");
    }
}
