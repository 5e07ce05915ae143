//! Holds through the API: place, post (all or part), void, expiry while running and
//! across a restart, and a frozen source.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Backend, Reply, TestApp, TestUser, assert_store_invariants, spawn_app, spawn_app_on};
use crate::on_both_stores;

/// The caller's balances: (balance, held, available).
pub async fn balances(app: &TestApp, user: &TestUser) -> (String, String, String) {
    let reply = app.get("/api/v1/balances/current", Some(&user.token)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let text = |field: &str| reply.body[field].as_str().unwrap().to_string();
    (text("balance"), text("held"), text("available"))
}

pub async fn hold(app: &TestApp, from: &TestUser, to: i64, amount: &str, extra: Value) -> Reply {
    let mut body = json!({ "from_user_id": from.id, "to_user_id": to, "amount": amount, "pending": true });
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    app.post("/api/v1/transactions/transfer", Some(&from.token), body).await
}

pub fn id_of(reply: &Reply) -> String {
    reply.body["id"].as_str().expect("a transaction id").to_string()
}

async fn a_partial_post_moves_part_and_releases_the_rest_and_a_void_releases_all(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    app.fund(&admin, &alice, "100.00").await;

    let placed = hold(&app, &alice, bob.id, "30.00", json!({})).await;
    assert_eq!(placed.status, 201, "{}", placed.text);
    assert_eq!(placed.body["status"], "pending");
    assert_eq!(placed.body["held_amount"], "30.00");
    let first = id_of(&placed);
    assert_eq!(
        balances(&app, &alice).await,
        ("100.00".into(), "30.00".into(), "70.00".into())
    );
    // The held amount is not available for debits.
    let debit = app
        .post(
            "/api/v1/transactions/debit",
            Some(&alice.token),
            json!({ "user_id": alice.id, "amount": "70.01" }),
        )
        .await;
    debit.assert_problem(422, "insufficient_funds");

    // More than held, a stranger, an unknown id: refused.
    let too_much = app
        .post(
            &format!("/api/v1/transactions/{first}/post"),
            Some(&bob.token),
            json!({ "amount": "30.01" }),
        )
        .await;
    too_much.assert_problem(422, "hold_amount_exceeded");
    let stranger = app
        .post(
            &format!("/api/v1/transactions/{first}/post"),
            Some(&carol.token),
            json!({}),
        )
        .await;
    stranger.assert_problem(404, "transaction_not_found");
    let unknown = app
        .post(
            "/api/v1/transactions/0190c7a2-0000-7000-8000-000000000000/void",
            Some(&alice.token),
            json!({}),
        )
        .await;
    unknown.assert_problem(404, "transaction_not_found");

    // The target captures part of it: that part moves, the rest is released.
    let posted = app
        .post(
            &format!("/api/v1/transactions/{first}/post"),
            Some(&bob.token),
            json!({ "amount": "12.50" }),
        )
        .await;
    assert_eq!(posted.status, 200, "{}", posted.text);
    assert_eq!(posted.body["status"], "posted");
    assert_eq!(posted.body["amount"], "12.50");
    assert_eq!(posted.body["held_amount"], "30.00");
    assert_eq!(posted.body["to_balance_after"], "12.50");
    assert_eq!(
        balances(&app, &alice).await,
        ("87.50".into(), "0.00".into(), "87.50".into())
    );
    assert_eq!(app.balance(&bob).await, "12.50");
    // The same post again answers the same; anything else finds it settled.
    let again = app
        .post(
            &format!("/api/v1/transactions/{first}/post"),
            Some(&bob.token),
            json!({ "amount": "12.50" }),
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let void_after_post = app
        .post(
            &format!("/api/v1/transactions/{first}/void"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    void_after_post.assert_problem(409, "hold_not_pending");
    assert_eq!(app.balance(&bob).await, "12.50", "applied once");

    // A second hold, voided whole.
    let second = id_of(&hold(&app, &alice, bob.id, "20.00", json!({})).await);
    assert_eq!(
        balances(&app, &alice).await,
        ("87.50".into(), "20.00".into(), "67.50".into())
    );
    let voided = app
        .post(
            &format!("/api/v1/transactions/{second}/void"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(voided.status, 200, "{}", voided.text);
    assert_eq!(voided.body["status"], "voided");
    assert!(voided.body["failure_reason"].is_null());
    let revoid = app
        .post(
            &format!("/api/v1/transactions/{second}/void"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(revoid.status, 200);
    assert_eq!(revoid.headers["idempotent-replayed"], "true");
    let post_after_void = app
        .post(
            &format!("/api/v1/transactions/{second}/post"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    post_after_void.assert_problem(409, "hold_not_pending");
    assert_eq!(
        balances(&app, &alice).await,
        ("87.50".into(), "0.00".into(), "87.50".into())
    );

    // A plain transfer is not a hold; a hold cannot be larger than what is available.
    let plain = app
        .post(
            "/api/v1/transactions/transfer",
            Some(&alice.token),
            json!({ "from_user_id": alice.id, "to_user_id": bob.id, "amount": "1.00" }),
        )
        .await;
    let not_a_hold = app
        .post(
            &format!("/api/v1/transactions/{}/void", id_of(&plain)),
            Some(&alice.token),
            json!({}),
        )
        .await;
    not_a_hold.assert_problem(409, "not_a_hold");
    let refused = hold(&app, &alice, bob.id, "86.51", json!({})).await;
    refused.assert_problem(422, "insufficient_funds");
    assert_eq!(refused.body["transaction"]["status"], "failed");

    // The histories: the posted hold once at alice's, and at bob's as a credit.
    let history = app.get("/api/v1/transactions/history", Some(&alice.token)).await;
    let statuses: Vec<&str> = history.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["failed", "completed", "voided", "posted", "failed", "completed"]
    );
    let bobs = app
        .get("/api/v1/transactions/history?status=posted", Some(&bob.token))
        .await;
    assert_eq!(bobs.body["items"].as_array().unwrap().len(), 1, "{}", bobs.text);

    let db = app.stop().await.unwrap();
    let store = tally_actors::Store::connect(&db.url, 2).await.unwrap();
    assert_store_invariants(&store).await;
}

/// Poll the transaction until `check` holds (at most `within`).
pub async fn wait_for_transaction(
    app: &TestApp,
    user: &TestUser,
    id: &str,
    within: Duration,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let reply = app.get(&format!("/api/v1/transactions/{id}"), Some(&user.token)).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        if check(&reply.body) {
            return reply.body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "transaction {id} never got there: {}",
            reply.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_hold_expires_while_running_and_across_a_restart(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    app.fund(&admin, &alice, "100.00").await;

    // While running: voided by the engine once its time passes.
    let soon = id_of(&hold(&app, &alice, bob.id, "10.00", json!({ "expires_in": 1 })).await);
    let expired = wait_for_transaction(&app, &alice, &soon, Duration::from_secs(10), |body| {
        body["status"] == "voided"
    })
    .await;
    assert_eq!(expired["failure_reason"], "hold_expired");
    assert_eq!(balances(&app, &alice).await.1, "0.00");
    let late = app
        .post(
            &format!("/api/v1/transactions/{soon}/post"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    late.assert_problem(409, "hold_expired");

    // Across a restart: one hold expires while Tally is down, one has no expiry.
    let expires_at = (chrono::Utc::now() + chrono::TimeDelta::seconds(2)).to_rfc3339();
    let down = id_of(&hold(&app, &alice, bob.id, "15.00", json!({ "expires_at": expires_at })).await);
    let open = id_of(&hold(&app, &alice, bob.id, "5.00", json!({})).await);
    assert_eq!(balances(&app, &alice).await.1, "20.00");
    let db = app.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    let app = spawn_app_on(&db.url, &[]).await;
    let alice = TestUser {
        token: app.login("alice", crate::helpers::PASSWORD).await.body["access_token"]
            .as_str()
            .unwrap()
            .to_string(),
        ..alice
    };
    let voided = wait_for_transaction(&app, &alice, &down, Duration::from_secs(10), |body| {
        body["status"] == "voided"
    })
    .await;
    assert_eq!(voided["failure_reason"], "hold_expired");
    assert_eq!(
        balances(&app, &alice).await,
        ("100.00".into(), "5.00".into(), "95.00".into()),
        "the hold without expiry survived the restart"
    );
    let posted = app
        .post(
            &format!("/api/v1/transactions/{open}/post"),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(posted.status, 200, "{}", posted.text);
    assert_eq!(posted.body["status"], "posted");
    assert_eq!(
        balances(&app, &alice).await,
        ("95.00".into(), "0.00".into(), "95.00".into())
    );

    app.stop().await;
    let store = tally_actors::Store::connect(&db.url, 2).await.unwrap();
    assert_store_invariants(&store).await;
}

async fn a_frozen_source_keeps_its_hold_until_voided_and_cannot_post_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    app.fund(&admin, &alice, "50.00").await;
    let held = id_of(&hold(&app, &alice, bob.id, "20.00", json!({ "expires_in": 3600 })).await);

    let frozen = app
        .send(
            "PUT",
            &format!("/api/v1/accounts/{}/rules", alice.id),
            Some(&admin.token),
            Some(json!({ "status": "frozen" })),
        )
        .await;
    assert_eq!(frozen.status, 200, "{}", frozen.text);
    assert_eq!(frozen.body["status"], "frozen");
    assert_eq!(
        balances(&app, &alice).await,
        ("50.00".into(), "20.00".into(), "30.00".into()),
        "freezing keeps the hold"
    );
    let post = app
        .post(
            &format!("/api/v1/transactions/{held}/post"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    post.assert_problem(422, "account_frozen");
    let new_hold = hold(&app, &alice, bob.id, "1.00", json!({})).await;
    new_hold.assert_problem(422, "account_frozen");
    // Releasing moves no money, so a frozen account may be released from its hold.
    let void = app
        .post(
            &format!("/api/v1/transactions/{held}/void"),
            Some(&bob.token),
            json!({}),
        )
        .await;
    assert_eq!(void.status, 200, "{}", void.text);
    assert_eq!(
        balances(&app, &alice).await,
        ("50.00".into(), "0.00".into(), "50.00".into())
    );
    assert_eq!(app.balance(&bob).await, "0.00");

    // A hold to a frozen target is refused at once: it could never be posted.
    app.fund(&admin, &bob, "10.00").await;
    let to_frozen = hold(&app, &bob, alice.id, "1.00", json!({})).await;
    to_frozen.assert_problem(422, "account_frozen");
    assert_eq!(balances(&app, &bob).await.1, "0.00");

    let db = app.stop().await.unwrap();
    let store = tally_actors::Store::connect(&db.url, 2).await.unwrap();
    assert_store_invariants(&store).await;
}

async fn hold_requests_are_validated(backend: Backend) {
    let app = spawn_app(backend).await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    for (extra, field) in [
        (json!({ "expires_in": 0 }), "expires_in"),
        (json!({ "expires_in": 40 * 24 * 3600 }), "expires_in"),
        (json!({ "expires_at": "2001-01-01T00:00:00Z" }), "expires_at"),
        (json!({ "expires_at": "tomorrow" }), "expires_at"),
        (
            json!({ "expires_in": 60, "expires_at": "2999-01-01T00:00:00Z" }),
            "expires_at",
        ),
        (json!({ "pending": false, "expires_in": 60 }), "expires_in"),
    ] {
        let reply = hold(&app, &alice, bob.id, "1.00", extra.clone()).await;
        reply.assert_problem(422, "validation_failed");
        assert_eq!(reply.body["errors"][0]["field"], field, "{extra}: {}", reply.text);
    }
    let bad_amount = app
        .post(
            "/api/v1/transactions/0190c7a2-0000-7000-8000-000000000000/post",
            Some(&alice.token),
            json!({ "amount": "-1" }),
        )
        .await;
    bad_amount.assert_problem(422, "validation_failed");
    let bad_id = app
        .post("/api/v1/transactions/not-a-uuid/post", Some(&alice.token), json!({}))
        .await;
    bad_id.assert_problem(400, "invalid_parameter");
    let unknown_field = app
        .post(
            "/api/v1/transactions/0190c7a2-0000-7000-8000-000000000000/post",
            Some(&alice.token),
            json!({ "amount": "1.00", "extra": true }),
        )
        .await;
    unknown_field.assert_problem(422, "validation_failed");
    assert_eq!(unknown_field.body["errors"][0]["field"], "extra");
    app.stop().await;
}

on_both_stores!(
    a_partial_post_moves_part_and_releases_the_rest_and_a_void_releases_all,
    a_hold_expires_while_running_and_across_a_restart,
    a_frozen_source_keeps_its_hold_until_voided_and_cannot_post_it,
    hold_requests_are_validated,
);
