//! Liveness and readiness.
//!
//! `/healthz` answers as long as the process serves requests. `/readyz` answers 200 only
//! when the store is reachable and the persister is writing, so a load balancer stops
//! sending writes during a database outage (reads keep working on the instance).

use actix_web::{HttpResponse, web};
use serde_json::json;
use tally_actors::Engine;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

pub async fn readyz(engine: web::Data<Engine>) -> HttpResponse {
    let store = engine.store().ping().await;
    let persister = engine.persister_status();
    let ready = store.is_ok() && engine.is_ready();
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "store": if store.is_ok() { "reachable" } else { "unreachable" },
        "durability": engine.durability().as_str(),
        "persister": persister,
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "1"))
            .json(body)
    }
}
