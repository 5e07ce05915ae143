//! The OpenAPI 3.1 document. Paths and schemas are collected from the handlers as they
//! are registered (`utoipa-actix-web`), so the document lists exactly what the server
//! serves; this module adds the title, the security scheme and the problem schema.

use actix_web::{HttpResponse, get, web};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{FieldError, Problem};

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Tally",
        description = "An actor-based ledger: users, balances, credits, debits and transfers, durable before they are acknowledged. Errors are RFC 9457 problem+json with a stable `code`.",
        license(name = "MIT OR Apache-2.0")
    ),
    components(schemas(Problem, FieldError)),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Registration, login, token refresh and logout"),
        (name = "users", description = "Users"),
        (name = "transactions", description = "Moving money and its history"),
        (name = "balances", description = "Current, historical and at-time balances"),
        (name = "admin", description = "Engine state for operators"),
        (name = "health", description = "Liveness and readiness")
    )
)]
pub struct ApiDoc;

#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
    }
}

/// The document itself, as JSON.
#[utoipa::path(tag = "health", responses((status = 200, description = "This OpenAPI document", body = Object)))]
#[get("/openapi.json")]
pub async fn document(document: web::Data<utoipa::openapi::OpenApi>) -> HttpResponse {
    HttpResponse::Ok().json(document.get_ref())
}
