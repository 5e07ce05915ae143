//! The authorization matrix: for every endpoint, what an anonymous caller, the user
//! themself, another user and an admin get. No user reads or moves another's money.

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, TestUser, spawn_app};
use crate::on_both_stores;

/// Who calls.
#[derive(Clone, Copy, Debug)]
enum Caller {
    Anonymous,
    Subject,
    Other,
    Admin,
}

struct Case {
    method: &'static str,
    path: String,
    body: Option<Value>,
    /// Expected statuses for anonymous, the subject, another user, an admin.
    expected: [u16; 4],
}

async fn call(app: &TestApp, case: &Case, caller: Caller, users: &[&TestUser; 3]) -> (u16, String) {
    let token = match caller {
        Caller::Anonymous => None,
        Caller::Subject => Some(users[0].token.as_str()),
        Caller::Other => Some(users[1].token.as_str()),
        Caller::Admin => Some(users[2].token.as_str()),
    };
    let reply = app.send(case.method, &case.path, token, case.body.clone()).await;
    if reply.status >= 400 {
        assert!(
            reply.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/problem+json"),
            "{} {} as {caller:?}: {}",
            case.method,
            case.path,
            reply.text
        );
    }
    (reply.status, reply.text)
}

async fn every_endpoint_answers_each_kind_of_caller_as_it_should(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    let subject = app.user("subject").await;
    let other = app.user("other").await;
    app.fund(&admin, &subject, "1000.00").await;
    app.fund(&admin, &other, "1000.00").await;
    let credit = app
        .post(
            "/api/v1/transactions/credit",
            Some(&admin.token),
            json!({ "user_id": subject.id, "amount": "5" }),
        )
        .await;
    let subject_transaction = credit.body["id"].as_str().unwrap().to_string();
    let s = subject.id;
    let o = other.id;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let cases = vec![
        Case {
            method: "GET",
            path: "/api/v1/users".into(),
            body: None,
            expected: [401, 403, 403, 200],
        },
        Case {
            method: "GET",
            path: format!("/api/v1/users/{s}"),
            body: None,
            expected: [401, 200, 403, 200],
        },
        Case {
            method: "PUT",
            path: format!("/api/v1/users/{s}"),
            body: Some(json!({ "email": "subject.new@example.com" })),
            expected: [401, 200, 403, 200],
        },
        Case {
            method: "POST",
            path: "/api/v1/transactions/credit".into(),
            body: Some(json!({ "user_id": s, "amount": "1.00" })),
            expected: [401, 403, 403, 201],
        },
        Case {
            method: "POST",
            path: "/api/v1/transactions/debit".into(),
            body: Some(json!({ "user_id": s, "amount": "1.00" })),
            expected: [401, 201, 403, 201],
        },
        Case {
            method: "POST",
            path: "/api/v1/transactions/transfer".into(),
            body: Some(json!({ "from_user_id": s, "to_user_id": o, "amount": "1.00" })),
            expected: [401, 201, 403, 201],
        },
        Case {
            method: "GET",
            path: format!("/api/v1/transactions/{subject_transaction}"),
            body: None,
            expected: [401, 200, 404, 200],
        },
        Case {
            method: "GET",
            path: "/api/v1/transactions/history".into(),
            body: None,
            expected: [401, 200, 200, 200],
        },
        Case {
            method: "GET",
            path: format!("/api/v1/transactions/user/{s}"),
            body: None,
            expected: [401, 200, 403, 200],
        },
        Case {
            method: "GET",
            path: "/api/v1/balances/current".into(),
            body: None,
            expected: [401, 200, 200, 200],
        },
        Case {
            method: "GET",
            path: format!("/api/v1/balances/current/{s}"),
            body: None,
            expected: [401, 200, 403, 200],
        },
        Case {
            method: "GET",
            path: "/api/v1/balances/historical".into(),
            body: None,
            expected: [401, 200, 200, 200],
        },
        Case {
            method: "GET",
            path: format!("/api/v1/balances/historical/{s}"),
            body: None,
            expected: [401, 200, 403, 200],
        },
        Case {
            method: "GET",
            path: format!("/api/v1/balances/at-time?time={now}"),
            body: None,
            expected: [401, 200, 200, 200],
        },
        Case {
            method: "GET",
            path: format!("/api/v1/balances/at-time/{s}?time={now}"),
            body: None,
            expected: [401, 200, 403, 200],
        },
        Case {
            method: "GET",
            path: "/api/v1/admin/actors".into(),
            body: None,
            expected: [401, 403, 403, 200],
        },
        Case {
            method: "GET",
            path: "/api/v1/admin/persister".into(),
            body: None,
            expected: [401, 403, 403, 200],
        },
        Case {
            method: "GET",
            path: "/healthz".into(),
            body: None,
            expected: [200, 200, 200, 200],
        },
        Case {
            method: "GET",
            path: "/readyz".into(),
            body: None,
            expected: [200, 200, 200, 200],
        },
        Case {
            method: "GET",
            path: "/api/v1/test/health".into(),
            body: None,
            expected: [200, 200, 200, 200],
        },
        Case {
            method: "GET",
            path: "/api/v1/openapi.json".into(),
            body: None,
            expected: [200, 200, 200, 200],
        },
        // Last: it retires the subject's tokens.
        Case {
            method: "PUT",
            path: format!("/api/v1/users/{s}"),
            body: Some(json!({ "role": "admin" })),
            expected: [401, 403, 403, 200],
        },
    ];
    let users = [&subject, &other, &admin];
    for case in &cases {
        for (caller, expected) in [Caller::Anonymous, Caller::Subject, Caller::Other, Caller::Admin]
            .into_iter()
            .zip(case.expected)
        {
            let (status, text) = call(&app, case, caller, &users).await;
            assert_eq!(status, expected, "{} {} as {caller:?}: {text}", case.method, case.path);
        }
    }
    // The subject's role changed above: its old token no longer works; log in again.
    let subject = TestUser {
        token: app.login("subject", crate::helpers::PASSWORD).await.body["access_token"]
            .as_str()
            .unwrap()
            .to_string(),
        ..subject
    };

    // Another user's history never shows the subject's own movements.
    let history = app.get("/api/v1/transactions/history", Some(&other.token)).await;
    let ids: Vec<&str> = history.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert!(!ids.contains(&subject_transaction.as_str()));
    // And a counterparty sees only its own side's balance.
    let transfer = app
        .post(
            "/api/v1/transactions/transfer",
            Some(&subject.token),
            json!({ "from_user_id": subject.id, "to_user_id": other.id, "amount": "2.00" }),
        )
        .await;
    let seen_by_other = app
        .get(
            &format!("/api/v1/transactions/{}", transfer.body["id"].as_str().unwrap()),
            Some(&other.token),
        )
        .await;
    assert_eq!(seen_by_other.status, 200);
    assert!(
        seen_by_other.body["from_balance_after"].is_null(),
        "{}",
        seen_by_other.text
    );
    assert!(seen_by_other.body["to_balance_after"].is_string());

    // Deleting: not someone else's user, and only an empty account.
    let leaver = app.user("leaver").await;
    app.send("DELETE", &format!("/api/v1/users/{}", leaver.id), None, None)
        .await
        .assert_problem(401, "unauthenticated");
    app.send(
        "DELETE",
        &format!("/api/v1/users/{}", leaver.id),
        Some(&other.token),
        None,
    )
    .await
    .assert_problem(403, "forbidden");
    app.send(
        "DELETE",
        &format!("/api/v1/users/{}", other.id),
        Some(&admin.token),
        None,
    )
    .await
    .assert_problem(409, "account_not_empty");
    let deleted = app
        .send(
            "DELETE",
            &format!("/api/v1/users/{}", leaver.id),
            Some(&leaver.token),
            None,
        )
        .await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    app.get("/api/v1/balances/current", Some(&leaver.token))
        .await
        .assert_problem(401, "unauthenticated");
    app.get(&format!("/api/v1/users/{}", leaver.id), Some(&admin.token))
        .await
        .assert_problem(404, "user_not_found");
    // Money sent to a deleted user's closed account comes back.
    let refused = app
        .post(
            "/api/v1/transactions/transfer",
            Some(&other.token),
            json!({ "from_user_id": other.id, "to_user_id": leaver.id, "amount": "1.00" }),
        )
        .await;
    refused.assert_problem(422, "account_closed");
    assert_eq!(refused.body["transaction"]["status"], "rolled_back");
    let audit = app
        .engine
        .store()
        .audit_entries("user", &leaver.id.to_string())
        .await
        .unwrap();
    assert_eq!(audit.last().unwrap().action, "deleted");
    app.stop().await;
}

