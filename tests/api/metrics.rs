//! /metrics: the families operators rely on move as the ledger works.

use serde_json::json;

use crate::helpers::{Backend, spawn_app};
use crate::on_both_stores;

/// The value of one sample line `name{labels} value` (labels in any order).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} ")))
        .filter(|line| {
            labels
                .iter()
                .all(|(key, value)| line.contains(&format!("{key}=\"{value}\"")))
        })
        .map(|line| line.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

async fn actor_coordinator_and_persister_metrics_follow_the_work(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let before = app.get("/metrics", None).await.text;
    app.fund(&admin, &alice, "10.00").await;
    app.post(
        "/api/v1/transactions/transfer",
        Some(&alice.token),
        json!({ "from_user_id": alice.id, "to_user_id": bob.id, "amount": "4.00" }),
    )
    .await;
    // A frozen target makes the next transfer roll back.
    app.engine
        .set_status(
            tally_actors::AccountId::new(bob.id).unwrap(),
            tally_actors::AccountStatus::Frozen,
            Default::default(),
        )
        .await
        .unwrap();
    app.post(
        "/api/v1/transactions/transfer",
        Some(&alice.token),
        json!({ "from_user_id": alice.id, "to_user_id": bob.id, "amount": "1.00" }),
    )
    .await
    .assert_problem(422, "account_frozen");
    app.post(
        "/api/v1/transactions/debit",
        Some(&alice.token),
        json!({ "user_id": alice.id, "amount": "100" }),
    )
    .await
    .assert_problem(422, "insufficient_funds");
    let reply = app.get("/metrics", None).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let after = reply.text;
    let moved = |name: &str, labels: &[(&str, &str)]| sample(&after, name, labels) - sample(&before, name, labels);

    assert!(
        moved("tally_actor_activations_total", &[]) >= 2.0,
        "alice's and bob's actors activated"
    );
    assert!(sample(&after, "tally_actors_active", &[]) >= 3.0);
    assert_eq!(
        moved("tally_transfers_total", &[("kind", "credit"), ("outcome", "completed")]),
        1.0
    );
    assert_eq!(
        moved(
            "tally_transfers_total",
            &[("kind", "transfer"), ("outcome", "completed")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "tally_transfers_total",
            &[("kind", "transfer"), ("outcome", "rolled_back")]
        ),
        1.0
    );
    assert_eq!(
        moved("tally_transfers_total", &[("kind", "debit"), ("outcome", "failed")]),
        1.0
    );
    assert_eq!(
        moved("tally_transfer_rollbacks_total", &[("reason", "account_frozen")]),
        1.0
    );
    assert!(moved("tally_transfer_step_duration_seconds_count", &[("step", "refund")]) >= 1.0);
    assert!(moved("tally_actor_message_duration_seconds_count", &[("message", "debit")]) >= 3.0);
    // Four movements and one status change were made durable, in at least one batch.
    assert!(moved("tally_persister_batch_size_sum", &[]) >= 5.0);
    assert!(moved("tally_persister_batch_size_count", &[]) >= 1.0);
    assert!(moved("tally_persister_flush_duration_seconds_count", &[]) >= 1.0);
    assert!(moved("tally_persister_durable_lag_seconds_count", &[]) >= 5.0);
    assert_eq!(sample(&after, "tally_persister_queue_depth", &[]), 0.0);
    assert_eq!(sample(&after, "tally_persister_queue_capacity", &[]), 100_000.0);
    assert_eq!(moved("tally_amount_moved_minor_total", &[("kind", "transfer")]), 400.0);
    assert_eq!(sample(&after, "tally_users", &[]), 3.0);
    // HTTP, by route template, never by raw id.
    assert!(
        moved(
            "tally_http_requests_total",
            &[("route", "/api/v1/transactions/transfer"), ("status", "201")]
        ) >= 1.0
    );
    assert!(
        moved(
            "tally_http_requests_total",
            &[("route", "/api/v1/transactions/transfer"), ("status", "422")]
        ) >= 1.0
    );
    assert!(!after.contains(&format!("route=\"/api/v1/users/{}\"", alice.id)));
    assert!(
        moved(
            "tally_db_operations_total",
            &[("operation", "load_account"), ("outcome", "ok")]
        ) >= 2.0
    );
    assert!(sample(&after, "tally_db_pool_connections", &[]) >= 1.0);
    app.stop().await;
}

on_both_stores!(actor_coordinator_and_persister_metrics_follow_the_work);
