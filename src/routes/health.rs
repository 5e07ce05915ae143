//! Liveness and readiness.
//!
//! `/healthz` answers as long as the process serves requests. `/readyz` answers 200 only
//! when the store is reachable and the persister is writing, so a load balancer stops
//! sending writes during a database outage (reads keep working on the instance).

use actix_web::{HttpResponse, get, web};
use serde::Serialize;
use tally_actors::{Engine, PersisterStatus};
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// "ok".
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// "ready" or "unavailable".
    pub status: String,
    /// "reachable" or "unreachable".
    pub store: String,
    /// "strict" or "relaxed".
    pub durability: String,
    #[schema(value_type = Object)]
    pub persister: PersisterStatus,
}

async fn healthy() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok".into() })
}

/// The process is up.
#[utoipa::path(tag = "health", responses((status = 200, body = Health)))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    healthy().await
}

/// The same as /healthz, at the path the Go service's scripts call.
#[utoipa::path(tag = "health", responses((status = 200, body = Health)))]
#[get("/api/v1/test/health")]
pub async fn legacy_health() -> HttpResponse {
    healthy().await
}

/// The store is reachable and writes are being made durable.
#[utoipa::path(tag = "health",
    responses((status = 200, body = Readiness), (status = 503, description = "Not ready", body = Readiness)))]
#[get("/readyz")]
pub async fn readyz(engine: web::Data<Engine>) -> HttpResponse {
    let store = engine.store().ping().await;
    let ready = store.is_ok() && engine.is_ready();
    let body = Readiness {
        status: if ready { "ready" } else { "unavailable" }.into(),
        store: if store.is_ok() { "reachable" } else { "unreachable" }.into(),
        durability: engine.durability().as_str().into(),
        persister: engine.persister_status(),
    };
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(body)
    }
}

/// Prometheus metrics: HTTP, database, actors, coordinator, persister, business.
#[utoipa::path(tag = "health",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain", body = String)))]
#[get("/metrics")]
pub async fn metrics(engine: web::Data<Engine>, http: web::Data<crate::metrics::HttpMetrics>) -> HttpResponse {
    let text = crate::metrics::render(&engine, &http).await;
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}
