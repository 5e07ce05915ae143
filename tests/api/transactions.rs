//! Moving money through the API: outcomes, refusals, idempotency, history paging.

use serde_json::json;

use crate::helpers::{Backend, TestApp, TestUser, spawn_app};
use crate::on_both_stores;

async fn keyed_transfer(app: &TestApp, user: &TestUser, to: i64, amount: &str, key: &str) -> crate::helpers::Reply {
    let response = app
        .client
        .post(app.url("/api/v1/transactions/transfer"))
        .bearer_auth(&user.token)
        .header("idempotency-key", key)
        .json(&json!({ "from_user_id": user.id, "to_user_id": to, "amount": amount }))
        .send()
        .await
        .unwrap();
    TestApp::read(response).await
}

async fn a_transfer_returns_the_transaction_and_a_retry_replays_it_exactly(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    app.fund(&admin, &alice, "100.00").await;

    let first = keyed_transfer(&app, &alice, bob.id, "12.34", "order-1").await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert_eq!(first.body["type"], "transfer");
    assert_eq!(first.body["status"], "completed");
    assert_eq!(first.body["amount"], "12.34");
    assert_eq!(first.body["from_user_id"], alice.id);
    assert_eq!(first.body["to_user_id"], bob.id);
    assert_eq!(first.body["from_balance_after"], "87.66");
    assert!(
        first.body["to_balance_after"].is_null(),
        "alice does not see bob's balance"
    );
    assert!(first.headers.get("idempotent-replayed").is_none());

    let retry = keyed_transfer(&app, &alice, bob.id, "12.34", "order-1").await;
    assert_eq!(retry.status, 201);
    assert_eq!(retry.text, first.text, "the identical body");
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(app.balance(&alice).await, "87.66", "applied once");

    let conflict = keyed_transfer(&app, &alice, bob.id, "12.35", "order-1").await;
    conflict.assert_problem(422, "idempotency_key_reused");
    // Keys belong to their user: bob's "order-1" is his own.
    let bobs = keyed_transfer(&app, &bob, alice.id, "1.00", "order-1").await;
    assert_eq!(bobs.status, 201, "{}", bobs.text);

    // A refusal is an outcome too: recorded, answered 422 with the transaction, and
    // replayed the same way.
    let refused = keyed_transfer(&app, &alice, bob.id, "1000.00", "order-2").await;
    refused.assert_problem(422, "insufficient_funds");
    assert_eq!(refused.body["transaction"]["status"], "failed");
    assert_eq!(refused.body["transaction"]["failure_reason"], "insufficient_funds");
    let replayed = keyed_transfer(&app, &alice, bob.id, "1000.00", "order-2").await;
    replayed.assert_problem(422, "insufficient_funds");
    assert_eq!(replayed.body["transaction"], refused.body["transaction"]);
    let by_id = app
        .get(
            &format!(
                "/api/v1/transactions/{}",
                refused.body["transaction"]["id"].as_str().unwrap()
            ),
            Some(&alice.token),
        )
        .await;
    assert_eq!(by_id.body, refused.body["transaction"]);
    app.stop().await;
}

async fn history_filters_and_pages_without_gaps_or_duplicates(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    app.fund(&admin, &alice, "50.00").await;
    for round in 0..7 {
        let reply = app
            .post(
                "/api/v1/transactions/transfer",
                Some(&alice.token),
                json!({ "from_user_id": alice.id, "to_user_id": bob.id, "amount": format!("1.0{round}") }),
            )
            .await;
        assert_eq!(reply.status, 201);
    }
    app.post(
        "/api/v1/transactions/debit",
        Some(&alice.token),
        json!({ "user_id": alice.id, "amount": "999" }),
    )
    .await
    .assert_problem(422, "insufficient_funds");

    let everything = app
        .get("/api/v1/transactions/history?limit=200", Some(&alice.token))
        .await;
    let all: Vec<String> = everything.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(all.len(), 1 + 7 + 1, "credit, seven transfers, one failed debit");
    assert!(everything.body["next_cursor"].is_null());
    assert_eq!(everything.body["items"][0]["status"], "failed", "newest first");

    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/api/v1/transactions/history?limit=4&cursor={cursor}"),
            None => "/api/v1/transactions/history?limit=4".to_string(),
        };
        let page = app.get(&path, Some(&alice.token)).await;
        assert_eq!(page.status, 200, "{}", page.text);
        paged.extend(
            page.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_string()),
        );
        match page.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(paged, all, "pages concatenate to the whole history");

    let count = |path: &str| {
        let app = &app;
        let token = alice.token.clone();
        let path = path.to_string();
        async move {
            app.get(&path, Some(&token)).await.body["items"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    assert_eq!(count("/api/v1/transactions/history?type=transfer").await, 7);
    assert_eq!(count("/api/v1/transactions/history?type=credit").await, 1);
    assert_eq!(count("/api/v1/transactions/history?status=failed").await, 1);
    assert_eq!(
        count(&format!("/api/v1/transactions/history?counterparty={}", bob.id)).await,
        7
    );
    assert_eq!(
        count("/api/v1/transactions/history?from=2000-01-01T00:00:00Z&to=2001-01-01T00:00:00Z").await,
        0
    );
    // Bob's history holds only what reached him, and the admin can read it.
    let bobs = app
        .get(&format!("/api/v1/transactions/user/{}", bob.id), Some(&admin.token))
        .await;
    assert_eq!(bobs.body["items"].as_array().unwrap().len(), 7);
    app.stop().await;
}

on_both_stores!(
    a_transfer_returns_the_transaction_and_a_retry_replays_it_exactly,
    history_filters_and_pages_without_gaps_or_duplicates,
);
