//! Database outages: writes are refused cleanly while the database is down, nothing
//! acknowledged is lost, and the engine recovers by itself when it returns.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tally_actors::{Engine, EngineConfig, EngineError, MoveRequest, Store, SystemClock, TransactionStatus};
use tokio::task::JoinSet;

use crate::on_both_stores;
use crate::support::{
    Backend, Proxy, TestDb, account, amount, assert_store_invariants, config, eventually, open_accounts,
};

fn outage_config(url: &str) -> EngineConfig {
    EngineConfig {
        queue_capacity: 64,
        durable_wait_max: Duration::from_millis(500),
        outage_refuse_after: Duration::from_millis(300),
        retry_backoff_min: Duration::from_millis(10),
        retry_backoff_max: Duration::from_millis(100),
        ..config(url)
    }
}

fn transfer(round: i64) -> MoveRequest {
    MoveRequest::transfer(account(1 + round % 2), account(3), amount(1_00))
}

/// Drive the engine through an outage that `down` starts and `up` ends; operators see
/// it as a failure of kind `kind`.
async fn survive_an_outage(engine: &Engine, down: impl Fn(), up: impl Fn(), kind: &str) {
    open_accounts(engine, 3, 100_00).await;
    let before = engine.execute(transfer(0)).await.unwrap();
    assert_eq!(before.status, TransactionStatus::Completed);

    down();
    // Writes under way when the database went: applied in memory and queued, and
    // their callers hear "unavailable, outcome unknown" after the wait limit, never a
    // success that is not durable.
    let mut under_way = JoinSet::new();
    for round in 0..8 {
        let engine = engine.clone();
        under_way.spawn(async move { engine.execute(transfer(round)).await });
    }
    while let Some(outcome) = under_way.join_next().await {
        let outcome = outcome.unwrap();
        assert!(matches!(outcome, Err(EngineError::Unavailable(_))), "{outcome:?}");
    }
    assert!(!engine.is_ready());
    assert_eq!(engine.persister_status().queue_depth, 8);
    // Once the outage has lasted, new writes are refused at once, and nothing moves.
    eventually(Duration::from_secs(10), "new writes to be refused fast", || {
        engine.persister_status().failing_for_ms.unwrap_or(0) >= 300
    })
    .await;
    let status = engine.persister_status();
    assert!(!status.healthy);
    assert!(status.consecutive_failures > 0);
    assert_eq!(status.last_error, Some(kind), "the failure's kind, never its text");
    let started = Instant::now();
    let refused = engine.execute(transfer(1)).await;
    assert!(matches!(refused, Err(EngineError::Unavailable(_))), "{refused:?}");
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "refused without waiting"
    );
    // Reads keep working.
    assert_eq!(engine.balance(account(3)).await.unwrap().balance, 109_00);

    up();
    eventually(Duration::from_secs(20), "the queue to drain after the outage", || {
        let status = engine.persister_status();
        status.healthy && status.queue_depth == 0
    })
    .await;
    assert!(engine.is_ready());
    let status = engine.persister_status();
    assert_eq!(status.last_error, None, "a recovered persister reports no error");
    assert!(
        status.last_batch_lag_ms >= 300.0,
        "the queued writes waited out the outage before they were durable: {status:?}"
    );
    // Everything accepted during the outage was written, in order, and the engine
    // takes writes again.
    let after = engine.execute(transfer(1)).await.unwrap();
    assert_eq!(after.to_balance_after(), Some(110_00));
    let store = engine.store();
    assert_eq!(store.transaction_count().await.unwrap(), 3 + 1 + 8 + 1);
    assert_eq!(store.load_account(account(3)).await.unwrap().unwrap().balance, 110_00);
    assert!(store.transaction(before.id).await.unwrap().is_some());
    assert_store_invariants(store).await;
    assert!(engine.metrics().persister_retries.get() > 0);
    assert_eq!(engine.metrics().persister_failures.get(), 1);
}

async fn an_injected_store_failure_is_survived(backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = Store::connect(&db.url, 2).await.unwrap();
    let engine = Engine::open_on(store.clone(), outage_config(&db.url), Arc::new(SystemClock))
        .await
        .unwrap();
    survive_an_outage(
        &engine,
        || store.faults().fail_writes(true),
        || store.faults().fail_writes(false),
        "batch_write_failed",
    )
    .await;
    engine.shutdown().await;
}

on_both_stores!(an_injected_store_failure_is_survived);

/// A real cut: every connection to PostgreSQL dropped and new ones refused, then
/// restored.
#[actix_rt::test]
async fn a_cut_connection_to_postgres_is_survived() {
    let db = TestDb::create(Backend::Postgres).await;
    let target = {
        let url = url::Url::parse(&db.url).unwrap();
        format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432))
    };
    let proxy = Proxy::start(target).await;
    let url = db.url_through(&proxy);
    let engine = Engine::open(outage_config(&url)).await.unwrap();
    survive_an_outage(&engine, || proxy.cut(), || proxy.restore(), "database_unreachable").await;
    engine.shutdown().await;
}
