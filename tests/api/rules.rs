//! Per-account rules through the API: daily cap (exactly at the boundary, holds
//! counted), overdraft limit, maximum balance, status; admin only, audited.

use serde_json::{Value, json};

use crate::helpers::{Backend, Reply, TestApp, TestUser, assert_store_invariants, spawn_app};
use crate::holds::{balances, hold, id_of};
use crate::on_both_stores;

async fn put_rules(app: &TestApp, caller: &TestUser, user: i64, body: Value) -> Reply {
    app.send(
        "PUT",
        &format!("/api/v1/accounts/{user}/rules"),
        Some(&caller.token),
        Some(body),
    )
    .await
}

async fn debit(app: &TestApp, user: &TestUser, amount: &str) -> Reply {
    app.post(
        "/api/v1/transactions/debit",
        Some(&user.token),
        json!({ "user_id": user.id, "amount": amount }),
    )
    .await
}

async fn a_daily_cap_allows_exactly_the_cap_counting_holds(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    app.fund(&admin, &alice, "500.00").await;

    let set = put_rules(&app, &admin, alice.id, json!({ "daily_debit_cap": "50.00" })).await;
    assert_eq!(set.status, 200, "{}", set.text);
    assert_eq!(set.body["daily_debit_cap"], "50.00");
    assert_eq!(set.body["overdraft_limit"], "0.00");
    assert!(set.body["max_balance"].is_null());

    assert_eq!(debit(&app, &alice, "30.00").await.status, 201);
    let held = hold(&app, &alice, bob.id, "20.00", json!({})).await;
    assert_eq!(held.status, 201, "a hold counts against the cap: {}", held.text);
    // 30 + 20 = 50: exactly the cap. One cent more is refused, by debit, hold or transfer.
    debit(&app, &alice, "0.01").await.assert_problem(422, "over_daily_cap");
    hold(&app, &alice, bob.id, "0.01", json!({}))
        .await
        .assert_problem(422, "over_daily_cap");
    let transfer = app
        .post(
            "/api/v1/transactions/transfer",
            Some(&alice.token),
            json!({ "from_user_id": alice.id, "to_user_id": bob.id, "amount": "0.01" }),
        )
        .await;
    transfer.assert_problem(422, "over_daily_cap");
    let rules = app
        .get(&format!("/api/v1/accounts/{}/rules", alice.id), Some(&alice.token))
        .await;
    assert_eq!(rules.status, 200, "{}", rules.text);
    assert_eq!(rules.body["debited_today"], "50.00");

    // A hold released the day it was placed gives its amount back to the day.
    let void = app
        .post(
            &format!("/api/v1/transactions/{}/void", id_of(&held)),
            Some(&alice.token),
            json!({}),
        )
        .await;
    assert_eq!(void.status, 200, "{}", void.text);
    assert_eq!(debit(&app, &alice, "20.00").await.status, 201);
    debit(&app, &alice, "0.01").await.assert_problem(422, "over_daily_cap");
    // Money coming in is not capped.
    app.fund(&admin, &alice, "1.00").await;
    // Lifting the cap lifts the refusal.
    let lifted = put_rules(&app, &admin, alice.id, json!({ "daily_debit_cap": null })).await;
    assert_eq!(lifted.status, 200, "{}", lifted.text);
    assert_eq!(debit(&app, &alice, "0.01").await.status, 201);

    let db = app.stop().await.unwrap();
    let store = tally_actors::Store::connect(&db.url, 2).await.unwrap();
    let audit = store.audit_entries("account", &alice.id.to_string()).await.unwrap();
    let changes: Vec<&str> = audit.iter().map(|entry| entry.action.as_str()).collect();
    assert_eq!(changes, ["rules_changed", "rules_changed"], "every change audited");
    assert_eq!(audit[0].actor_user_id, Some(admin.id));
    assert_eq!(audit[0].details["to"]["daily_debit_cap"], 5000);
    assert!(audit[0].request_id.is_some());
    assert_store_invariants(&store).await;
}

