//! Historical and at-time balances agree with the journal for a scripted sequence.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use serde_json::json;

use crate::helpers::{Backend, spawn_app};
use crate::on_both_stores;

fn at(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

async fn historical_and_at_time_balances_follow_the_journal(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let before_anything = Utc::now();
    app.fund(&admin, &bob, "10.00").await;

    // (request, expected balance of alice after it)
    let script = vec![
        (
            "/api/v1/transactions/credit",
            admin.token.clone(),
            json!({ "user_id": alice.id, "amount": "100.00" }),
            "100.00",
        ),
        (
            "/api/v1/transactions/debit",
            alice.token.clone(),
            json!({ "user_id": alice.id, "amount": "30.00" }),
            "70.00",
        ),
        (
            "/api/v1/transactions/transfer",
            alice.token.clone(),
            json!({ "from_user_id": alice.id, "to_user_id": bob.id, "amount": "20.50" }),
            "49.50",
        ),
        (
            "/api/v1/transactions/transfer",
            bob.token.clone(),
            json!({ "from_user_id": bob.id, "to_user_id": alice.id, "amount": "5.25" }),
            "54.75",
        ),
    ];
    let mut moments = Vec::new();
    for (path, token, body, balance) in &script {
        let reply = app.post(path, Some(token), body.clone()).await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        let created: DateTime<Utc> = reply.body["created_at"].as_str().unwrap().parse().unwrap();
        moments.push((created, *balance, reply.body["id"].as_str().unwrap().to_string()));
    }
    // A refused debit moves nothing and is not a journal entry.
    app.post(
        "/api/v1/transactions/debit",
        Some(&alice.token),
        json!({ "user_id": alice.id, "amount": "1000" }),
    )
    .await
    .assert_problem(422, "insufficient_funds");

    let journal = app.get("/api/v1/balances/historical", Some(&alice.token)).await;
    assert_eq!(journal.status, 200, "{}", journal.text);
    let entries = journal.body["items"].as_array().unwrap();
    assert_eq!(entries.len(), 4);
    let expected = [
        ("5.25", "54.75", 4),
        ("-20.50", "49.50", 3),
        ("-30.00", "70.00", 2),
        ("100.00", "100.00", 1),
    ];
    for (entry, (amount, balance, version)) in entries.iter().zip(expected) {
        assert_eq!(entry["amount"], amount, "{entry}");
        assert_eq!(entry["balance_after"], balance, "{entry}");
        assert_eq!(entry["version"], version, "{entry}");
    }
    assert_eq!(entries[0]["counterparty_user_id"], bob.id);
    assert!(
        entries[3]["counterparty_user_id"].is_null(),
        "credits come from outside"
    );

    // The journal in the store says the same.
    let stored = app
        .engine
        .store()
        .journal(tally_actors::AccountId::new(alice.id).unwrap(), None, 10)
        .await
        .unwrap();
    assert_eq!(stored.len(), 4);
    assert_eq!(stored[0].balance_after, 54_75);

    let balance_at = |time: String| {
        let app = &app;
        let token = alice.token.clone();
        async move {
            let reply = app
                .get(
                    &format!("/api/v1/balances/at-time?time={}", time.replace('+', "%2B")),
                    Some(&token),
                )
                .await;
            assert_eq!(reply.status, 200, "{}", reply.text);
            reply.body
        }
    };
    let first = balance_at(at(before_anything)).await;
    assert_eq!(
        (first["balance"].as_str(), first["version"].as_u64()),
        (Some("0.00"), Some(0))
    );
    assert!(first["transaction_id"].is_null());
    let mut previous = "0.00";
    for (created, balance, id) in &moments {
        let just_before = balance_at(at(*created - Duration::microseconds(1))).await;
        assert_eq!(just_before["balance"], previous, "just before {id}");
        let exactly = balance_at(at(*created)).await;
        assert_eq!(exactly["balance"], *balance, "at {id}");
        assert_eq!(exactly["transaction_id"], id.as_str());
        previous = balance;
    }
    let now = balance_at(at(Utc::now())).await;
    assert_eq!(now["balance"], "54.75");
    assert_eq!(app.balance(&alice).await, "54.75");
    // Times with an offset mean the same instant.
    let (created, balance, _) = &moments[1];
    let shifted = created.with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).unwrap());
    let offset = balance_at(shifted.to_rfc3339_opts(SecondsFormat::Micros, false)).await;
    assert_eq!(offset["balance"], *balance);
    app.stop().await;
}

on_both_stores!(historical_and_at_time_balances_follow_the_journal);
