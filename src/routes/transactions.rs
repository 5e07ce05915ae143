//! Moving money and reading it back: credit (admin), debit (self or admin), transfer
//! (from one's own account; admin: any), a transaction by id, and histories.

use actix_web::http::header::HeaderValue;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use chrono::{DateTime, SubsecRound, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use tally_actors::{
    AccountId, AuditContext, Engine, HistoryCursor, HistoryItem, HistoryQuery, MoveRequest, TransactionKind,
    TransactionRecord, TransactionStatus,
};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::cache::{Kind, ReadCache};
use crate::domain::{parse_amount, parse_user_id};
use crate::error::{ApiError, Code, FieldError, Problem};
use crate::extract::{JsonBody, Query, from_str_opt, idempotency_key, path_user_id};
use crate::routes::views::{Page, TransactionView, decode_cursor, encode_cursor, page_size};

/// Header set on a response that replays the outcome of an earlier request with the
/// same `Idempotency-Key`.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Body of a credit or debit.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountMoveBody {
    pub user_id: i64,
    /// A decimal number or string with at most 2 decimals, e.g. 12.34 or "12.34".
    #[schema(value_type = String, example = "12.34")]
    pub amount: Box<RawValue>,
}

/// Body of a transfer.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    pub from_user_id: i64,
    pub to_user_id: i64,
    #[schema(value_type = String, example = "12.34")]
    pub amount: Box<RawValue>,
    /// Place a hold instead: the amount is reserved on the source and moves only when
    /// the hold is posted (`POST /transactions/{id}/post`).
    #[serde(default)]
    pub pending: bool,
    /// For a hold: void it this many seconds from now if still pending (1 to 31 days).
    pub expires_in: Option<i64>,
    /// For a hold: void it at this time (RFC 3339, in the future) if still pending.
    pub expires_at: Option<String>,
}

/// The longest a hold may wait for its post.
pub const HOLD_EXPIRY_MAX_SECONDS: i64 = 31 * 24 * 3600;

/// When a hold expires, from `expires_in` or `expires_at` (at most one of them).
fn hold_expiry(body: &TransferBody, now: DateTime<Utc>, errors: &mut Vec<FieldError>) -> Option<DateTime<Utc>> {
    if !body.pending {
        for (name, given) in [
            ("expires_in", body.expires_in.is_some()),
            ("expires_at", body.expires_at.is_some()),
        ] {
            if given {
                errors.push(FieldError::new(name, "applies only to a hold (\"pending\": true)"));
            }
        }
        return None;
    }
    match (body.expires_in, &body.expires_at) {
        (Some(_), Some(_)) => {
            errors.push(FieldError::new("expires_at", "give expires_in or expires_at, not both"));
            None
        }
        (Some(seconds), None) => {
            if (1..=HOLD_EXPIRY_MAX_SECONDS).contains(&seconds) {
                Some(now + chrono::TimeDelta::seconds(seconds))
            } else {
                errors.push(FieldError::new(
                    "expires_in",
                    format!("must be 1 to {HOLD_EXPIRY_MAX_SECONDS} seconds"),
                ));
                None
            }
        }
        (None, Some(text)) => match DateTime::parse_from_rfc3339(text) {
            Ok(at) => {
                let at = at.with_timezone(&Utc);
                if at <= now {
                    errors.push(FieldError::new("expires_at", "must be in the future"));
                    None
                } else if at > now + chrono::TimeDelta::seconds(HOLD_EXPIRY_MAX_SECONDS) {
                    errors.push(FieldError::new("expires_at", "must be within 31 days"));
                    None
                } else {
                    Some(at.trunc_subsecs(6))
                }
            }
            Err(_) => {
                errors.push(FieldError::new("expires_at", "must be an RFC 3339 time"));
                None
            }
        },
        (None, None) => None,
    }
}

pub(crate) fn field<T>(name: &str, parsed: Result<T, String>, errors: &mut Vec<FieldError>) -> Option<T> {
    parsed
        .map_err(|message| errors.push(FieldError::new(name, message)))
        .ok()
}