async fn overdraft_and_maximum_balance_are_enforced_by_the_account(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;

    let set = put_rules(&app, &admin, alice.id, json!({ "overdraft_limit": "25.00" })).await;
    assert_eq!(set.status, 200, "{}", set.text);
    assert_eq!(
        balances(&app, &alice).await,
        ("0.00".into(), "0.00".into(), "25.00".into())
    );
    assert_eq!(debit(&app, &alice, "20.00").await.status, 201);
    let hold = hold(&app, &alice, bob.id, "5.00", json!({})).await;
    assert_eq!(hold.status, 201, "{}", hold.text);
    assert_eq!(
        balances(&app, &alice).await,
        ("-20.00".into(), "5.00".into(), "0.00".into())
    );
    debit(&app, &alice, "0.01")
        .await
        .assert_problem(422, "over_overdraft_limit");

    let capped = put_rules(&app, &admin, bob.id, json!({ "max_balance": 100 })).await;
    assert_eq!(capped.status, 200, "{}", capped.text);
    app.fund(&admin, &bob, "99.00").await;
    let over = app
        .post(
            "/api/v1/transactions/credit",
            Some(&admin.token),
            json!({ "user_id": bob.id, "amount": "1.01" }),
        )
        .await;
    over.assert_problem(422, "over_max_balance");
    // The hold's post would take bob past his maximum: the capture is refunded.
    let posted = app
        .post(
            &format!("/api/v1/transactions/{}/post", id_of(&hold)),
            Some(&bob.token),
            json!({}),
        )
        .await;
    posted.assert_problem(422, "over_max_balance");
    assert_eq!(posted.body["transaction"]["status"], "rolled_back");
    assert_eq!(
        balances(&app, &alice).await,
        ("-20.00".into(), "0.00".into(), "5.00".into())
    );
    app.fund(&admin, &bob, "1.00").await;
    assert_eq!(app.balance(&bob).await, "100.00", "exactly the maximum");

    let db = app.stop().await.unwrap();
    let store = tally_actors::Store::connect(&db.url, 2).await.unwrap();
    assert_store_invariants(&store).await;
}

async fn only_admins_change_rules_and_bad_rules_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;

    put_rules(&app, &alice, alice.id, json!({ "overdraft_limit": "1000.00" }))
        .await
        .assert_problem(403, "forbidden");
    app.get(&format!("/api/v1/accounts/{}/rules", bob.id), Some(&alice.token))
        .await
        .assert_problem(403, "forbidden");
    for (body, field) in [
        (json!({ "overdraft_limit": "-1" }), "overdraft_limit"),
        (json!({ "max_balance": "1.234" }), "max_balance"),
        (json!({ "daily_debit_cap": 0 }), "daily_debit_cap"),
        (json!({ "status": "sleeping" }), "status"),
        (json!({ "limit": 1 }), "limit"),
    ] {
        let reply = put_rules(&app, &admin, alice.id, body.clone()).await;
        reply.assert_problem(422, "validation_failed");
        assert_eq!(reply.body["errors"][0]["field"], field, "{body}: {}", reply.text);
    }
    put_rules(&app, &admin, 999_999, json!({ "overdraft_limit": 1 }))
        .await
        .assert_problem(404, "user_not_found");
    app.fund(&admin, &alice, "1.00").await;
    put_rules(&app, &admin, alice.id, json!({ "status": "closed" }))
        .await
        .assert_problem(409, "account_not_empty");
    let closed = put_rules(&app, &admin, bob.id, json!({ "status": "closed" })).await;
    assert_eq!(closed.status, 200, "{}", closed.text);
    put_rules(&app, &admin, bob.id, json!({ "max_balance": 1 }))
        .await
        .assert_problem(422, "status_change_refused");
    app.stop().await;
}

on_both_stores!(
    a_daily_cap_allows_exactly_the_cap_counting_holds,
    overdraft_and_maximum_balance_are_enforced_by_the_account,
    only_admins_change_rules_and_bad_rules_are_refused,
);
