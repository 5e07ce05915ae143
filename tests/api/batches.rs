//! Atomic batches and reversals through the API.

use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::helpers::{Backend, Reply, TestApp, TestUser, assert_store_invariants, spawn_app};
use crate::holds::{hold, id_of};
use crate::on_both_stores;

async fn keyed_post(app: &TestApp, user: &TestUser, path: &str, body: Value, key: Option<&str>) -> Reply {
    let mut request = app.client.post(app.url(path)).bearer_auth(&user.token).json(&body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    TestApp::read(request.send().await.unwrap()).await
}

fn transfer(from: i64, to: i64, amount: &str) -> Value {
    json!({ "type": "transfer", "from_user_id": from, "to_user_id": to, "amount": amount })
}

/// Every user's balance and history, as the admin reads them.
async fn snapshot(app: &TestApp, admin: &TestUser, users: &[&TestUser]) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    for user in users {
        let balance = app
            .get(&format!("/api/v1/balances/current/{}", user.id), Some(&admin.token))
            .await;
        let history = app
            .get(&format!("/api/v1/transactions/user/{}", user.id), Some(&admin.token))
            .await;
        seen.push((balance.text, history.text));
    }
    seen
}

async fn a_batch_applies_every_leg_or_none(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let carol = app.user("carol").await;
    app.fund(&admin, &alice, "100.00").await;
    app.fund(&admin, &bob, "10.00").await;

    // The last leg is refused: nothing of the batch shows anywhere.
    let before = snapshot(&app, &admin, &[&alice, &bob, &carol]).await;
    let failing = keyed_post(
        &app,
        &admin,
        "/api/v1/transactions/batch",
        json!({ "legs": [
            transfer(alice.id, bob.id, "40.00"),
            { "type": "credit", "user_id": carol.id, "amount": "5.00" },
            transfer(bob.id, carol.id, "10.01"),
        ]}),
        Some("batch-1"),
    )
    .await;
    failing.assert_problem(422, "insufficient_funds");
    let batch = &failing.body["batch"];
    assert_eq!(batch["status"], "failed");
    assert_eq!(batch["failed_leg"], 2);
    let reasons: Vec<&str> = batch["legs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|leg| leg["failure_reason"].as_str().unwrap())
        .collect();
    assert_eq!(reasons, ["batch_aborted", "batch_aborted", "insufficient_funds"]);
    assert_eq!(snapshot(&app, &admin, &[&alice, &bob, &carol]).await, before);
    // Its retry replays the refusal rather than running again.
    let retried = keyed_post(
        &app,
        &admin,
        "/api/v1/transactions/batch",
        json!({ "legs": [
            transfer(alice.id, bob.id, "40.00"),
            { "type": "credit", "user_id": carol.id, "amount": "5.00" },
            transfer(bob.id, carol.id, "10.01"),
        ]}),
        Some("batch-1"),
    )
    .await;
    retried.assert_problem(422, "insufficient_funds");
    assert_eq!(retried.body["batch"]["batch_id"], batch["batch_id"]);

    // Every leg applies, in one durable write; a retry replays it.
    let legs = json!({ "legs": [
        transfer(alice.id, bob.id, "40.00"),
        { "type": "credit", "user_id": carol.id, "amount": "5.00" },
        transfer(bob.id, carol.id, "10.00"),
        { "type": "debit", "user_id": alice.id, "amount": "1.00" },
    ]});
    let done = keyed_post(
        &app,
        &admin,
        "/api/v1/transactions/batch",
        legs.clone(),
        Some("batch-2"),
    )
    .await;
    assert_eq!(done.status, 201, "{}", done.text);
    assert_eq!(done.body["status"], "completed");
    assert!(done.body["failed_leg"].is_null());
    assert_eq!(done.body["legs"].as_array().unwrap().len(), 4);
    assert_eq!(done.body["legs"][2]["leg"], 2);
    assert_eq!(app.balance(&alice).await, "59.00");
    assert_eq!(app.balance(&bob).await, "40.00");
    assert_eq!(app.balance(&carol).await, "15.00");
    let again = keyed_post(&app, &admin, "/api/v1/transactions/batch", legs, Some("batch-2")).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(again.body, done.body);
    assert_eq!(app.balance(&alice).await, "59.00", "applied once");
    let other = keyed_post(
        &app,
        &admin,
        "/api/v1/transactions/batch",
        json!({ "legs": [transfer(alice.id, bob.id, "1.00")] }),
        Some("batch-2"),
    )
    .await;
    other.assert_problem(422, "idempotency_key_reused");
    // A single transfer cannot reuse a batch's key either.
    let single = keyed_post(
        &app,
        &admin,
        "/api/v1/transactions/transfer",
        json!({ "from_user_id": alice.id, "to_user_id": bob.id, "amount": "40.00" }),
        Some("batch-2"),
    )
    .await;
    single.assert_problem(422, "idempotency_key_reused");

    // A user moves only from their own account, and credits only as admin.
    keyed_post(
        &app,
        &alice,
        "/api/v1/transactions/batch",
        json!({ "legs": [transfer(alice.id, bob.id, "1.00"), transfer(bob.id, alice.id, "1.00")] }),
        None,
    )
    .await
    .assert_problem(403, "forbidden");
    keyed_post(
        &app,
        &alice,
        "/api/v1/transactions/batch",
        json!({ "legs": [{ "type": "credit", "user_id": alice.id, "amount": "1.00" }] }),
        None,
    )
    .await
    .assert_problem(403, "forbidden");
    let own = keyed_post(
        &app,
        &alice,
        "/api/v1/transactions/batch",
        json!({ "legs": [transfer(alice.id, bob.id, "1.00"), { "type": "debit", "user_id": alice.id, "amount": "2.00" }] }),
        None,
    )
    .await;
    assert_eq!(own.status, 201, "{}", own.text);

    // Malformed batches.
    for (body, field) in [
        (json!({ "legs": [] }), "legs"),
        (json!({ "legs": [transfer(alice.id, bob.id, "0")] }), "legs[0].amount"),
        (json!({ "legs": [transfer(alice.id, alice.id, "1.00")] }), "body"),
        (
            json!({ "legs": [{ "type": "swap", "user_id": 1, "amount": "1" }] }),
            "legs[0].type",
        ),
        (
            json!({ "legs": [{ "type": "debit", "amount": "1" }] }),
            "legs[0].user_id",
        ),
        (
            json!({ "legs": [{ "type": "credit", "user_id": 1, "to_user_id": 2, "amount": "1" }] }),
            "legs[0].to_user_id",
        ),
    ] {
        let reply = keyed_post(&app, &admin, "/api/v1/transactions/batch", body.clone(), None).await;
        assert_eq!(reply.status, 422, "{body}: {}", reply.text);
        if field != "body" {
            assert_eq!(reply.body["errors"][0]["field"], field, "{body}: {}", reply.text);
        }
    }
    let too_many: Vec<Value> = (0..101).map(|_| transfer(alice.id, bob.id, "0.01")).collect();
    let reply = keyed_post(
        &app,
        &admin,
        "/api/v1/transactions/batch",
        json!({ "legs": too_many }),
        None,
    )
    .await;
    reply.assert_problem(422, "validation_failed");

    let db = app.stop().await.unwrap();
    let store = tally_actors::Store::connect(&db.url, 2).await.unwrap();
    assert_store_invariants(&store).await;
}

async fn reversals_give_back_at_most_the_original_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    app.fund(&admin, &alice, "100.00").await;
    let paid = keyed_post(
        &app,
        &alice,
        "/api/v1/transactions/transfer",
        json!({ "from_user_id": alice.id, "to_user_id": bob.id, "amount": "50.00" }),
        None,
    )
    .await;
    let original = id_of(&paid);
    let reverse = |amount: Option<&str>| match amount {
        Some(amount) => json!({ "amount": amount }),
        None => json!({}),
    };
    let path = format!("/api/v1/transactions/{original}/reverse");

    // Only the account that received the money (or an admin) gives it back.
    keyed_post(&app, &alice, &path, reverse(None), None)
        .await
        .assert_problem(403, "forbidden");
    let partial = keyed_post(&app, &bob, &path, reverse(Some("20.00")), Some("refund-1")).await;
    assert_eq!(partial.status, 201, "{}", partial.text);
    assert_eq!(partial.body["type"], "reversal");
    assert_eq!(partial.body["reversal_of"], original.as_str());
    assert_eq!(partial.body["from_user_id"], bob.id);
    assert_eq!(partial.body["to_user_id"], alice.id);
    assert_eq!(app.balance(&alice).await, "70.00");
    let replay = keyed_post(&app, &bob, &path, reverse(Some("20.00")), Some("refund-1")).await;
    assert_eq!(replay.headers["idempotent-replayed"], "true");
    assert_eq!(replay.body, partial.body);
    keyed_post(&app, &bob, &path, reverse(None), None)
        .await
        .assert_problem(409, "reversal_exceeds_original");
    let rest = keyed_post(&app, &bob, &path, reverse(Some("30.00")), None).await;
    assert_eq!(rest.status, 201, "{}", rest.text);
    keyed_post(&app, &bob, &path, reverse(Some("0.01")), None)
        .await
        .assert_problem(409, "reversal_exceeds_original");
    assert_eq!(app.balance(&alice).await, "100.00");
    assert_eq!(app.balance(&bob).await, "0.00");

    // What moved no money, and reversals themselves, are not reversible.
    let refund = id_of(&rest);
    keyed_post(
        &app,
        &admin,
        &format!("/api/v1/transactions/{refund}/reverse"),
        reverse(None),
        None,
    )
    .await
    .assert_problem(409, "not_reversible");
    let refused = keyed_post(
        &app,
        &alice,
        "/api/v1/transactions/transfer",
        json!({ "from_user_id": alice.id, "to_user_id": bob.id, "amount": "1000.00" }),
        None,
    )
    .await;
    let failed = refused.body["transaction"]["id"].as_str().unwrap().to_string();
    keyed_post(
        &app,
        &admin,
        &format!("/api/v1/transactions/{failed}/reverse"),
        reverse(None),
        None,
    )
    .await
    .assert_problem(409, "not_reversible");
    let held = id_of(&hold(&app, &alice, bob.id, "5.00", json!({})).await);
    keyed_post(
        &app,
        &admin,
        &format!("/api/v1/transactions/{held}/reverse"),
        reverse(None),
        None,
    )
    .await
    .assert_problem(409, "not_reversible");
    keyed_post(
        &app,
        &alice,
        &format!("/api/v1/transactions/{held}/void"),
        json!({}),
        None,
    )
    .await;
    keyed_post(
        &app,
        &admin,
        &format!("/api/v1/transactions/{held}/reverse"),
        reverse(None),
        None,
    )
    .await
    .assert_problem(409, "not_reversible");
    // A reversal the target cannot pay is refused and recorded, and takes nothing.
    let paid = keyed_post(
        &app,
        &alice,
        "/api/v1/transactions/transfer",
        json!({ "from_user_id": alice.id, "to_user_id": bob.id, "amount": "10.00" }),
        None,
    )
    .await;
    app.post(
        "/api/v1/transactions/debit",
        Some(&bob.token),
        json!({ "user_id": bob.id, "amount": "10.00" }),
    )
    .await;
    let broke = keyed_post(
        &app,
        &bob,
        &format!("/api/v1/transactions/{}/reverse", id_of(&paid)),
        reverse(None),
        None,
    )
    .await;
    broke.assert_problem(422, "insufficient_funds");
    assert_eq!(broke.body["transaction"]["status"], "failed");

    // Twice at once: with different keys, exactly one applies; with one key, both
    // answers are the same reversal.
    let paid = keyed_post(
        &app,
        &alice,
        "/api/v1/transactions/transfer",
        json!({ "from_user_id": alice.id, "to_user_id": bob.id, "amount": "40.00" }),
        None,
    )
    .await;
    let path = format!("/api/v1/transactions/{}/reverse", id_of(&paid));
    let mut racing = JoinSet::new();
    for round in 0..8 {
        let (client, url, token, path) = (app.client.clone(), app.url(""), bob.token.clone(), path.clone());
        racing.spawn(async move {
            let key = if round < 4 {
                "same".to_string()
            } else {
                format!("key-{round}")
            };
            let response = client
                .post(format!("{url}{path}"))
                .bearer_auth(token)
                .header("idempotency-key", key)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            TestApp::read(response).await
        });
    }
    let mut applied = std::collections::HashSet::new();
    let mut exceeded = 0;
    while let Some(reply) = racing.join_next().await {
        let reply = reply.unwrap();
        match reply.status {
            201 => {
                applied.insert(reply.body["id"].as_str().unwrap().to_string());
            }
            409 => {
                reply.assert_problem(409, "reversal_exceeds_original");
                exceeded += 1;
            }
            other => panic!("unexpected {other}: {}", reply.text),
        }
    }
    assert_eq!(applied.len(), 1, "one reversal applied");
    assert!(exceeded >= 3, "the other keys were refused");
    assert_eq!(app.balance(&bob).await, "0.00");

    let db = app.stop().await.unwrap();
    let store = tally_actors::Store::connect(&db.url, 2).await.unwrap();
    assert_store_invariants(&store).await;
}

on_both_stores!(
    a_batch_applies_every_leg_or_none,
    reversals_give_back_at_most_the_original_once
);
