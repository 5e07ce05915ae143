//! The OpenAPI document is true to the server: every route is in it, every documented
//! operation exists, and responses validate against the documented schemas.

use serde_json::{Value, json};

use crate::helpers::{Backend, Reply, TestApp, spawn_app};
use crate::on_both_stores;

/// Every operation the server serves.
const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/api/v1/test/health"),
    ("get", "/api/v1/openapi.json"),
    ("post", "/api/v1/auth/register"),
    ("post", "/api/v1/auth/login"),
    ("post", "/api/v1/auth/refresh"),
    ("post", "/api/v1/auth/logout"),
    ("get", "/api/v1/users"),
    ("get", "/api/v1/users/{id}"),
    ("put", "/api/v1/users/{id}"),
    ("delete", "/api/v1/users/{id}"),
    ("post", "/api/v1/transactions/credit"),
    ("post", "/api/v1/transactions/debit"),
    ("post", "/api/v1/transactions/transfer"),
    ("post", "/api/v1/transactions/batch"),
    ("post", "/api/v1/transactions/{id}/post"),
    ("post", "/api/v1/transactions/{id}/void"),
    ("post", "/api/v1/transactions/{id}/reverse"),
    ("get", "/api/v1/transactions/history"),
    ("get", "/api/v1/transactions/user/{user_id}"),
    ("get", "/api/v1/transactions/{id}"),
    ("get", "/api/v1/balances/current"),
    ("get", "/api/v1/balances/current/{user_id}"),
    ("get", "/api/v1/balances/historical"),
    ("get", "/api/v1/balances/historical/{user_id}"),
    ("get", "/api/v1/balances/at-time"),
    ("get", "/api/v1/balances/at-time/{user_id}"),
    ("get", "/api/v1/accounts/{user_id}/rules"),
    ("put", "/api/v1/accounts/{user_id}/rules"),
    ("get", "/api/v1/admin/actors"),
    ("get", "/api/v1/admin/persister"),
];

/// The schema of a documented response, with component references made resolvable.
fn response_schema(document: &Value, method: &str, path: &str, status: u16) -> Value {
    let operation = &document["paths"][path][method];
    assert!(operation.is_object(), "{method} {path} is documented");
    let response = &operation["responses"][status.to_string()];
    assert!(response.is_object(), "{method} {path} documents status {status}");
    let schema = response["content"]
        .as_object()
        .and_then(|content| content.values().next())
        .map(|media| media["schema"].clone())
        .unwrap_or(json!({}));
    let mut root = schema;
    let text = serde_json::to_string(&root)
        .unwrap()
        .replace("#/components/schemas/", "#/$defs/");
    root = serde_json::from_str(&text).unwrap();
    if let Value::Object(map) = &mut root {
        let defs = serde_json::to_string(&document["components"]["schemas"])
            .unwrap()
            .replace("#/components/schemas/", "#/$defs/");
        map.insert("$defs".into(), serde_json::from_str(&defs).unwrap());
    }
    root
}

#[track_caller]
fn assert_valid(document: &Value, method: &str, path: &str, reply: &Reply) {
    let schema = response_schema(document, method, path, reply.status);
    let validator =
        jsonschema::validator_for(&schema).unwrap_or_else(|error| panic!("schema of {method} {path}: {error}"));
    let errors: Vec<String> = validator
        .iter_errors(&reply.body)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{method} {path} {}: {errors:?}\n{}",
        reply.status,
        reply.text
    );
}

