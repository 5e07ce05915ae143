//! The refund path: a refused credit gives the debit back and records `rolled_back`.

use tally_actors::{AccountStatus, AuditContext, Engine, MoveRequest, Refusal, StatusChangeRefusal, TransactionStatus};

use crate::on_both_stores;
use crate::support::{Backend, TestDb, account, amount, assert_store_invariants, config, open_accounts};

async fn a_credit_refused_by_a_frozen_or_closed_target_refunds_the_source(backend: Backend) {
    let db = TestDb::create(backend).await;
    let engine = Engine::open(config(&db.url)).await.unwrap();
    open_accounts(&engine, 2, 50_00).await;
    engine.create_account(account(3)).await.unwrap();
    let admin = AuditContext {
        actor_user_id: Some(42),
        request_id: Some("req-freeze".into()),
    };
    engine
        .set_status(account(2), AccountStatus::Frozen, admin.clone())
        .await
        .unwrap();
    engine
        .set_status(account(3), AccountStatus::Closed, admin)
        .await
        .unwrap();

    for (target, reason) in [(2, Refusal::AccountFrozen), (3, Refusal::AccountClosed)] {
        let record = engine
            .execute(MoveRequest::transfer(account(1), account(target), amount(20_00)))
            .await
            .unwrap();
        assert_eq!(record.status, TransactionStatus::RolledBack);
        assert_eq!(record.failure_reason, Some(reason));
        assert_eq!(record.debit.unwrap().balance_after, 30_00, "the debit happened");
        assert_eq!(record.credit, None);
        let refund = record.refund.expect("the refund is journaled");
        assert_eq!(refund.balance_after, 50_00);
        assert_eq!(refund.version, record.debit.unwrap().version + 1);
        assert_eq!(engine.store().transaction(record.id).await.unwrap(), Some(record));
    }
    assert_eq!(engine.balance(account(1)).await.unwrap().balance, 50_00);
    assert_eq!(engine.balance(account(2)).await.unwrap().balance, 50_00);
    assert_eq!(
        engine.metrics().rollbacks.with_label_values(&["account_frozen"]).get(),
        1
    );

    // A transfer to an account that does not exist is refunded the same way.
    let record = engine
        .execute(MoveRequest::transfer(account(1), account(404), amount(1_00)))
        .await
        .unwrap();
    assert_eq!(
        (record.status, record.failure_reason),
        (TransactionStatus::RolledBack, Some(Refusal::AccountNotFound))
    );

    // Journal and audit agree with what happened.
    let audit = engine.store().audit_entries("account", "2").await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].action, "status_changed");
    assert_eq!(audit[0].actor_user_id, Some(42));
    assert_eq!(audit[0].request_id.as_deref(), Some("req-freeze"));
    assert_eq!(
        audit[0].details,
        serde_json::json!({ "from": "active", "to": "frozen" })
    );
    assert_store_invariants(engine.store()).await;

    // Unfreezing lets money in again; a closed account stays closed.
    engine
        .set_status(account(2), AccountStatus::Active, AuditContext::default())
        .await
        .unwrap();
    let record = engine
        .execute(MoveRequest::transfer(account(1), account(2), amount(1_00)))
        .await
        .unwrap();
    assert_eq!(record.status, TransactionStatus::Completed);
    let reopened = engine
        .set_status(account(3), AccountStatus::Active, AuditContext::default())
        .await;
    assert!(matches!(
        reopened,
        Err(tally_actors::EngineError::StatusChange(
            StatusChangeRefusal::AccountClosed
        ))
    ));
    engine.shutdown().await;
}

on_both_stores!(a_credit_refused_by_a_frozen_or_closed_target_refunds_the_source);
