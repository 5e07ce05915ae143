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

on_both_stores!(every_endpoint_answers_each_kind_of_caller_as_it_should);
