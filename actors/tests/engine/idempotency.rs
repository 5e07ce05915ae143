//! Idempotency keys: retries apply once, concurrently and across a restart.

use tally_actors::{Engine, EngineError, MoveRequest, TransactionStatus};
use tokio::task::JoinSet;

use crate::on_both_stores;
use crate::support::{Backend, TestDb, account, amount, assert_store_invariants, config, open_accounts};

fn keyed_transfer(value: i64, key: &str) -> MoveRequest {
    MoveRequest::transfer(account(1), account(2), amount(value))
        .initiated_by(1)
        .idempotency_key(key)
}

async fn a_retry_with_the_same_key_applies_once_even_across_a_restart(backend: Backend) {
    let db = TestDb::create(backend).await;
    let engine = Engine::open(config(&db.url)).await.unwrap();
    open_accounts(&engine, 2, 100_00).await;

    let first = engine.execute(keyed_transfer(10_00, "pay-1")).await.unwrap();
    assert_eq!(first.status, TransactionStatus::Completed);
    let again = engine.execute(keyed_transfer(10_00, "pay-1")).await.unwrap();
    assert_eq!(again, first, "a retry returns the first outcome");
    engine.shutdown().await;

    let engine = Engine::open(config(&db.url)).await.unwrap();
    let after_restart = engine.execute(keyed_transfer(10_00, "pay-1")).await.unwrap();
    assert_eq!(after_restart, first);
    assert_eq!(engine.balance(account(1)).await.unwrap().balance, 90_00, "applied once");

    let conflict = engine.execute(keyed_transfer(11_00, "pay-1")).await;
    assert!(
        matches!(conflict, Err(EngineError::IdempotencyConflict)),
        "{conflict:?}"
    );
    // Keys are scoped per user: another user's identical key is a different request.
    let other_user = engine
        .execute(
            MoveRequest::transfer(account(2), account(1), amount(1_00))
                .initiated_by(2)
                .idempotency_key("pay-1"),
        )
        .await
        .unwrap();
    assert_eq!(other_user.status, TransactionStatus::Completed);
    // A refused movement is an outcome too, and replays as such.
    let refused = engine.execute(keyed_transfer(1_000_00, "pay-2")).await.unwrap();
    assert_eq!(refused.status, TransactionStatus::Failed);
    assert_eq!(
        engine.execute(keyed_transfer(1_000_00, "pay-2")).await.unwrap(),
        refused
    );
    assert_store_invariants(engine.store()).await;
    engine.shutdown().await;
}

async fn concurrent_retries_with_one_key_apply_once(backend: Backend) {
    let db = TestDb::create(backend).await;
    let engine = Engine::open(config(&db.url)).await.unwrap();
    open_accounts(&engine, 2, 100_00).await;
    let mut retries = JoinSet::new();
    for _ in 0..32 {
        let engine = engine.clone();
        retries.spawn(async move { engine.execute(keyed_transfer(3_00, "burst")).await.unwrap() });
    }
    let mut ids = std::collections::HashSet::new();
    while let Some(record) = retries.join_next().await {
        ids.insert(record.unwrap().id);
    }
    assert_eq!(ids.len(), 1, "every retry saw the same transaction");
    assert_eq!(engine.balance(account(1)).await.unwrap().balance, 97_00);
    assert_eq!(engine.store().transaction_count().await.unwrap(), 3);
    engine.shutdown().await;
}

on_both_stores!(
    a_retry_with_the_same_key_applies_once_even_across_a_restart,
    concurrent_retries_with_one_key_apply_once,
);
