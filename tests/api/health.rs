//! Liveness and readiness.

use crate::helpers::{Backend, spawn_app};
use crate::on_both_stores;

async fn healthz_and_the_go_service_alias_answer_200(backend: Backend) {
    let app = spawn_app(backend).await;
    for path in ["/healthz", "/api/v1/test/health"] {
        let response = app.get(path).await;
        assert_eq!(response.status().as_u16(), 200, "{path}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["status"], "ok");
    }
    app.stop().await;
}

async fn readyz_is_200_while_the_store_takes_writes_and_503_when_it_does_not(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app.get("/readyz").await;
    assert_eq!(response.status().as_u16(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["store"], "reachable");
    assert_eq!(body["durability"], "strict");

    app.engine.store().faults().fail_reads(true);
    let response = app.get("/readyz").await;
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    app.engine.store().faults().fail_reads(false);
    assert_eq!(app.get("/readyz").await.status().as_u16(), 200);
    app.stop().await;
}

on_both_stores!(
    healthz_and_the_go_service_alias_answer_200,
    readyz_is_200_while_the_store_takes_writes_and_503_when_it_does_not,
);