/// Run `request` and answer: 201 with the transaction when it completed (also on an
/// idempotent replay, with the same body), 422 with the refusal's code and the recorded
/// transaction when it failed or was rolled back.
async fn run(engine: &Engine, caller: &AuthUser, request: MoveRequest) -> Result<HttpResponse, ApiError> {
    let (record, replayed) = engine.execute_with_replay(request).await?;
    respond(&record, replayed, caller)
}

pub(crate) fn respond(record: &TransactionRecord, replayed: bool, caller: &AuthUser) -> Result<HttpResponse, ApiError> {
    let view = TransactionView::for_viewer(record, caller);
    if matches!(
        record.status,
        TransactionStatus::Completed
            | TransactionStatus::Pending
            | TransactionStatus::Posted
            | TransactionStatus::Voided
    ) {
        let mut response = HttpResponse::Created();
        if replayed {
            response.insert_header((REPLAYED_HEADER, HeaderValue::from_static("true")));
        }
        return Ok(response.json(view));
    }
    let reason = record
        .failure_reason
        .map(Code::for_refusal)
        .unwrap_or(Code::Unavailable);
    let detail = match record.status {
        TransactionStatus::RolledBack => {
            format!("The credit was refused ({}); the debit was refunded", reason.as_str())
        }
        _ => format!("The debit was refused ({})", reason.as_str()),
    };
    let mut error = ApiError::new(reason, detail);
    error.transaction = serde_json::to_value(view).ok();
    Err(error)
}

/// Who asked, when `caller` is an admin moving money out of an account not their own (a
/// credit, from outside the ledger, included): an administrative money action, whose
/// audit row is written with the movement.
pub(crate) fn administrative(caller: &AuthUser, source: AccountId) -> Option<AuditContext> {
    (caller.is_admin() && (source.is_external() || source != caller.id)).then(|| caller.audit_context())
}

pub(crate) fn move_request(
    request: MoveRequest,
    caller: &AuthUser,
    http: &HttpRequest,
) -> Result<MoveRequest, ApiError> {
    let mut request = request.initiated_by(caller.id.get());
    if let Some(context) = administrative(caller, request.from) {
        request = request.audited(context);
    }
    if let Some(key) = idempotency_key(http)? {
        request = request.idempotency_key(key);
    }
    Ok(request)
}

/// Deposit money into a user's account (admin only).
#[utoipa::path(
    tag = "transactions",
    request_body = AccountMoveBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry return the first outcome")),
    responses(
        (status = 201, description = "Credited", body = TransactionView),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 413, body = Problem), (status = 415, body = Problem),
        (status = 422, description = "Invalid, or refused (account_frozen, account_closed, account_not_found…) with the recorded transaction", body = Problem),
        (status = 503, body = Problem)
    ),
    security(("bearer" = []))
)]
#[post("/transactions/credit")]
pub async fn credit(
    engine: web::Data<Engine>,
    caller: AuthUser,
    http: HttpRequest,
    body: JsonBody<AccountMoveBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.0;
    let mut errors = Vec::new();
    let user = field("user_id", parse_user_id(body.user_id), &mut errors);
    let amount = field("amount", parse_amount(&body.amount), &mut errors);
    let (Some(user), Some(amount)) = (user, amount) else {
        return Err(ApiError::validation(errors));
    };
    if !caller.is_admin() {
        return Err(ApiError::forbidden("Only an admin may credit an account"));
    }
    let request = move_request(MoveRequest::credit(user, amount), &caller, &http)?;
    run(&engine, &caller, request).await
}

/// Withdraw money from a user's account (the user themself, or an admin).
#[utoipa::path(
    tag = "transactions",
    request_body = AccountMoveBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry return the first outcome")),
    responses(
        (status = 201, description = "Debited", body = TransactionView),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 413, body = Problem), (status = 415, body = Problem),
        (status = 422, description = "Invalid, or refused (insufficient_funds, account_frozen…) with the recorded transaction", body = Problem),
        (status = 503, body = Problem)
    ),
    security(("bearer" = []))
)]
#[post("/transactions/debit")]
pub async fn debit(
    engine: web::Data<Engine>,
    caller: AuthUser,
    http: HttpRequest,
    body: JsonBody<AccountMoveBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.0;
    let mut errors = Vec::new();
    let user = field("user_id", parse_user_id(body.user_id), &mut errors);
    let amount = field("amount", parse_amount(&body.amount), &mut errors);
    let (Some(user), Some(amount)) = (user, amount) else {
        return Err(ApiError::validation(errors));
    };
    if !caller.may_act_for(user) {
        return Err(ApiError::forbidden("You may only debit your own account"));
    }
    let request = move_request(MoveRequest::debit(user, amount), &caller, &http)?;
    run(&engine, &caller, request).await
}

