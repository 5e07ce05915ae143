//! Durable transfers per second of the engine alone, in process, on PostgreSQL.
//!
//! `cargo bench -p tally-actors --bench engine` creates a throwaway database on
//! `DATABASE_URL` (default: the local server), opens 10,000 funded accounts, and runs 64
//! concurrent callers doing strict-durability transfers, first uniformly over all
//! accounts, then over a hot set of 10. Each caller waits for its transfer to be
//! committed before it sends the next, so every counted transfer is durable.
//!
//! Options (environment): `BENCH_SECONDS` (measured seconds per shape, default 10),
//! `BENCH_CALLERS` (64), `BENCH_ACCOUNTS` (10000), `BENCH_DURABILITY` (strict|relaxed).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sqlx::{Connection, Executor, PgConnection};
use tally_actors::{AccountId, Amount, Durability, Engine, EngineConfig, MoveRequest, Placement, TransactionStatus};

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const WARMUP: Duration = Duration::from_secs(2);
/// Each account starts with 1,000,000.00 so uniform transfers never run dry.
const FUNDING_MINOR: i64 = 1_000_000_00;

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, Debug)]
enum Shape {
    Uniform,
    Hot10,
}

struct Outcome {
    transfers: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; anything else (like `cargo test --benches`'s
    // listing) gets a note instead of a run.
    if !std::env::args().any(|argument| argument == "--bench") {
        println!("run with `cargo bench -p tally-actors --bench engine`");
        return Ok(());
    }
    let seconds: u64 = setting("BENCH_SECONDS", 10);
    let callers: usize = setting("BENCH_CALLERS", 64);
    let accounts: i64 = setting("BENCH_ACCOUNTS", 10_000);
    let durability =
        Durability::parse(&setting("BENCH_DURABILITY", "strict".to_string())).unwrap_or(Durability::Strict);
    let admin = std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string());
    let name = format!("tally_bench_{}", std::process::id());

    System::new().block_on(async move {
        let mut admin_connection = PgConnection::connect(&admin).await.map_err(|error| {
            anyhow::anyhow!("PostgreSQL is not reachable at {admin} ({error}); start it or set DATABASE_URL")
        })?;
        admin_connection
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await?;
        let mut url = url::Url::parse(&admin)?;
        url.set_path(&name);
        let result = run(url.as_str(), seconds, callers, accounts, durability).await;
        admin_connection
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .await?;
        result
    })
}

