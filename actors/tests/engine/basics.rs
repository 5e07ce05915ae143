//! Single movements: outcomes, typed refusals, the registry under races, overload.

use std::sync::Arc;

use tally_actors::account::DailyUsage;
use tally_actors::store::Batch;
use tally_actors::{
    AccountEffect, AccountId, AccountRules, AccountStatus, Engine, EngineError, ManualClock, MoveRequest, Placement,
    Refusal, TransactionKind, TransactionRecord, TransactionStatus,
};
use tokio::task::JoinSet;

use crate::on_both_stores;
use crate::support::{Backend, TestDb, account, amount, assert_store_invariants, config, open_accounts};

async fn a_transfer_moves_money_and_is_journaled_with_balances_after(backend: Backend) {
    let db = TestDb::create(backend).await;
    let engine = Engine::open(config(&db.url)).await.unwrap();
    open_accounts(&engine, 2, 100_00).await;

    let record = engine
        .execute(MoveRequest::transfer(account(1), account(2), amount(30_00)))
        .await
        .unwrap();
    assert_eq!(record.status, TransactionStatus::Completed);
    assert_eq!(record.kind, TransactionKind::Transfer);
    assert_eq!(record.from_balance_after(), Some(70_00));
    assert_eq!(record.to_balance_after(), Some(130_00));
    assert_eq!(engine.balance(account(1)).await.unwrap().balance, 70_00);
    assert_eq!(engine.balance(account(2)).await.unwrap().balance, 130_00);
    assert_eq!(engine.balance(AccountId::EXTERNAL).await.unwrap().balance, -200_00);

    // Strict durability: the record is in the store by the time the call returned.
    let stored = engine.store().transaction(record.id).await.unwrap().expect("durable");
    assert_eq!(stored, record);
    let source = engine.store().load_account(account(1)).await.unwrap().unwrap();
    assert_eq!((source.balance, source.version), (70_00, 2));
    assert_store_invariants(engine.store()).await;
    engine.shutdown().await;
}

async fn a_debit_beyond_the_balance_is_recorded_as_failed_and_moves_nothing(backend: Backend) {
    let db = TestDb::create(backend).await;
    let engine = Engine::open(config(&db.url)).await.unwrap();
    open_accounts(&engine, 1, 10_00).await;

    let record = engine
        .execute(MoveRequest::debit(account(1), amount(10_01)))
        .await
        .unwrap();
    assert_eq!(record.status, TransactionStatus::Failed);
    assert_eq!(record.failure_reason, Some(Refusal::InsufficientFunds));
    assert_eq!((record.debit, record.credit, record.refund), (None, None, None));
    assert_eq!(engine.balance(account(1)).await.unwrap().balance, 10_00);
    assert_eq!(engine.store().transaction(record.id).await.unwrap(), Some(record));
    assert_store_invariants(engine.store()).await;
    engine.shutdown().await;
}

async fn malformed_movements_are_refused_with_typed_errors_before_anything_moves(backend: Backend) {
    let db = TestDb::create(backend).await;
    let engine = Engine::open(config(&db.url)).await.unwrap();
    open_accounts(&engine, 1, 5_00).await;
    let cases: Vec<(MoveRequest, &str)> = vec![
        (
            MoveRequest::transfer(account(1), account(1), amount(1)),
            "self-transfer",
        ),
        (
            MoveRequest::transfer(AccountId::EXTERNAL, account(1), amount(1)),
            "transfer from external",
        ),
        (
            MoveRequest::transfer(account(1), account(2), amount(1)).idempotency_key("k"),
            "key without a user",
        ),
        (
            MoveRequest::transfer(account(1), account(2), amount(1))
                .initiated_by(1)
                .idempotency_key("x".repeat(256)),
            "key too long",
        ),
        (
            MoveRequest::transfer(account(99), account(1), amount(1)),
            "missing source",
        ),
    ];
    for (request, case) in cases {
        let error = engine.execute(request).await.expect_err(case);
        let expected = match case {
            "self-transfer" => matches!(error, EngineError::SelfTransfer),
            "missing source" => {
                matches!(error, EngineError::AccountNotFound(id) if id == account(99))
            }
            _ => matches!(error, EngineError::InvalidRequest(_)),
        };
        assert!(expected, "{case}: unexpected {error:?}");
    }
    assert_eq!(engine.balance(account(1)).await.unwrap().balance, 5_00);
    // Only the funding credit was recorded.
    assert_eq!(engine.store().transaction_count().await.unwrap(), 1);
    engine.shutdown().await;
}

