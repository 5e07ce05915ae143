//! Liveness, readiness, request ids and the headers every response carries.

use crate::helpers::{Backend, spawn_app};
use crate::on_both_stores;

async fn healthz_and_the_go_service_alias_answer_200(backend: Backend) {
    let app = spawn_app(backend).await;
    for path in ["/healthz", "/api/v1/test/health"] {
        let reply = app.get(path, None).await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(reply.body["status"], "ok");
    }
    app.stop().await;
}

async fn readyz_is_200_while_the_store_takes_writes_and_503_when_it_does_not(backend: Backend) {
    let app = spawn_app(backend).await;
    let reply = app.get("/readyz", None).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["store"], "reachable");
    assert_eq!(reply.body["durability"], "strict");

    app.engine.store().faults().fail_reads(true);
    let reply = app.get("/readyz", None).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.headers["retry-after"], "1");
    assert_eq!(reply.body["status"], "unavailable", "{}", reply.body);
    assert_eq!(reply.body["store"], "unreachable", "{}", reply.body);
    app.engine.store().faults().fail_reads(false);
    assert_eq!(app.get("/readyz", None).await.status, 200);
    app.stop().await;
}

/// During an outage `/readyz` (open to anyone) and the admins' persister view name the
/// failure by its kind, never by the database's text; once writes are durable again,
/// the error is gone and the view shows how long the queued writes waited.
async fn an_outage_is_reported_by_its_kind_and_cleared_once_over(backend: Backend) {
    let app = crate::helpers::spawn_app_with(backend, &[("TALLY_DURABLE_WAIT_MS", "200")]).await;
    let admin = app.admin().await;
    let user = app.user("outage").await;
    app.engine.store().faults().fail_writes(true);
    let credit = serde_json::json!({ "user_id": user.id, "amount": "5.00" });
    let refused = app
        .post("/api/v1/transactions/credit", Some(&admin.token), credit)
        .await;
    refused.assert_problem(503, "unavailable");
    for reply in [
        app.get("/readyz", None).await,
        app.get("/api/v1/admin/persister", Some(&admin.token)).await,
    ] {
        let text = reply.body.to_string();
        let persister = if reply.body["persister"].is_null() {
            &reply.body
        } else {
            &reply.body["persister"]
        };
        assert_eq!(persister["healthy"], false, "{text}");
        assert_eq!(persister["last_error"], "batch_write_failed", "{text}");
        assert!(!text.contains("injected"), "no error text in a body: {text}");
    }
    app.engine.store().faults().fail_writes(false);
    let mut view = app.get("/api/v1/admin/persister", Some(&admin.token)).await;
    for _ in 0..200 {
        if view.body["healthy"] == true && view.body["queue_depth"] == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        view = app.get("/api/v1/admin/persister", Some(&admin.token)).await;
    }
    assert_eq!(view.body["healthy"], true, "{}", view.body);
    assert!(view.body["last_error"].is_null(), "{}", view.body);
    assert!(
        view.body["last_batch_lag_ms"].as_f64().unwrap() >= 200.0,
        "{}",
        view.body
    );
    assert_eq!(app.balance(&user).await, "5.00", "the queued credit was written");
    assert_eq!(app.get("/readyz", None).await.status, 200);
    app.stop().await;
}

async fn request_ids_are_echoed_or_generated_and_security_headers_set(backend: Backend) {
    let app = spawn_app(backend).await;
    let sent = app
        .client
        .get(app.url("/api/v1/balances/current"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    let reply = crate::helpers::TestApp::read(sent).await;
    reply.assert_problem(401, "unauthenticated");
    assert_eq!(reply.headers["x-request-id"], "trace-me-42");
    assert_eq!(reply.body["request_id"], "trace-me-42");
    let generated = app.get("/healthz", None).await;
    let id = generated.headers["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "a generated id: {id}");
    for (header, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(generated.headers[header], value, "{header}");
    }
    app.stop().await;
}

on_both_stores!(
    healthz_and_the_go_service_alias_answer_200,
    readyz_is_200_while_the_store_takes_writes_and_503_when_it_does_not,
    an_outage_is_reported_by_its_kind_and_cleared_once_over,
    request_ids_are_echoed_or_generated_and_security_headers_set,
);

async fn cors_allows_only_the_configured_origins(backend: Backend) {
    let app = crate::helpers::spawn_app_with(backend, &[("TALLY_CORS_ORIGINS", "https://app.example.com")]).await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/v1/balances/current"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let allowed = preflight("https://app.example.com").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let refused = preflight("https://evil.example.com").await.unwrap();
    assert!(refused.headers().get("access-control-allow-origin").is_none());
    app.stop().await;
}

async fn security_headers_follow_the_configuration(backend: Backend) {
    let app = crate::helpers::spawn_app_with(
        backend,
        &[("TALLY_HSTS_MAX_AGE_SECONDS", "600"), ("TALLY_FRAME_OPTIONS", "off")],
    )
    .await;
    let reply = app.get("/healthz", None).await;
    assert_eq!(
        reply.headers["strict-transport-security"],
        "max-age=600; includeSubDomains"
    );
    assert!(reply.headers.get("x-frame-options").is_none());
    assert_eq!(reply.headers["x-content-type-options"], "nosniff");
    app.stop().await;
}

/// The per-IP limit answers before any handler runs, yet its 429 carries the security
/// headers like every other answer.
async fn a_refusal_by_the_per_ip_limit_carries_the_security_headers(backend: Backend) {
    let app = crate::helpers::spawn_app_with(
        backend,
        &[
            ("TALLY_RATE_LIMIT_IP_PER_SECOND", "1"),
            ("TALLY_RATE_LIMIT_IP_BURST", "2"),
        ],
    )
    .await;
    let mut refused = None;
    for _ in 0..10 {
        let reply = app.get("/api/v1/balances/current", None).await;
        if reply.status == 429 {
            refused = Some(reply);
            break;
        }
    }
    let refused = refused.expect("the per-IP limit refuses within 10 requests");
    refused.assert_problem(429, "rate_limited");
    for (header, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
        ("referrer-policy", "no-referrer"),
    ] {
        assert_eq!(refused.headers[header], value, "{header}");
    }
    assert!(refused.headers.get("x-request-id").is_some());
    app.stop().await;
}

on_both_stores!(
    a_refusal_by_the_per_ip_limit_carries_the_security_headers,
    cors_allows_only_the_configured_origins,
    security_headers_follow_the_configuration,
);