/// An admin moving money that is not only their own (a credit, a debit or transfer from
/// someone's account, a reversal, a batch) leaves an audit row naming them and the
/// request, written with the movement; a user's own transfers, and an admin's from
/// their own account, are audited by the journal alone.
async fn administrative_money_actions_are_audited(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let audit_of = |reply: &crate::helpers::Reply| {
        let id = reply.body["id"].as_str().expect("a transaction id").to_string();
        let store = app.engine.store().clone();
        async move { store.audit_entries("transaction", &id).await.unwrap() }
    };
    let credit = app
        .send(
            "POST",
            "/api/v1/transactions/credit",
            Some(&admin.token),
            Some(json!({ "user_id": alice.id, "amount": "50.00" })),
        )
        .await;
    assert_eq!(credit.status, 201, "{}", credit.text);
    let entries = audit_of(&credit).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].action, "credit");
    assert_eq!(entries[0].actor_user_id, Some(admin.id));
    assert_eq!(
        entries[0].request_id.as_deref(),
        credit.headers["x-request-id"].to_str().ok()
    );
    assert_eq!(entries[0].details["amount_minor"], 5000);
    assert_eq!(entries[0].details["status"], "completed");

    let taken = json!({ "from_user_id": alice.id, "to_user_id": bob.id, "amount": "10.00" });
    let by_admin = app
        .post("/api/v1/transactions/transfer", Some(&admin.token), taken.clone())
        .await;
    assert_eq!(by_admin.status, 201, "{}", by_admin.text);
    assert_eq!(audit_of(&by_admin).await[0].action, "transfer");
    // Refused, still audited: the attempt is the administrative action.
    let too_much = json!({ "user_id": bob.id, "amount": "999.00" });
    let refused = app
        .post("/api/v1/transactions/debit", Some(&admin.token), too_much)
        .await;
    refused.assert_problem(422, "insufficient_funds");
    let refused_entries = {
        let id = refused.body["transaction"]["id"].as_str().unwrap().to_string();
        app.engine.store().audit_entries("transaction", &id).await.unwrap()
    };
    assert_eq!(refused_entries.len(), 1);
    assert_eq!(refused_entries[0].details["failure_reason"], "insufficient_funds");

    let own = app
        .post("/api/v1/transactions/transfer", Some(&alice.token), taken)
        .await;
    assert_eq!(own.status, 201, "{}", own.text);
    assert!(
        audit_of(&own).await.is_empty(),
        "a user's own transfer is in the journal only"
    );
    let reversed = app
        .send(
            "POST",
            &format!("/api/v1/transactions/{}/reverse", own.body["id"].as_str().unwrap()),
            Some(&admin.token),
            None,
        )
        .await;
    assert_eq!(reversed.status, 201, "{}", reversed.text);
    assert_eq!(audit_of(&reversed).await[0].action, "reversal");

    let batch = app
        .post(
            "/api/v1/transactions/batch",
            Some(&admin.token),
            json!({ "legs": [
                { "type": "transfer", "from_user_id": alice.id, "to_user_id": bob.id, "amount": "1.00" },
                { "type": "credit", "user_id": bob.id, "amount": "2.00" },
            ] }),
        )
        .await;
    assert_eq!(batch.status, 201, "{}", batch.text);
    for leg in batch.body["legs"].as_array().unwrap() {
        let id = leg["id"].as_str().unwrap();
        let entries = app.engine.store().audit_entries("transaction", id).await.unwrap();
        assert_eq!(entries.len(), 1, "every leg of an admin's batch: {entries:?}");
    }
    // Holds: placed, posted and voided by an admin, each step audited on the hold.
    let mut hold_ids = Vec::new();
    for _ in 0..2 {
        let hold = json!({ "from_user_id": alice.id, "to_user_id": bob.id, "amount": "3.00", "pending": true });
        let placed = app
            .post("/api/v1/transactions/transfer", Some(&admin.token), hold)
            .await;
        assert_eq!(placed.status, 201, "{}", placed.text);
        hold_ids.push(placed.body["id"].as_str().unwrap().to_string());
    }
    for (id, step) in hold_ids.iter().zip(["post", "void"]) {
        let settled = app
            .send(
                "POST",
                &format!("/api/v1/transactions/{id}/{step}"),
                Some(&admin.token),
                None,
            )
            .await;
        assert_eq!(settled.status, 200, "{}", settled.text);
    }
    let beyond = json!({ "from_user_id": alice.id, "to_user_id": bob.id, "amount": "900.00", "pending": true });
    let refused_hold = app
        .post("/api/v1/transactions/transfer", Some(&admin.token), beyond)
        .await;
    refused_hold.assert_problem(422, "insufficient_funds");
    let id = refused_hold.body["transaction"]["id"].as_str().unwrap();
    let entries = app.engine.store().audit_entries("transaction", id).await.unwrap();
    assert_eq!(
        entries[0].action, "hold_placed",
        "a refused hold is still a hold: {entries:?}"
    );
    for (id, settled) in hold_ids.iter().zip(["hold_posted", "hold_voided"]) {
        let entries = app.engine.store().audit_entries("transaction", id).await.unwrap();
        let actions: Vec<&str> = entries.iter().map(|entry| entry.action.as_str()).collect();
        assert_eq!(actions, ["hold_placed", settled]);
    }
    // An admin's transfer from their own account is not an administrative action.
    let funded = json!({ "user_id": admin.id, "amount": "5.00" });
    assert_eq!(
        app.post("/api/v1/transactions/credit", Some(&admin.token), funded)
            .await
            .status,
        201
    );
    let from_own = json!({ "from_user_id": admin.id, "to_user_id": bob.id, "amount": "1.00" });
    let from_own = app
        .post("/api/v1/transactions/transfer", Some(&admin.token), from_own)
        .await;
    assert_eq!(from_own.status, 201, "{}", from_own.text);
    assert!(audit_of(&from_own).await.is_empty());
    app.stop().await;
}

