//! Holds, rules, batches and reversals in the engine: the day boundary of the daily cap
//! (on a manual clock), expiry on that clock, and a hammer mixing every kind of
//! operation over a small hot set of accounts, checked against design.md §11 — held
//! amounts included — in memory and in the store after a restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_actors::{
    AccountId, AccountRules, AuditContext, BatchRequest, Engine, EngineError, ManualClock, MoveRequest, Refusal,
    ReversalRequest, Store, TransactionRecord, TransactionStatus,
};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::on_both_stores;
use crate::support::{Backend, TestDb, account, amount, assert_store_invariants, config, eventually, open_accounts};

/// 2023-11-14T23:00:00Z: an hour before a UTC midnight.
fn late_evening() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_002_800, 0).unwrap()
}

async fn open_with_clock(db: &TestDb, clock: Arc<ManualClock>) -> Engine {
    let store = Store::connect(&db.url, 4).await.unwrap();
    Engine::open_on(store, config(&db.url), clock).await.unwrap()
}

async fn the_daily_cap_starts_again_at_utc_midnight(backend: Backend) {
    let db = TestDb::create(backend).await;
    let clock = Arc::new(ManualClock::new(late_evening()));
    let engine = open_with_clock(&db, clock.clone()).await;
    open_accounts(&engine, 2, 1_000_00).await;
    let rules = AccountRules {
        daily_debit_cap: Some(100_00),
        ..AccountRules::default()
    };
    engine
        .set_rules(account(1), rules, AuditContext::default())
        .await
        .unwrap();

    let spent = engine
        .execute(MoveRequest::debit(account(1), amount(60_00)))
        .await
        .unwrap();
    assert_eq!(spent.status, TransactionStatus::Completed);
    let held = engine
        .execute(MoveRequest::transfer(account(1), account(2), amount(40_00)).pending(None))
        .await
        .unwrap();
    assert_eq!(held.status, TransactionStatus::Pending);
    let over = engine.execute(MoveRequest::debit(account(1), amount(1))).await.unwrap();
    assert_eq!(over.failure_reason, Some(Refusal::OverDailyCap));

    // Past midnight the day starts again; releasing yesterday's hold gives nothing back
    // to today's budget (it counted against yesterday's).
    clock.advance(Duration::from_secs(3600));
    let (voided, replayed) = engine.void_hold(held.id).await.unwrap();
    assert_eq!((voided.status, replayed), (TransactionStatus::Voided, false));
    let today = engine
        .execute(MoveRequest::debit(account(1), amount(100_00)))
        .await
        .unwrap();
    assert_eq!(today.status, TransactionStatus::Completed, "exactly the cap, a new day");
    let over = engine.execute(MoveRequest::debit(account(1), amount(1))).await.unwrap();
    assert_eq!(over.failure_reason, Some(Refusal::OverDailyCap));
    assert_eq!(engine.balance(account(1)).await.unwrap().debited_today, 100_00);

    // The day's usage survives a restart (it is stored with the balance).
    engine.shutdown().await;
    let engine = open_with_clock(&db, clock.clone()).await;
    let over = engine.execute(MoveRequest::debit(account(1), amount(1))).await.unwrap();
    assert_eq!(over.failure_reason, Some(Refusal::OverDailyCap));
    assert_store_invariants(engine.store()).await;
    engine.shutdown().await;
}

async fn holds_expire_on_the_engine_clock_also_after_a_restart(backend: Backend) {
    let db = TestDb::create(backend).await;
    let clock = Arc::new(ManualClock::new(late_evening()));
    let engine = open_with_clock(&db, clock.clone()).await;
    open_accounts(&engine, 2, 100_00).await;
    let in_a_minute = late_evening() + TimeDelta::minutes(1);
    let first = engine
        .execute(MoveRequest::transfer(account(1), account(2), amount(10_00)).pending(Some(in_a_minute)))
        .await
        .unwrap();
    let second = engine
        .execute(
            MoveRequest::transfer(account(1), account(2), amount(20_00))
                .pending(Some(in_a_minute + TimeDelta::minutes(1))),
        )
        .await
        .unwrap();
    assert_eq!(engine.balance(account(1)).await.unwrap().held, 30_00);
    // Real time passing does nothing: only the engine's clock counts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(engine.balance(account(1)).await.unwrap().held, 30_00);

    clock.advance(Duration::from_secs(61));
    let store = engine.store().clone();
    wait_for_status(&store, first.id, TransactionStatus::Voided).await;
    let expired = store.transaction(first.id).await.unwrap().unwrap();
    assert_eq!(expired.failure_reason, Some(Refusal::HoldExpired));
    assert_eq!(engine.balance(account(1)).await.unwrap().held, 20_00);
    let late = engine.post_hold(first.id, None).await.unwrap_err();
    assert!(
        matches!(
            late,
            EngineError::HoldNotPending {
                reason: Some(Refusal::HoldExpired),
                ..
            }
        ),
        "{late:?}"
    );

    // Down while the second expires: voided when the engine opens again.
    engine.shutdown().await;
    clock.advance(Duration::from_secs(120));
    let engine = open_with_clock(&db, clock.clone()).await;
    wait_for_status(engine.store(), second.id, TransactionStatus::Voided).await;
    assert_eq!(engine.balance(account(1)).await.unwrap().held, 0);
    assert_store_invariants(engine.store()).await;
    engine.shutdown().await;
}