/// Move money from one user's account to another's (from your own; admin: any).
#[utoipa::path(
    tag = "transactions",
    request_body = TransferBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry return the first outcome")),
    responses(
        (status = 201, description = "Transferred", body = TransactionView),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 413, body = Problem), (status = 415, body = Problem),
        (status = 422, description = "Invalid, or refused (insufficient_funds, self_transfer, account_frozen, account_not_found…) with the recorded transaction", body = Problem),
        (status = 503, body = Problem)
    ),
    security(("bearer" = []))
)]
#[post("/transactions/transfer")]
pub async fn transfer(
    engine: web::Data<Engine>,
    caller: AuthUser,
    http: HttpRequest,
    body: JsonBody<TransferBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.0;
    let mut errors = Vec::new();
    let from = field("from_user_id", parse_user_id(body.from_user_id), &mut errors);
    let to = field("to_user_id", parse_user_id(body.to_user_id), &mut errors);
    let amount = field("amount", parse_amount(&body.amount), &mut errors);
    let expires_at = hold_expiry(&body, engine.now(), &mut errors);
    let (Some(from), Some(to), Some(amount), true) = (from, to, amount, errors.is_empty()) else {
        return Err(ApiError::validation(errors));
    };
    if !caller.may_act_for(from) {
        return Err(ApiError::forbidden("You may only transfer from your own account"));
    }
    let mut request = MoveRequest::transfer(from, to, amount);
    if body.pending {
        request = request.pending(expires_at);
    }
    let request = move_request(request, &caller, &http)?;
    run(&engine, &caller, request).await
}

/// A transaction by id (its parties and admins only).
#[utoipa::path(
    tag = "transactions",
    params(("id" = Uuid, Path, description = "Transaction id")),
    responses(
        (status = 200, body = TransactionView),
        (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 404, description = "No such transaction, or not one of yours", body = Problem),
        (status = 503, body = Problem)
    ),
    security(("bearer" = []))
)]
#[get("/transactions/{id}")]
pub async fn by_id(
    engine: web::Data<Engine>,
    cache: web::Data<ReadCache>,
    caller: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id =
        Uuid::parse_str(&path).map_err(|_| ApiError::invalid_parameter("id", "must be a transaction id (UUID)"))?;
    // A stored transaction never changes once settled, so its cache entry needs no
    // invalidation; a pending hold is not cached (it will be posted or voided).
    let key = cache.key(Kind::Transaction, &id.to_string());
    let record: Option<TransactionRecord> = match cache.get(Kind::Transaction, &key).await {
        Some(record) => Some(record),
        None => {
            let record =
                engine.store().transaction(id).await.map_err(|error| {
                    ApiError::new(Code::Unavailable, "The store could not be read").with_cause(error)
                })?;
            if let Some(record) = record
                .as_ref()
                .filter(|record| record.status != TransactionStatus::Pending)
            {
                cache.put(key, record);
            }
            record
        }
    };
    match record {
        Some(record) if caller.is_admin() || caller.id == record.from || caller.id == record.to => {
            Ok(HttpResponse::Ok().json(TransactionView::for_viewer(&record, &caller)))
        }
        _ => Err(ApiError::new(
            Code::TransactionNotFound,
            format!("No transaction {id} of yours"),
        )),
    }
}

/// Filters and paging of a history.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// `credit`, `debit`, `transfer` or `reversal`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// `completed`, `failed`, `rolled_back`, `pending`, `posted` or `voided`.
    pub status: Option<String>,
    /// Created at or after this time (RFC 3339).
    #[serde(default, deserialize_with = "from_str_opt")]
    #[param(value_type = Option<String>)]
    pub from: Option<DateTime<Utc>>,
    /// Created before this time (RFC 3339).
    #[serde(default, deserialize_with = "from_str_opt")]
    #[param(value_type = Option<String>)]
    pub to: Option<DateTime<Utc>>,
    /// Only transactions with this other user.
    #[serde(default, deserialize_with = "from_str_opt")]
    #[param(value_type = Option<i64>)]
    pub counterparty: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Entries per page, 1 to 200 (default 50).
    #[serde(default, deserialize_with = "from_str_opt")]
    #[param(value_type = Option<i64>)]
    pub limit: Option<i64>,
}