/// The admins' actors view names the accounts that were busiest in the last whole
/// second and counts the open holds.
async fn the_actors_view_ranks_by_message_rate_and_counts_open_holds(backend: Backend) {
    let app = spawn_app(backend).await;
    let admin = app.admin().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    app.fund(&admin, &alice, "100.00").await;
    let hold = json!({ "from_user_id": alice.id, "to_user_id": bob.id, "amount": "1.00", "pending": true });
    let placed = app
        .post("/api/v1/transactions/transfer", Some(&alice.token), hold)
        .await;
    assert_eq!(placed.status, 201, "{}", placed.text);
    for _ in 0..5 {
        let taken = json!({ "from_user_id": alice.id, "to_user_id": bob.id, "amount": "1.00" });
        assert_eq!(
            app.post("/api/v1/transactions/transfer", Some(&alice.token), taken)
                .await
                .status,
            201
        );
    }
    // Into the next second: the one the last transfer ran in is then the last whole one.
    let now = chrono::Utc::now().timestamp_subsec_millis() as u64;
    tokio::time::sleep(std::time::Duration::from_millis(1_000 - now + 20)).await;
    let view = app.get("/api/v1/admin/actors", Some(&admin.token)).await;
    assert_eq!(view.status, 200, "{}", view.text);
    assert_eq!(view.body["open_holds"], 1, "{}", view.body);
    let by_rate = view.body["busiest_by_rate"].as_array().unwrap();
    let ranked: Vec<i64> = by_rate.iter().map(|actor| actor["user_id"].as_i64().unwrap()).collect();
    assert!(ranked.contains(&alice.id), "{}", view.body);
    assert!(
        by_rate
            .iter()
            .all(|actor| actor["messages_per_second"].as_u64().unwrap() > 0),
        "{}",
        view.body
    );
    let id = placed.body["id"].as_str().unwrap();
    let voided = app
        .send(
            "POST",
            &format!("/api/v1/transactions/{id}/void"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(voided.status, 200, "{}", voided.text);
    let view = app.get("/api/v1/admin/actors", Some(&admin.token)).await;
    assert_eq!(view.body["open_holds"], 0, "{}", view.body);
    app.stop().await;
}

on_both_stores!(
    every_endpoint_answers_each_kind_of_caller_as_it_should,
    administrative_money_actions_are_audited,
    the_actors_view_ranks_by_message_rate_and_counts_open_holds,
);