async fn wait_for_status(store: &Store, id: Uuid, status: TransactionStatus) {
    for _ in 0..200 {
        if store.transaction(id).await.unwrap().map(|record| record.status) == Some(status) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("transaction {id} never became {status:?}");
}

const TASKS: u64 = 16;
const OPERATIONS_PER_TASK: usize = 250;
/// A small hot set: every operation contends with many others.
const ACCOUNTS: i64 = 6;
const FUNDING: i64 = 500_00;

/// What one task did, for the checks at the end.
#[derive(Default)]
struct Seen {
    records: Vec<TransactionRecord>,
    batches: usize,
    reversals: usize,
    settled_holds: usize,
}

async fn hammer_task(engine: Engine, seed: u64) -> Seen {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut seen = Seen::default();
    let mut open_holds: Vec<Uuid> = Vec::new();
    let mut reversible: Vec<TransactionRecord> = Vec::new();
    for _ in 0..OPERATIONS_PER_TASK {
        let from = account(rng.random_range(1..=ACCOUNTS));
        let to = account(rng.random_range(1..=ACCOUNTS));
        let to = if to == from {
            account(from.get() % ACCOUNTS + 1)
        } else {
            to
        };
        let value = amount(rng.random_range(1..=120_00));
        match rng.random_range(0..100) {
            0..25 => {
                let record = engine.execute(MoveRequest::transfer(from, to, value)).await.unwrap();
                if record.status == TransactionStatus::Completed {
                    reversible.push(record.clone());
                }
                seen.records.push(record);
            }
            25..45 => {
                let expires = (rng.random_range(0..3) == 0).then(|| engine.now() + TimeDelta::milliseconds(150));
                let record = engine
                    .execute(MoveRequest::transfer(from, to, value).pending(expires))
                    .await
                    .unwrap();
                if record.status == TransactionStatus::Pending {
                    open_holds.push(record.id);
                }
                seen.records.push(record);
            }
            45..65 if !open_holds.is_empty() => {
                let id = open_holds.swap_remove(rng.random_range(0..open_holds.len()));
                let result = if rng.random_bool(0.6) {
                    let part = amount(rng.random_range(1..=5_00));
                    engine.post_hold(id, Some(part)).await
                } else {
                    engine.void_hold(id).await
                };
                match result {
                    Ok((record, _)) => {
                        seen.settled_holds += 1;
                        if record.status == TransactionStatus::Posted {
                            reversible.push(record.clone());
                        }
                        seen.records.push(record);
                    }
                    // Expired meanwhile, posted for more than held (a small hold), or
                    // refused by a frozen account: all legitimate outcomes.
                    Err(
                        EngineError::HoldNotPending { .. } | EngineError::HoldAmountTooLarge | EngineError::Refused(_),
                    ) => {}
                    Err(other) => panic!("settling a hold: {other:?}"),
                }
            }
            65..80 => {
                let legs = (0..rng.random_range(2..=4))
                    .map(|_| {
                        let from = account(rng.random_range(1..=ACCOUNTS));
                        let to = account(from.get() % ACCOUNTS + 1);
                        MoveRequest::transfer(from, to, amount(rng.random_range(1..=80_00)))
                    })
                    .collect();
                let request = BatchRequest {
                    legs,
                    initiator: Some(1),
                    idempotency_key: Some(format!("batch-{seed}-{}", seen.batches)),
                    audit: Some(tally_actors::AuditContext {
                        actor_user_id: Some(1),
                        request_id: None,
                    }),
                };
                let (outcome, _) = engine.execute_batch(request).await.unwrap();
                seen.batches += 1;
                seen.records.extend(outcome.legs);
            }
            80..92 if !reversible.is_empty() => {
                let original = reversible[rng.random_range(0..reversible.len())].clone();
                let part = amount(rng.random_range(1..=original.amount.minor()));
                let request = ReversalRequest {
                    original: original.id,
                    amount: Some(part),
                    initiator: Some(2),
                    idempotency_key: None,
                    audit: None,
                };
                match engine.reverse(request).await {
                    Ok((record, _)) => {
                        seen.reversals += 1;
                        seen.records.push(record);
                    }
                    Err(EngineError::ReversalExceedsOriginal { .. }) => {}
                    Err(other) => panic!("reversing: {other:?}"),
                }
            }
            _ => {
                let record = engine.execute(MoveRequest::credit(to, value)).await.unwrap();
                seen.records.push(record);
            }
        }
    }
    seen
}

async fn a_mix_of_holds_batches_and_reversals_keeps_every_invariant(backend: Backend) {
    let db = TestDb::create(backend).await;
    let engine = Engine::open(config(&db.url)).await.unwrap();
    open_accounts(&engine, ACCOUNTS, FUNDING).await;
    let rules = AccountRules {
        overdraft_limit: 50_00,
        max_balance: Some(5_000_00),
        daily_debit_cap: Some(100_000_00),
    };
    engine
        .set_rules(account(1), rules, AuditContext::default())
        .await
        .unwrap();

    let mut tasks = JoinSet::new();
    for seed in 0..TASKS {
        tasks.spawn(hammer_task(engine.clone(), seed));
    }
    let mut seen = Seen::default();
    while let Some(done) = tasks.join_next().await {
        let done = done.unwrap();
        seen.records.extend(done.records);
        seen.batches += done.batches;
        seen.reversals += done.reversals;
        seen.settled_holds += done.settled_holds;
    }
    assert!(seen.batches > 0 && seen.reversals > 0 && seen.settled_holds > 0);
    let statuses: std::collections::HashSet<TransactionStatus> = seen.records.iter().map(|r| r.status).collect();
    for status in [
        TransactionStatus::Completed,
        TransactionStatus::Failed,
        TransactionStatus::Pending,
        TransactionStatus::Posted,
        TransactionStatus::Voided,
    ] {
        assert!(statuses.contains(&status), "the mix must produce some {status:?}");
    }
    // Let short expiries run out, then compare memory with the store.
    tokio::time::sleep(Duration::from_millis(400)).await;
    eventually(Duration::from_secs(10), "the expiry queue to drain", || {
        engine.persister_status().queue_depth == 0
    })
    .await;
    let mut in_memory = HashMap::new();
    for id in 0..=ACCOUNTS {
        let balance = engine.balance(AccountId::new(id).unwrap()).await.unwrap();
        assert!(
            id == 0 || balance.balance >= -balance.rules.overdraft_limit,
            "account {id} beyond its overdraft: {balance:?}"
        );
        assert!(balance.held >= 0 && (id == 0 || balance.available >= 0), "{balance:?}");
        in_memory.insert(id, (balance.balance, balance.held));
    }
    assert_eq!(
        in_memory.values().map(|(balance, _)| balance).sum::<i64>(),
        0,
        "conservation in memory"
    );
    engine.shutdown().await;

    let engine = Engine::open(config(&db.url)).await.unwrap();
    let store = engine.store();
    assert_store_invariants(store).await;
    for (id, (balance, held)) in &in_memory {
        let stored = store.load_account(AccountId::new(*id).unwrap()).await.unwrap().unwrap();
        assert_eq!(
            (stored.balance, stored.held()),
            (*balance, *held),
            "account {id}: store and memory agree"
        );
    }
    // Every acknowledged record is stored; a hold's row shows its latest state.
    for record in &seen.records {
        let stored = store
            .transaction(record.id)
            .await
            .unwrap()
            .expect("an acknowledged record is stored");
        if record.status != TransactionStatus::Pending {
            assert_eq!(stored.status, record.status, "{record:?}");
        }
    }
    // Reversals never give back more than their original.
    for record in seen.records.iter().filter(|record| record.parent_id.is_some()) {
        let original = store.transaction(record.parent_id.unwrap()).await.unwrap().unwrap();
        let reversed = store.reversed_total(original.id).await.unwrap();
        assert!(
            reversed <= original.amount.minor(),
            "{original:?} reversed by {reversed}"
        );
    }
    engine.shutdown().await;
}

on_both_stores!(
    the_daily_cap_starts_again_at_utc_midnight,
    holds_expire_on_the_engine_clock_also_after_a_restart,
    a_mix_of_holds_batches_and_reversals_keeps_every_invariant,
);