async fn history_of(
    engine: &Engine,
    cache: &ReadCache,
    caller: &AuthUser,
    account: AccountId,
    params: HistoryParams,
) -> Result<HttpResponse, ApiError> {
    let kind = params
        .kind
        .as_deref()
        .map(|kind| {
            TransactionKind::parse(kind)
                .ok_or_else(|| ApiError::invalid_parameter("type", "must be credit, debit, transfer or reversal"))
        })
        .transpose()?;
    let status = params
        .status
        .as_deref()
        .map(|status| {
            TransactionStatus::parse(status).ok_or_else(|| {
                ApiError::invalid_parameter(
                    "status",
                    "must be completed, failed, rolled_back, pending, posted or voided",
                )
            })
        })
        .transpose()?;
    if let (Some(from), Some(to)) = (params.from, params.to)
        && from > to
    {
        return Err(ApiError::invalid_parameter("from", "must not be after `to`"));
    }
    let counterparty = params
        .counterparty
        .map(|id| parse_user_id(id).map_err(|message| ApiError::invalid_parameter("counterparty", message)))
        .transpose()?;
    let before = params.cursor.as_deref().map(history_cursor).transpose()?;
    let limit = page_size(params.limit)?;
    let query = HistoryQuery {
        account,
        kind,
        status,
        since: params.from,
        until: params.to,
        counterparty,
        before,
        limit: limit + 1,
    };
    let key = cache.account_key(Kind::History, account, &query);
    let mut items: Vec<HistoryItem> = match cache.get(Kind::History, &key).await {
        Some(items) => items,
        None => {
            let items =
                engine.store().history(&query).await.map_err(|error| {
                    ApiError::new(Code::Unavailable, "The store could not be read").with_cause(error)
                })?;
            cache.put(key, &items);
            items
        }
    };
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items
            .last()
            .map(|item| encode_cursor(&format!("{}:{}", item.position, item.transaction.id)))
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(Page {
        items: items
            .iter()
            .map(|item| TransactionView::for_viewer(&item.transaction, caller))
            .collect(),
        next_cursor,
    }))
}

fn history_cursor(cursor: &str) -> Result<HistoryCursor, ApiError> {
    let text = decode_cursor(cursor)?;
    let parsed = text.split_once(':').and_then(|(position, id)| {
        Some(HistoryCursor {
            position: position.parse().ok()?,
            id: Uuid::parse_str(id).ok()?,
        })
    });
    parsed.ok_or_else(|| ApiError::invalid_parameter("cursor", "is not a cursor this API returned"))
}

/// Your own transactions, newest first.
#[utoipa::path(
    tag = "transactions",
    params(HistoryParams),
    responses(
        (status = 200, body = Page<TransactionView>),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 503, body = Problem)
    ),
    security(("bearer" = []))
)]
#[get("/transactions/history")]
pub async fn history(
    engine: web::Data<Engine>,
    cache: web::Data<ReadCache>,
    caller: AuthUser,
    params: Query<HistoryParams>,
) -> Result<HttpResponse, ApiError> {
    history_of(&engine, &cache, &caller, caller.id, params.0).await
}

/// A user's transactions, newest first (the user themself, or an admin).
#[utoipa::path(
    tag = "transactions",
    params(("user_id" = i64, Path, description = "User id"), HistoryParams),
    responses(
        (status = 200, body = Page<TransactionView>),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 503, body = Problem)
    ),
    security(("bearer" = []))
)]
#[get("/transactions/user/{user_id}")]
pub async fn of_user(
    engine: web::Data<Engine>,
    cache: web::Data<ReadCache>,
    caller: AuthUser,
    path: web::Path<String>,
    params: Query<HistoryParams>,
) -> Result<HttpResponse, ApiError> {
    let user = path_user_id(&path)?;
    if !caller.may_act_for(user) {
        return Err(ApiError::forbidden("You may only read your own transactions"));
    }
    history_of(&engine, &cache, &caller, user, params.0).await
}
