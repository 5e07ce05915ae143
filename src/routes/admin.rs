//! Operators' per-account view, which cannot go into metric labels: the live actors
//! with the deepest mailboxes, and the persister's state (admin only).

use actix_web::{HttpResponse, get, web};
use serde::Serialize;
use tally_actors::Engine;
use utoipa::ToSchema;

use crate::auth::AuthUser;
use crate::error::{ApiError, Problem};

/// How many of the busiest accounts the actors view lists.
const BUSIEST_LISTED: usize = 20;

#[derive(Debug, Serialize, ToSchema)]
pub struct BusyAccount {
    pub user_id: i64,
    /// Messages waiting in its actor's mailbox.
    pub mailbox_depth: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ActorsView {
    /// Account actors alive now.
    pub active: usize,
    /// Messages waiting in all mailboxes.
    pub mailbox_depth: usize,
    pub busiest: Vec<BusyAccount>,
}

fn admin_only(caller: &AuthUser) -> Result<(), ApiError> {
    if caller.is_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden("Only an admin may see the engine's state"))
    }
}

/// Account actors: how many are alive, and which mailboxes are deepest.
#[utoipa::path(tag = "admin",
    responses((status = 200, body = ActorsView), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])))]
#[get("/admin/actors")]
pub async fn actors(engine: web::Data<Engine>, caller: AuthUser) -> Result<HttpResponse, ApiError> {
    admin_only(&caller)?;
    let stats = engine.actor_stats(BUSIEST_LISTED);
    Ok(HttpResponse::Ok().json(ActorsView {
        active: stats.active,
        mailbox_depth: stats.mailbox_depth,
        busiest: stats
            .busiest
            .into_iter()
            .map(|(account, depth)| BusyAccount {
                user_id: account.get(),
                mailbox_depth: depth,
            })
            .collect(),
    }))
}

/// The persister: queue depth, last batch, outage state.
#[utoipa::path(tag = "admin",
    responses((status = 200, description = "Persister state", body = Object), (status = 401, body = Problem),
        (status = 403, body = Problem)),
    security(("bearer" = [])))]
#[get("/admin/persister")]
pub async fn persister(engine: web::Data<Engine>, caller: AuthUser) -> Result<HttpResponse, ApiError> {
    admin_only(&caller)?;
    Ok(HttpResponse::Ok().json(engine.persister_status()))
}