async fn concurrent_first_messages_to_one_account_activate_one_actor(backend: Backend) {
    let db = TestDb::create(backend).await;
    let engine = Engine::open(config(&db.url)).await.unwrap();
    engine.create_account(account(7)).await.unwrap();
    let mut readers = JoinSet::new();
    for _ in 0..64 {
        let engine = engine.clone();
        readers.spawn(async move { engine.balance(account(7)).await.unwrap().version });
    }
    while let Some(version) = readers.join_next().await {
        assert_eq!(version.unwrap(), 0);
    }
    assert_eq!(engine.metrics().actor_activations.get(), 1);
    assert_eq!(engine.actor_stats(1).active, 1);
    engine.shutdown().await;
}

async fn a_full_mailbox_answers_overloaded_instead_of_queueing(backend: Backend) {
    let db = TestDb::create(backend).await;
    let mut config = config(&db.url);
    // Everything on this test's own thread: no message is handled until it yields.
    config.placement = Placement::Current;
    config.mailbox_capacity = 4;
    let engine = Engine::open_with_clock(config, Arc::new(ManualClock::new(chrono::Utc::now())))
        .await
        .unwrap();
    open_accounts(&engine, 2, 100_00).await;
    let mut transfers = JoinSet::new();
    for _ in 0..32 {
        let engine = engine.clone();
        transfers.spawn_local(async move {
            engine
                .execute(MoveRequest::transfer(account(1), account(2), amount(1)))
                .await
        });
    }
    let (mut completed, mut overloaded) = (0, 0);
    while let Some(result) = transfers.join_next().await {
        match result.unwrap() {
            Ok(record) if record.status == TransactionStatus::Completed => completed += 1,
            Err(EngineError::Overloaded(id)) if id == account(1) => overloaded += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert!(overloaded > 0, "some transfers must be refused as overloaded");
    assert_eq!(completed + overloaded, 32);
    assert_eq!(engine.balance(account(1)).await.unwrap().balance, 100_00 - completed);
    assert_eq!(engine.metrics().actor_overloaded.get(), overloaded as u64);
    engine.shutdown().await;
    assert_store_invariants(&tally_actors::Store::connect(&db.url, 1).await.unwrap()).await;
}

/// A fresh store with two accounts of 100.00 and one durable transfer of 30.00 between
/// them: the engine and the transfer's record.
async fn one_transfer_written(backend: Backend) -> (TestDb, Engine, TransactionRecord) {
    let db = TestDb::create(backend).await;
    let engine = Engine::open(config(&db.url)).await.unwrap();
    open_accounts(&engine, 2, 100_00).await;
    let written = engine
        .execute(MoveRequest::transfer(account(1), account(2), amount(30_00)))
        .await
        .unwrap();
    (db, engine, written)
}

/// A batch whose commit may have happened before the connection broke is written
/// again: the rows already there stay as they are, the others are written.
async fn a_batch_written_again_keeps_its_rows_and_adds_the_missing_ones(backend: Backend) {
    let (_db, engine, written) = one_transfer_written(backend).await;
    let count = engine.store().transaction_count().await.unwrap();

    let mut changed = written.clone();
    changed.amount = amount(99_00);
    let mut missing = written.clone();
    missing.id = uuid::Uuid::now_v7();
    let batch = Batch {
        transactions: vec![changed, missing.clone()],
        ..Batch::default()
    };
    engine.store().write_batch(&batch).await.unwrap();
    engine.store().write_batch(&batch).await.unwrap();

    let store = engine.store();
    assert_eq!(store.transaction(written.id).await.unwrap(), Some(written));
    assert_eq!(store.transaction(missing.id).await.unwrap(), Some(missing));
    assert_eq!(store.transaction_count().await.unwrap(), count + 1);
    engine.shutdown().await;
}

/// A batch that fails part-way (here its balance row breaks a CHECK constraint after its
/// transaction row was inserted) leaves nothing of itself behind, and the same store,
/// the persister's held connection included, writes the next batch.
async fn a_batch_that_fails_part_way_leaves_nothing_and_the_next_one_is_written(backend: Backend) {
    let (db, engine, written) = one_transfer_written(backend).await;
    let before = engine.store().balance_sum().await.unwrap();
    let writer = engine.store().writer(&db.url).unwrap();
    // Reads go through the engine's pool: the writer's one connection is held.
    let reads = engine.store();
    for store in [engine.store(), &writer] {
        let count = reads.transaction_count().await.unwrap();
        let mut record = written.clone();
        record.id = uuid::Uuid::now_v7();
        let effect = |overdraft_limit: i64| AccountEffect {
            account: account(1),
            version: 1_000,
            balance: 1,
            held: 0,
            status: AccountStatus::Active,
            rules: AccountRules {
                overdraft_limit,
                max_balance: None,
                daily_debit_cap: None,
            },
            usage: DailyUsage::default(),
            at: written.created_at,
        };
        let broken = Batch {
            transactions: vec![record.clone()],
            balances: vec![effect(-1)],
            ..Batch::default()
        };
        assert!(
            store.write_batch(&broken).await.is_err(),
            "a negative overdraft limit breaks a CHECK"
        );
        assert_eq!(reads.transaction(record.id).await.unwrap(), None, "rolled back whole");
        assert_eq!(reads.transaction_count().await.unwrap(), count);
        assert_eq!(reads.balance_sum().await.unwrap(), before, "no balance row moved");

        let mut next = written.clone();
        next.id = uuid::Uuid::now_v7();
        let fine = Batch {
            transactions: vec![next.clone()],
            ..Batch::default()
        };
        store.write_batch(&fine).await.unwrap();
        assert_eq!(reads.transaction(next.id).await.unwrap(), Some(next));
    }
    engine.shutdown().await;
}

on_both_stores!(
    a_batch_that_fails_part_way_leaves_nothing_and_the_next_one_is_written,
    a_batch_written_again_keeps_its_rows_and_adds_the_missing_ones,
    a_transfer_moves_money_and_is_journaled_with_balances_after,
    a_debit_beyond_the_balance_is_recorded_as_failed_and_moves_nothing,
    malformed_movements_are_refused_with_typed_errors_before_anything_moves,
    concurrent_first_messages_to_one_account_activate_one_actor,
    a_full_mailbox_answers_overloaded_instead_of_queueing,
);

async fn the_durable_listener_hears_of_every_account_before_the_caller_does(backend: Backend) {
    let db = TestDb::create(backend).await;
    let engine = Engine::open(config(&db.url)).await.unwrap();
    let heard: Arc<std::sync::Mutex<Vec<AccountId>>> = Arc::default();
    let sink = heard.clone();
    engine
        .set_durable_listener(Box::new(move |accounts| {
            sink.lock().unwrap().extend_from_slice(accounts)
        }))
        .unwrap();
    assert!(
        engine.set_durable_listener(Box::new(|_| {})).is_err(),
        "only one listener"
    );
    open_accounts(&engine, 2, 10_00).await;
    heard.lock().unwrap().clear();
    engine
        .execute(MoveRequest::transfer(account(1), account(2), amount(1_00)))
        .await
        .unwrap();
    let accounts = heard.lock().unwrap().clone();
    assert!(
        accounts.contains(&account(1)) && accounts.contains(&account(2)),
        "{accounts:?}"
    );
    // A refused debit changes its source's history too.
    heard.lock().unwrap().clear();
    engine
        .execute(MoveRequest::debit(account(2), amount(99_00)))
        .await
        .unwrap();
    assert!(heard.lock().unwrap().contains(&account(2)));
    engine.shutdown().await;
}

on_both_stores!(the_durable_listener_hears_of_every_account_before_the_caller_does);