async fn the_document_lists_every_route_and_responses_match_it(backend: Backend) {
    let app = spawn_app(backend).await;
    let reply = app.get("/api/v1/openapi.json", None).await;
    assert_eq!(reply.status, 200);
    let document = reply.body.clone();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    let mut documented = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut expected: Vec<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    expected.sort();
    assert_eq!(documented, expected, "the document lists exactly the served routes");
    // Every documented operation exists on the server: none answers route_not_found.
    for (method, path) in &documented {
        let concrete = path.replace("{id}", "1").replace("{user_id}", "1");
        let probe = app.send(&method.to_uppercase(), &concrete, None, None).await;
        assert_ne!(probe.body["code"], "route_not_found", "{method} {path}");
    }

    // Responses of a session validate against their documented schemas.
    let admin = app.admin().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let check = |method: &'static str, path: &'static str, reply: Reply| {
        assert_valid(&document, method, path, &reply);
        reply
    };
    let registered = app
        .post(
            "/api/v1/auth/register",
            None,
            json!({ "username": "carol", "email": "c@example.com", "password": "long enough pw" }),
        )
        .await;
    check("post", "/api/v1/auth/register", registered);
    check(
        "post",
        "/api/v1/auth/login",
        app.login("alice", crate::helpers::PASSWORD).await,
    );
    check(
        "post",
        "/api/v1/auth/login",
        app.login("alice", "wrong password!").await,
    );
    let credited = check(
        "post",
        "/api/v1/transactions/credit",
        app.post(
            "/api/v1/transactions/credit",
            Some(&admin.token),
            json!({ "user_id": alice.id, "amount": "10.00" }),
        )
        .await,
    );
    check(
        "post",
        "/api/v1/transactions/credit",
        app.post(
            "/api/v1/transactions/credit",
            Some(&admin.token),
            json!({ "user_id": alice.id, "amount": "1.234" }),
        )
        .await,
    );
    check(
        "post",
        "/api/v1/transactions/transfer",
        app.post(
            "/api/v1/transactions/transfer",
            Some(&alice.token),
            json!({ "from_user_id": alice.id, "to_user_id": bob.id, "amount": 1 }),
        )
        .await,
    );
    check(
        "post",
        "/api/v1/transactions/transfer",
        app.post(
            "/api/v1/transactions/transfer",
            Some(&alice.token),
            json!({ "from_user_id": alice.id, "to_user_id": bob.id, "amount": 1000 }),
        )
        .await,
    );
    check(
        "post",
        "/api/v1/transactions/debit",
        app.post(
            "/api/v1/transactions/debit",
            Some(&bob.token),
            json!({ "user_id": alice.id, "amount": 1 }),
        )
        .await,
    );
    let id = credited.body["id"].as_str().unwrap();
    check(
        "get",
        "/api/v1/transactions/{id}",
        app.get(&format!("/api/v1/transactions/{id}"), Some(&alice.token)).await,
    );
    check(
        "get",
        "/api/v1/transactions/history",
        app.get("/api/v1/transactions/history", Some(&alice.token)).await,
    );
    check(
        "get",
        "/api/v1/transactions/history",
        app.get("/api/v1/transactions/history?limit=0", Some(&alice.token))
            .await,
    );
    check(
        "get",
        "/api/v1/transactions/user/{user_id}",
        app.get(&format!("/api/v1/transactions/user/{}", bob.id), Some(&admin.token))
            .await,
    );
    check(
        "get",
        "/api/v1/balances/current",
        app.get("/api/v1/balances/current", Some(&alice.token)).await,
    );
    check(
        "get",
        "/api/v1/balances/current/{user_id}",
        app.get(&format!("/api/v1/balances/current/{}", bob.id), Some(&alice.token))
            .await,
    );
    check(
        "get",
        "/api/v1/balances/historical",
        app.get("/api/v1/balances/historical", Some(&alice.token)).await,
    );
    check(
        "get",
        "/api/v1/balances/at-time",
        app.get("/api/v1/balances/at-time?time=2030-01-01T00:00:00Z", Some(&alice.token))
            .await,
    );
    check(
        "get",
        "/api/v1/users",
        app.get("/api/v1/users", Some(&admin.token)).await,
    );
    check(
        "get",
        "/api/v1/users/{id}",
        app.get(&format!("/api/v1/users/{}", alice.id), Some(&alice.token))
            .await,
    );
    check(
        "put",
        "/api/v1/users/{id}",
        app.send(
            "PUT",
            &format!("/api/v1/users/{}", alice.id),
            Some(&alice.token),
            Some(json!({ "email": "a2@example.com" })),
        )
        .await,
    );
    check(
        "get",
        "/api/v1/admin/actors",
        app.get("/api/v1/admin/actors", Some(&admin.token)).await,
    );
    check("get", "/readyz", app.get("/readyz", None).await);
    check("get", "/healthz", app.get("/healthz", None).await);
    check(
        "post",
        "/api/v1/auth/refresh",
        app.post(
            "/api/v1/auth/refresh",
            None,
            json!({ "refresh_token": alice.refresh_token }),
        )
        .await,
    );
    let _: &TestApp = &app;
    app.stop().await;
}

on_both_stores!(the_document_lists_every_route_and_responses_match_it);