async fn run(url: &str, seconds: u64, callers: usize, accounts: i64, durability: Durability) -> anyhow::Result<()> {
    let config = EngineConfig {
        database_url: url.to_string(),
        durability,
        placement: Placement::Arbiters(setting("BENCH_ARBITERS", 2)),
        flush_delay_max: Duration::from_micros(setting("BENCH_FLUSH_DELAY_US", 0)),
        ..EngineConfig::default()
    };
    let engine = Engine::open(config).await?;
    let ids: Vec<AccountId> = (1..=accounts).map(|id| AccountId::new(id).unwrap()).collect();
    engine.store().create_accounts(&ids).await?;
    let funding = Amount::from_minor(FUNDING_MINOR)?;
    let mut fund = tokio::task::JoinSet::new();
    for chunk in ids.chunks(ids.len().div_ceil(64)) {
        let (engine, chunk) = (engine.clone(), chunk.to_vec());
        fund.spawn(async move {
            for id in chunk {
                engine.execute(MoveRequest::credit(id, funding)).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = fund.join_next().await {
        done??;
    }
    // Callers run on arbiters of their own, as HTTP workers would.
    let clients: Vec<Arbiter> = (0..setting("BENCH_CLIENT_ARBITERS", 2))
        .map(|_| Arbiter::new())
        .collect();
    println!(
        "engine benchmark: PostgreSQL, {} durability, {callers} callers, {accounts} accounts, {seconds} s per shape",
        durability.as_str()
    );
    for shape in [Shape::Uniform, Shape::Hot10] {
        let flushes = &engine.metrics().persister_flush_duration;
        let (count_before, sum_before) = (flushes.get_sample_count(), flushes.get_sample_sum());
        let steps = &engine.metrics().transfer_step_duration;
        let step_names = ["debit", "credit", "durable"];
        let steps_before: Vec<(u64, f64)> = step_names
            .iter()
            .map(|step| {
                let histogram = steps.with_label_values(&[*step]);
                (histogram.get_sample_count(), histogram.get_sample_sum())
            })
            .collect();
        let outcome = drive(
            &engine,
            &clients,
            shape,
            callers,
            accounts,
            Duration::from_secs(seconds),
        )
        .await;
        report(shape, &outcome);
        let batches = flushes.get_sample_count() - count_before;
        let flush_seconds = flushes.get_sample_sum() - sum_before;
        println!(
            "         {batches} batches, {:.1} writes per batch, {:.2} ms per commit",
            outcome.transfers as f64 / batches.max(1) as f64,
            flush_seconds * 1e3 / batches.max(1) as f64
        );
        let mean_steps: Vec<String> = step_names
            .iter()
            .zip(&steps_before)
            .map(|(step, (count, sum))| {
                let histogram = steps.with_label_values(&[*step]);
                let mean = (histogram.get_sample_sum() - sum) / (histogram.get_sample_count() - count).max(1) as f64;
                format!("{step} {:.3} ms", mean * 1e3)
            })
            .collect();
        println!("         mean steps: {}", mean_steps.join(", "));
    }
    let status = engine.persister_status();
    println!(
        "persister: {} batches, last batch {} writes",
        status.batches_written, status.last_batch_size
    );
    engine.shutdown().await;
    let violations = tally_actors::Store::connect(url, 1).await?.verify(10).await?;
    if violations.is_empty() {
        println!("verify: every invariant holds");
    } else {
        for violation in &violations {
            println!("verify: {violation}");
        }
        anyhow::bail!("invariants broken");
    }
    for client in clients {
        client.stop();
    }
    Ok(())
}

async fn drive(
    engine: &Engine,
    clients: &[Arbiter],
    shape: Shape,
    callers: usize,
    accounts: i64,
    measured: Duration,
) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut results = Vec::new();
    for caller in 0..callers {
        let (engine, stop, measuring) = (engine.clone(), stop.clone(), measuring.clone());
        let (sender, receiver) = tokio::sync::oneshot::channel();
        clients[caller % clients.len()].spawn(async move {
            let mut rng = SmallRng::seed_from_u64(caller as u64);
            let mut latencies = Vec::new();
            let pool = match shape {
                Shape::Uniform => accounts,
                Shape::Hot10 => 10,
            };
            while !stop.load(Ordering::Relaxed) {
                let from = rng.random_range(1..=pool);
                let mut to = rng.random_range(1..=pool - 1);
                if to >= from {
                    to += 1;
                }
                let request = MoveRequest::transfer(
                    AccountId::new(from).unwrap(),
                    AccountId::new(to).unwrap(),
                    Amount::from_minor(rng.random_range(1..=100)).unwrap(),
                );
                let started = Instant::now();
                let record = engine.execute(request).await.expect("no engine error in the benchmark");
                assert_eq!(record.status, TransactionStatus::Completed);
                if measuring.load(Ordering::Relaxed) {
                    latencies.push(started.elapsed());
                }
            }
            let _ = sender.send(latencies);
        });
        results.push(receiver);
    }
    tokio::time::sleep(WARMUP).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(measured).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for result in results {
        latencies.extend(result.await.unwrap_or_default());
    }
    latencies.sort_unstable();
    Outcome {
        transfers: latencies.len(),
        elapsed,
        latencies,
    }
}

fn report(shape: Shape, outcome: &Outcome) {
    let percentile = |p: f64| -> f64 {
        if outcome.latencies.is_empty() {
            return 0.0;
        }
        let index = ((outcome.latencies.len() as f64 * p) as usize).min(outcome.latencies.len() - 1);
        outcome.latencies[index].as_secs_f64() * 1e3
    };
    println!(
        "{:<8} {:>9.0} durable transfers/s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({} transfers in {:.1} s)",
        format!("{shape:?}").to_lowercase(),
        outcome.transfers as f64 / outcome.elapsed.as_secs_f64(),
        percentile(0.50),
        percentile(0.99),
        outcome.transfers,
        outcome.elapsed.as_secs_f64(),
    );
}
