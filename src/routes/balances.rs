//! Balances: current (from the account's actor, never cached), historical (the
//! journal), and at a point in time. Each for the caller, or `/{user_id}` for the user
//! themself or an admin.

use actix_web::{HttpResponse, get, web};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tally_actors::{AccountId, Engine, JournalEntry};
use utoipa::IntoParams;

use crate::auth::AuthUser;
use crate::cache::{Kind, ReadCache};
use crate::error::{ApiError, Code, Problem};
use crate::extract::{Query, from_str_opt, path_user_id};
use crate::routes::views::{
    BalanceAtView, BalanceView, JournalEntryView, Page, decode_cursor, encode_cursor, page_size,
};

fn authorized(caller: &AuthUser, user: AccountId) -> Result<(), ApiError> {
    if caller.may_act_for(user) {
        Ok(())
    } else {
        Err(ApiError::forbidden("You may only read your own balances"))
    }
}

fn store_error(error: anyhow::Error) -> ApiError {
    ApiError::new(Code::Unavailable, "The store could not be read").with_cause(error)
}

async fn current_of(engine: &Engine, user: AccountId) -> Result<HttpResponse, ApiError> {
    let balance = engine.balance(user).await?;
    Ok(HttpResponse::Ok().json(BalanceView::from(&balance)))
}

/// Your balance now.
#[utoipa::path(tag = "balances",
    responses((status = 200, body = BalanceView), (status = 401, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
#[get("/balances/current")]
pub async fn current(engine: web::Data<Engine>, caller: AuthUser) -> Result<HttpResponse, ApiError> {
    current_of(&engine, caller.id).await
}

/// A user's balance now.
#[utoipa::path(tag = "balances", params(("user_id" = i64, Path)),
    responses((status = 200, body = BalanceView), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
#[get("/balances/current/{user_id}")]
pub async fn current_for(
    engine: web::Data<Engine>,
    caller: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user = path_user_id(&path)?;
    authorized(&caller, user)?;
    current_of(&engine, user).await
}

/// Paging of the journal.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JournalParams {
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Entries per page, 1 to 200 (default 50).
    #[serde(default, deserialize_with = "from_str_opt")]
    #[param(value_type = Option<i64>)]
    pub limit: Option<i64>,
}

async fn historical_of(
    engine: &Engine,
    cache: &ReadCache,
    user: AccountId,
    params: JournalParams,
) -> Result<HttpResponse, ApiError> {
    let before = params
        .cursor
        .as_deref()
        .map(|cursor| {
            decode_cursor(cursor)?
                .parse::<u64>()
                .map_err(|_| ApiError::invalid_parameter("cursor", "is not a cursor this API returned"))
        })
        .transpose()?;
    let limit = page_size(params.limit)?;
    // A user that does not exist has no journal rather than an empty one.
    engine.balance(user).await?;
    let key = cache.account_key(Kind::BalanceHistory, user, &("journal", before, limit));
    let mut entries: Vec<JournalEntry> = match cache.get(Kind::BalanceHistory, &key).await {
        Some(entries) => entries,
        None => {
            let entries = engine
                .store()
                .journal(user, before, limit + 1)
                .await
                .map_err(store_error)?;
            cache.put(key, &entries);
            entries
        }
    };
    let next_cursor = if entries.len() as i64 > limit {
        entries.truncate(limit as usize);
        entries.last().map(|entry| encode_cursor(&entry.version.to_string()))
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(Page {
        items: entries.iter().map(JournalEntryView::from).collect(),
        next_cursor,
    }))
}

/// Your balance changes, newest first, each with the balance after it.
#[utoipa::path(tag = "balances", params(JournalParams),
    responses((status = 200, body = Page<JournalEntryView>), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
#[get("/balances/historical")]
pub async fn historical(
    engine: web::Data<Engine>,
    cache: web::Data<ReadCache>,
    caller: AuthUser,
    params: Query<JournalParams>,
) -> Result<HttpResponse, ApiError> {
    historical_of(&engine, &cache, caller.id, params.0).await
}

/// A user's balance changes, newest first.
#[utoipa::path(tag = "balances", params(("user_id" = i64, Path), JournalParams),
    responses((status = 200, body = Page<JournalEntryView>), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 503, body = Problem)),
    security(("bearer" = [])))]
#[get("/balances/historical/{user_id}")]
pub async fn historical_for(
    engine: web::Data<Engine>,
    cache: web::Data<ReadCache>,
    caller: AuthUser,
    path: web::Path<String>,
    params: Query<JournalParams>,
) -> Result<HttpResponse, ApiError> {
    let user = path_user_id(&path)?;
    authorized(&caller, user)?;
    historical_of(&engine, &cache, user, params.0).await
}

/// The point in time of an at-time query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AtTimeParams {
    /// RFC 3339, e.g. 2026-11-26T10:00:00Z.
    #[serde(default, deserialize_with = "from_str_opt")]
    #[param(value_type = String)]
    pub time: Option<DateTime<Utc>>,
}

async fn at_time_of(
    engine: &Engine,
    cache: &ReadCache,
    user: AccountId,
    params: AtTimeParams,
) -> Result<HttpResponse, ApiError> {
    let time = params
        .time
        .ok_or_else(|| ApiError::invalid_parameter("time", "is required (RFC 3339, e.g. 2026-11-26T10:00:00Z)"))?;
    engine.balance(user).await?;
    let key = cache.account_key(Kind::BalanceHistory, user, &("at", time));
    let entry: Option<JournalEntry> = match cache.get::<Option<JournalEntry>>(Kind::BalanceHistory, &key).await {
        Some(entry) => entry,
        None => {
            let entry = engine.store().balance_at(user, time).await.map_err(store_error)?;
            cache.put(key, &entry);
            entry
        }
    };
    Ok(HttpResponse::Ok().json(BalanceAtView {
        user_id: user.get(),
        time,
        balance: crate::domain::format_minor(entry.as_ref().map_or(0, |entry| entry.balance_after)),
        version: entry.as_ref().map_or(0, |entry| entry.version),
        transaction_id: entry.map(|entry| entry.transaction_id),
    }))
}

/// Your balance at a point in time: after the last movement created at or before it.
#[utoipa::path(tag = "balances", params(AtTimeParams),
    responses((status = 200, body = BalanceAtView), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
#[get("/balances/at-time")]
pub async fn at_time(
    engine: web::Data<Engine>,
    cache: web::Data<ReadCache>,
    caller: AuthUser,
    params: Query<AtTimeParams>,
) -> Result<HttpResponse, ApiError> {
    at_time_of(&engine, &cache, caller.id, params.0).await
}

/// A user's balance at a point in time.
#[utoipa::path(tag = "balances", params(("user_id" = i64, Path), AtTimeParams),
    responses((status = 200, body = BalanceAtView), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 503, body = Problem)),
    security(("bearer" = [])))]
#[get("/balances/at-time/{user_id}")]
pub async fn at_time_for(
    engine: web::Data<Engine>,
    cache: web::Data<ReadCache>,
    caller: AuthUser,
    path: web::Path<String>,
    params: Query<AtTimeParams>,
) -> Result<HttpResponse, ApiError> {
    let user = path_user_id(&path)?;
    authorized(&caller, user)?;
    at_time_of(&engine, &cache, user, params.0).await
}
