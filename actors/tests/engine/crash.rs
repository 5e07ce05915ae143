//! Crash recovery: an engine stopped without flushing (as by kill -9) and reopened on
//! the same store holds every acknowledged write and nothing unacknowledged.

use std::time::Duration;

use tally_actors::{Engine, EngineError, MoveRequest, TransactionStatus};
use tokio::task::JoinSet;

use crate::on_both_stores;
use crate::support::{Backend, TestDb, account, amount, assert_store_invariants, config, eventually, open_accounts};

async fn a_crash_keeps_every_acknowledged_write_and_no_unacknowledged_one(backend: Backend) {
    let db = TestDb::create(backend).await;
    let store = tally_actors::Store::connect(&db.url, 2).await.unwrap();
    let engine = Engine::open_on(
        store.clone(),
        config(&db.url),
        std::sync::Arc::new(tally_actors::SystemClock),
    )
    .await
    .unwrap();
    open_accounts(&engine, 4, 100_00).await;
    let mut acknowledged = Vec::new();
    for round in 0..20 {
        let record = engine
            .execute(MoveRequest::transfer(
                account(1 + round % 2),
                account(3 + round % 2),
                amount(1_00),
            ))
            .await
            .unwrap();
        assert_eq!(record.status, TransactionStatus::Completed);
        acknowledged.push(record);
    }

    // The database stops taking writes: these are applied in memory and never durable.
    store.faults().fail_writes(true);
    let mut unacknowledged = JoinSet::new();
    for round in 0..10 {
        let engine = engine.clone();
        unacknowledged.spawn(async move {
            engine
                .execute(MoveRequest::transfer(account(3), account(1 + round % 2), amount(5_00)))
                .await
        });
    }
    eventually(
        Duration::from_secs(10),
        "the unacknowledged writes to be queued",
        || engine.persister_status().queue_depth == 10,
    )
    .await;
    assert_eq!(
        engine.balance(account(3)).await.unwrap().balance,
        60_00,
        "applied in memory"
    );

    engine.crash().await;
    while let Some(outcome) = unacknowledged.join_next().await {
        assert!(
            matches!(outcome.unwrap(), Err(EngineError::Unavailable(_))),
            "a write the crash interrupted is never acknowledged"
        );
    }
    store.faults().fail_writes(false);

    let engine = Engine::open(config(&db.url)).await.unwrap();
    let store = engine.store();
    assert_store_invariants(store).await;
    assert_eq!(
        store.transaction_count().await.unwrap(),
        4 + 20,
        "funding + acknowledged, nothing else"
    );
    for record in &acknowledged {
        assert_eq!(store.transaction(record.id).await.unwrap().as_ref(), Some(record));
    }
    for (id, balance) in [(1, 90_00), (2, 90_00), (3, 110_00), (4, 110_00)] {
        assert_eq!(
            engine.balance(account(id)).await.unwrap().balance,
            balance,
            "account {id}"
        );
    }
    // And it goes on from there.
    let record = engine
        .execute(MoveRequest::transfer(account(3), account(1), amount(10_00)))
        .await
        .unwrap();
    assert_eq!(record.from_balance_after(), Some(100_00));
    engine.shutdown().await;
}

on_both_stores!(a_crash_keeps_every_acknowledged_write_and_no_unacknowledged_one);
