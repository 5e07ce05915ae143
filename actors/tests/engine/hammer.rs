//! The concurrency hammer: 64 tasks × 1,000 random movements over 100 accounts (some
//! deliberately too large, some to a frozen account), then every invariant of
//! design.md §11 checked against the store after a restart.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_actors::{AccountId, AccountStatus, AuditContext, Engine, MoveRequest, TransactionRecord, TransactionStatus};
use tokio::task::JoinSet;

use crate::on_both_stores;
use crate::support::{Backend, TestDb, account, amount, assert_store_invariants, config, open_accounts};

const TASKS: u64 = 64;
const OPERATIONS_PER_TASK: usize = 1_000;
const ACCOUNTS: i64 = 100;
const FUNDING: i64 = 1_000_00;
/// Credits into this account are refused, so transfers to it are refunded.
const FROZEN: i64 = ACCOUNTS;

fn random_request(rng: &mut StdRng) -> MoveRequest {
    // Up to 1,500.00: larger than most balances often enough to be refused.
    let value = amount(rng.random_range(1..=1_500_00));
    let from = account(rng.random_range(1..=ACCOUNTS));
    let to = account(rng.random_range(1..=ACCOUNTS));
    match rng.random_range(0..100) {
        0..10 => MoveRequest::credit(to, value),
        10..20 => MoveRequest::debit(from, value),
        _ if from == to => {
            let to = if from == account(FROZEN) {
                account(1)
            } else {
                account(FROZEN)
            };
            MoveRequest::transfer(from, to, value)
        }
        _ => MoveRequest::transfer(from, to, value),
    }
}

async fn random_movements_from_many_tasks_keep_every_invariant(backend: Backend) {
    let db = TestDb::create(backend).await;
    let engine = Engine::open(config(&db.url)).await.unwrap();
    open_accounts(&engine, ACCOUNTS, FUNDING).await;
    engine
        .set_status(account(FROZEN), AccountStatus::Frozen, AuditContext::default())
        .await
        .unwrap();

    let mut tasks = JoinSet::new();
    for task in 0..TASKS {
        let engine = engine.clone();
        tasks.spawn(async move {
            let mut rng = StdRng::seed_from_u64(task);
            let mut acknowledged = Vec::with_capacity(OPERATIONS_PER_TASK);
            for _ in 0..OPERATIONS_PER_TASK {
                let record = engine
                    .execute(random_request(&mut rng))
                    .await
                    .expect("no engine error under load");
                acknowledged.push(record);
            }
            acknowledged
        });
    }
    let mut acknowledged: Vec<TransactionRecord> = Vec::new();
    while let Some(records) = tasks.join_next().await {
        acknowledged.extend(records.unwrap());
    }
    let mut outcomes: HashMap<TransactionStatus, usize> = HashMap::new();
    for record in &acknowledged {
        *outcomes.entry(record.status).or_default() += 1;
    }
    for status in [
        TransactionStatus::Completed,
        TransactionStatus::Failed,
        TransactionStatus::RolledBack,
    ] {
        assert!(
            outcomes.get(&status).copied().unwrap_or(0) > 0,
            "the mix must produce some {status:?}: {outcomes:?}"
        );
    }
    let mut in_memory = HashMap::new();
    for id in 0..=ACCOUNTS {
        let balance = engine.balance(AccountId::new(id).unwrap()).await.unwrap();
        assert!(id == 0 || balance.balance >= 0, "account {id} went negative in memory");
        in_memory.insert(id, balance.balance);
    }
    assert_eq!(in_memory.values().sum::<i64>(), 0, "conservation in memory");
    engine.shutdown().await;

    // Reopen: the store alone must now show everything.
    let engine = Engine::open(config(&db.url)).await.unwrap();
    let store = engine.store();
    assert_store_invariants(store).await;
    for (id, balance) in &in_memory {
        let stored = store.load_account(AccountId::new(*id).unwrap()).await.unwrap().unwrap();
        assert_eq!(stored.balance, *balance, "account {id}: store and memory agree");
    }
    // Every acknowledged movement is stored exactly once, as acknowledged (plus the
    // funding credits).
    assert_eq!(
        store.transaction_count().await.unwrap(),
        acknowledged.len() as i64 + ACCOUNTS,
        "no movement lost or duplicated"
    );
    for record in acknowledged.iter().step_by(7) {
        assert_eq!(store.transaction(record.id).await.unwrap().as_ref(), Some(record));
    }
    engine.shutdown().await;
}

on_both_stores!(random_movements_from_many_tasks_keep_every_invariant);
