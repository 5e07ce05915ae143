//! Passivation: idle actors stop, and reactivated ones hold exactly the same balances.
//! Time is a manual clock; `sweep_idle` runs the same check the engine's idle sweep
//! asks idle actors to run.

use std::sync::Arc;
use std::time::Duration;

use tally_actors::{AccountId, Engine, ManualClock, MoveRequest, Placement};

use crate::on_both_stores;
use crate::support::{Backend, TestDb, account, amount, assert_store_invariants, config, eventually, open_accounts};

async fn idle_actors_passivate_and_come_back_with_exact_balances(backend: Backend) {
    let db = TestDb::create(backend).await;
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let mut config = config(&db.url);
    config.placement = Placement::Current;
    config.passivation_idle = Duration::from_secs(60);
    config.passivation_check_interval = Duration::from_secs(3_600);
    let engine = Engine::open_with_clock(config, clock.clone()).await.unwrap();
    open_accounts(&engine, 3, 10_00).await;
    engine
        .execute(MoveRequest::transfer(account(1), account(2), amount(2_50)))
        .await
        .unwrap();
    assert_eq!(engine.actor_stats(0).active, 4, "three accounts and external");

    // Not idle long enough: nothing passivates.
    clock.advance(Duration::from_secs(59));
    engine.sweep_idle().await;
    assert_eq!(engine.actor_stats(0).active, 4);
    // Account 3 is used again, so only the others are idle at the next sweep.
    engine.balance(account(3)).await.unwrap();
    clock.advance(Duration::from_secs(2));
    engine.sweep_idle().await;
    assert_eq!(engine.actor_stats(0).active, 1);
    assert_eq!(engine.metrics().actor_passivations.get(), 3);

    // Reactivation loads exactly the durable state and carries on.
    assert_eq!(engine.balance(account(1)).await.unwrap().balance, 7_50);
    assert_eq!(engine.balance(account(2)).await.unwrap().balance, 12_50);
    assert_eq!(engine.balance(AccountId::EXTERNAL).await.unwrap().balance, -30_00);
    let record = engine
        .execute(MoveRequest::transfer(account(2), account(1), amount(12_50)))
        .await
        .unwrap();
    assert_eq!(record.from_balance_after(), Some(0));
    assert_eq!(record.to_balance_after(), Some(20_00));
    assert_eq!(record.debit.unwrap().version, 3, "versions continue where they stopped");
    assert_eq!(engine.metrics().actor_activations.get(), 4 + 3);
    engine.shutdown().await;
    assert_store_invariants(&tally_actors::Store::connect(&db.url, 1).await.unwrap()).await;
}

on_both_stores!(idle_actors_passivate_and_come_back_with_exact_balances);

/// The engine sweeps on its own, every `passivation_check_interval`, and asks only the
/// actors idle long enough: a busy one stays, an idle one goes.
async fn the_idle_sweep_runs_on_its_own(backend: Backend) {
    let db = TestDb::create(backend).await;
    let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
    let mut config = config(&db.url);
    config.placement = Placement::Current;
    config.passivation_idle = Duration::from_secs(60);
    config.passivation_check_interval = Duration::from_millis(20);
    let engine = Engine::open_with_clock(config, clock.clone()).await.unwrap();
    open_accounts(&engine, 3, 10_00).await;
    assert_eq!(engine.actor_stats(0).active, 4, "three accounts and external");

    // Sweeps come and go while nothing is idle long enough.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(engine.actor_stats(0).active, 4);
    clock.advance(Duration::from_secs(59));
    engine.balance(account(3)).await.unwrap();
    clock.advance(Duration::from_secs(2));
    eventually(Duration::from_secs(10), "the idle actors passivate", || {
        engine.metrics().actor_passivations.get() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(engine.actor_stats(0).active, 1, "account 3 was used 2 s ago and stays");
    assert_eq!(engine.balance(account(1)).await.unwrap().balance, 10_00);
    engine.shutdown().await;
}

on_both_stores!(the_idle_sweep_runs_on_its_own);
