//! Operators' per-account view, which cannot go into metric labels: the live actors
//! with the deepest mailboxes and the highest message rates, open holds, and the
//! persister's state (admin only).

use actix_web::{HttpResponse, get, web};
use serde::Serialize;
use tally_actors::{BusyActor, Engine};
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
    /// Messages its actor handled in the last whole second.
    pub messages_per_second: u64,
}

impl From<BusyActor> for BusyAccount {
    fn from(actor: BusyActor) -> Self {
        BusyAccount {
            user_id: actor.account.get(),
            mailbox_depth: actor.mailbox_depth,
            messages_per_second: actor.messages_per_second,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ActorsView {
    /// Account actors alive now.
    pub active: usize,
    /// Messages waiting in all mailboxes.
    pub mailbox_depth: usize,
    /// Holds placed and not yet posted, voided or expired, in the whole ledger, as far
    /// as the store knows (settlements not yet durable still count); `null` when the
    /// store cannot be read (the rest of the view is in memory and still answers).
    pub open_holds: Option<i64>,
    /// The actors with the deepest mailboxes (idle ones left out).
    pub busiest: Vec<BusyAccount>,
    /// The actors that handled the most messages in the last whole second.
    pub busiest_by_rate: Vec<BusyAccount>,
}

fn admin_only(caller: &AuthUser) -> Result<(), ApiError> {
    if caller.is_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden("Only an admin may see the engine's state"))
    }
}

/// Account actors: how many are alive, which are busiest (mailbox depth, message rate),
/// and how many holds are open.
#[utoipa::path(tag = "admin",
    responses((status = 200, body = ActorsView), (status = 401, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])))]
#[get("/admin/actors")]
pub async fn actors(engine: web::Data<Engine>, caller: AuthUser) -> Result<HttpResponse, ApiError> {
    admin_only(&caller)?;
    let stats = engine.actor_stats(BUSIEST_LISTED);
    let open_holds = match engine.open_hold_count().await {
        Ok(count) => Some(count),
        Err(error) => {
            tracing::warn!(error = %error, "the actors view goes without the open hold count");
            None
        }
    };
    Ok(HttpResponse::Ok().json(ActorsView {
        active: stats.active,
        mailbox_depth: stats.mailbox_depth,
        open_holds,
        busiest: stats.busiest_by_mailbox.into_iter().map(BusyAccount::from).collect(),
        busiest_by_rate: stats.busiest_by_rate.into_iter().map(BusyAccount::from).collect(),
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
