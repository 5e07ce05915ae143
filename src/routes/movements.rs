//! Beyond single movements: settling holds (post, void), reversals, and atomic batches.

use actix_web::http::header::HeaderValue;
use actix_web::{HttpRequest, HttpResponse, post, web};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tally_actors::{
    AccountId, BatchOutcome, BatchRequest, Engine, MoveRequest, ReversalRequest, TransactionRecord, TransactionStatus,
};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::domain::{parse_amount, parse_user_id};
use crate::error::{ApiError, Code, FieldError, Problem};
use crate::extract::{JsonBody, OptionalJsonBody, idempotency_key};
use crate::routes::transactions::{REPLAYED_HEADER, administrative, field, respond};
use crate::routes::views::TransactionView;

/// Body of a post or a reversal: how much (all of it when absent).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PartialAmountBody {
    /// A decimal number or string with at most 2 decimals; absent: the whole amount.
    #[schema(value_type = Option<String>, example = "12.34")]
    pub amount: Option<Box<RawValue>>,
}

fn transaction_id(path: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(path).map_err(|_| ApiError::invalid_parameter("id", "must be a transaction id (UUID)"))
}

/// The transaction `id` if the caller is one of its parties or an admin; otherwise, as
/// for a missing one, 404 (its existence is not disclosed).
async fn party_record(engine: &Engine, caller: &AuthUser, id: Uuid) -> Result<TransactionRecord, ApiError> {
    let record = engine
        .store()
        .transaction(id)
        .await
        .map_err(|error| ApiError::new(Code::Unavailable, "The store could not be read").with_cause(error))?;
    match record {
        Some(record) if caller.is_admin() || caller.id == record.from || caller.id == record.to => Ok(record),
        _ => Err(ApiError::new(
            Code::TransactionNotFound,
            format!("No transaction {id} of yours"),
        )),
    }
}

fn optional_amount(body: OptionalJsonBody<PartialAmountBody>) -> Result<Option<tally_actors::Amount>, ApiError> {
    let Some(raw) = body.0.and_then(|body| body.amount) else {
        return Ok(None);
    };
    parse_amount(&raw)
        .map(Some)
        .map_err(|message| ApiError::validation(vec![FieldError::new("amount", message)]))
}

/// A settled hold: 200 with its record (marked replayed when it was already settled so),
/// or, when the post's credit was refused and the capture refunded, 422 with the reason.
fn settled(record: &TransactionRecord, replayed: bool, caller: &AuthUser) -> Result<HttpResponse, ApiError> {
    if record.status == TransactionStatus::RolledBack {
        return respond(record, replayed, caller);
    }
    let mut response = HttpResponse::Ok();
    if replayed {
        response.insert_header((REPLAYED_HEADER, HeaderValue::from_static("true")));
    }
    Ok(response.json(TransactionView::for_viewer(record, caller)))
}

/// Capture a hold, all or part: that amount moves to the target and the rest is
/// released (either party, or an admin). Posting again as before answers the same.
#[utoipa::path(
    tag = "holds",
    params(("id" = Uuid, Path, description = "The hold (a pending transfer)")),
    request_body(content = Option<PartialAmountBody>, description = "How much to capture; absent: all of it"),
    responses(
        (status = 200, description = "Posted", body = TransactionView),
        (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 404, description = "No such transaction, or not one of yours", body = Problem),
        (status = 409, description = "Not a hold, or no longer pending (hold_not_pending, hold_expired)", body = Problem),
        (status = 422, description = "More than held, or refused (account_frozen…); a refused credit is refunded and recorded", body = Problem),
        (status = 503, body = Problem)
    ),
    security(("bearer" = []))
)]
#[post("/transactions/{id}/post")]
pub async fn post_hold(
    engine: web::Data<Engine>,
    caller: AuthUser,
    path: web::Path<String>,
    body: OptionalJsonBody<PartialAmountBody>,
) -> Result<HttpResponse, ApiError> {
    let id = transaction_id(&path)?;
    let amount = optional_amount(body)?;
    let hold = party_record(&engine, &caller, id).await?;
    let audit = administrative(&caller, hold.from);
    let (record, replayed) = engine.post_hold_audited(id, amount, audit).await?;
    settled(&record, replayed, &caller)
}

/// Release a hold whole (either party, or an admin). Voiding again answers the same.
#[utoipa::path(
    tag = "holds",
    params(("id" = Uuid, Path, description = "The hold (a pending transfer)")),
    responses(
        (status = 200, description = "Voided", body = TransactionView),
        (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 404, description = "No such transaction, or not one of yours", body = Problem),
        (status = 409, description = "Not a hold, or no longer pending (hold_not_pending, hold_expired)", body = Problem),
        (status = 503, body = Problem)
    ),
    security(("bearer" = []))
)]
#[post("/transactions/{id}/void")]
pub async fn void_hold(
    engine: web::Data<Engine>,
    caller: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = transaction_id(&path)?;
    let hold = party_record(&engine, &caller, id).await?;
    let audit = administrative(&caller, hold.from);
    let (record, replayed) = engine.void_hold_audited(id, audit).await?;
    settled(&record, replayed, &caller)
}

/// Give back all or part of a completed transaction or posted hold, from its target to
/// its source (the target, or an admin). All reversals of one transaction together give
/// back at most its amount.
#[utoipa::path(
    tag = "transactions",
    params(
        ("id" = Uuid, Path, description = "The transaction to reverse"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry return the first outcome")
    ),
    request_body(content = Option<PartialAmountBody>, description = "How much to give back; absent: all of it"),
    responses(
        (status = 201, description = "Reversed", body = TransactionView),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, description = "No such transaction, or not one of yours", body = Problem),
        (status = 409, description = "Not reversible (not_reversible), or more than is left (reversal_exceeds_original)", body = Problem),
        (status = 422, description = "Refused (insufficient_funds, account_frozen…) with the recorded reversal", body = Problem),
        (status = 503, body = Problem)
    ),
    security(("bearer" = []))
)]
#[post("/transactions/{id}/reverse")]
pub async fn reverse(
    engine: web::Data<Engine>,
    caller: AuthUser,
    http: HttpRequest,
    path: web::Path<String>,
    body: OptionalJsonBody<PartialAmountBody>,
) -> Result<HttpResponse, ApiError> {
    let id = transaction_id(&path)?;
    let amount = optional_amount(body)?;
    let key = idempotency_key(&http)?;
    let original = party_record(&engine, &caller, id).await?;
    // A reversal takes money from the original's target: only its owner or an admin
    // may do that (a reversed debit is a credit, which only admins make).
    if !caller.is_admin() && (original.to.is_external() || caller.id != original.to) {
        return Err(ApiError::forbidden(
            "Only the account that received the money, or an admin, may reverse a transaction",
        ));
    }
    let request = ReversalRequest {
        original: id,
        amount,
        initiator: Some(caller.id.get()),
        idempotency_key: key,
        // The money leaves the original's target.
        audit: administrative(&caller, original.to),
    };
    let (record, replayed) = engine.reverse(request).await?;
    respond(&record, replayed, &caller)
}

/// One leg of a batch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchLegBody {
    /// `transfer`, `credit` or `debit`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Transfers: the source.
    pub from_user_id: Option<i64>,
    /// Transfers: the target.
    pub to_user_id: Option<i64>,
    /// Credits and debits: the account.
    pub user_id: Option<i64>,
    #[schema(value_type = String, example = "12.34")]
    pub amount: Box<RawValue>,
}

/// Body of an atomic batch.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    pub legs: Vec<BatchLegBody>,
}

/// An atomic batch's outcome.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BatchView {
    pub batch_id: Uuid,
    /// `completed` (every leg applied) or `failed` (none did).
    pub status: String,
    /// The leg whose refusal aborted the batch (from 0); `null` when completed.
    pub failed_leg: Option<usize>,
    pub legs: Vec<TransactionView>,
}

impl BatchView {
    fn new(outcome: &BatchOutcome, caller: &AuthUser) -> Self {
        BatchView {
            batch_id: outcome.batch_id,
            status: if outcome.completed() { "completed" } else { "failed" }.into(),
            failed_leg: outcome.failed_leg,
            legs: outcome
                .legs
                .iter()
                .map(|leg| TransactionView::for_viewer(leg, caller))
                .collect(),
        }
    }
}

/// A leg as a movement, or what is wrong with it (each error named by its path). Legs
/// the caller may not make are listed in `denied`.
fn leg_request(
    index: usize,
    leg: &BatchLegBody,
    caller: &AuthUser,
    errors: &mut Vec<FieldError>,
    denied: &mut Vec<usize>,
) -> Option<MoveRequest> {
    let name = |field: &str| format!("legs[{index}].{field}");
    let user = |field: &str, value: Option<i64>, errors: &mut Vec<FieldError>| -> Option<AccountId> {
        match value {
            Some(raw) => self::field(&name(field), parse_user_id(raw), errors),
            None => {
                errors.push(FieldError::new(name(field), "is required for this type"));
                None
            }
        }
    };
    let unexpected = |field: &str, given: bool, errors: &mut Vec<FieldError>| {
        if given {
            errors.push(FieldError::new(name(field), "does not apply to this type"));
        }
    };
    let amount = field(&name("amount"), parse_amount(&leg.amount), errors);
    let (request, source) = match leg.kind.as_str() {
        "transfer" => {
            unexpected("user_id", leg.user_id.is_some(), errors);
            let from = user("from_user_id", leg.from_user_id, errors);
            let to = user("to_user_id", leg.to_user_id, errors);
            let (from, to, amount) = (from?, to?, amount?);
            (MoveRequest::transfer(from, to, amount), Some(from))
        }
        "credit" | "debit" => {
            unexpected("from_user_id", leg.from_user_id.is_some(), errors);
            unexpected("to_user_id", leg.to_user_id.is_some(), errors);
            let account = user("user_id", leg.user_id, errors);
            let (account, amount) = (account?, amount?);
            if leg.kind == "credit" {
                (MoveRequest::credit(account, amount), None)
            } else {
                (MoveRequest::debit(account, amount), Some(account))
            }
        }
        _ => {
            errors.push(FieldError::new(name("type"), "must be transfer, credit or debit"));
            return None;
        }
    };
    // The same rights as the single endpoints: credits are for admins, money leaves
    // only the caller's own account.
    let allowed = match source {
        None => caller.is_admin(),
        Some(source) => caller.may_act_for(source),
    };
    if !allowed {
        denied.push(index);
    }
    Some(request.initiated_by(caller.id.get()))
}

/// Apply several transfers, credits and debits together: all of them or none. A refused
/// leg aborts the batch; the problem names its reason as `code` and reports every leg.
#[utoipa::path(
    tag = "transactions",
    request_body = BatchBody,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry return the first outcome")),
    responses(
        (status = 201, description = "Every leg applied", body = BatchView),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 413, body = Problem), (status = 415, body = Problem),
        (status = 422, description = "Invalid, or a leg was refused (its reason as `code`, every leg in `batch`): nothing applied", body = Problem),
        (status = 503, body = Problem)
    ),
    security(("bearer" = []))
)]
#[post("/transactions/batch")]
pub async fn batch(
    engine: web::Data<Engine>,
    caller: AuthUser,
    http: HttpRequest,
    body: JsonBody<BatchBody>,
) -> Result<HttpResponse, ApiError> {
    let max = engine.config().batch_legs_max;
    let legs = body.0.legs;
    if legs.is_empty() || legs.len() > max {
        return Err(ApiError::validation(vec![FieldError::new(
            "legs",
            format!("must have 1 to {max} legs"),
        )]));
    }
    let mut errors = Vec::new();
    let mut denied = Vec::new();
    let requests: Vec<Option<MoveRequest>> = legs
        .iter()
        .enumerate()
        .map(|(index, leg)| leg_request(index, leg, &caller, &mut errors, &mut denied))
        .collect();
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    if !denied.is_empty() {
        let legs: Vec<String> = denied.iter().map(ToString::to_string).collect();
        return Err(ApiError::forbidden(format!(
            "You may not make leg(s) {}: credits are for admins, and money may leave only your own account",
            legs.join(", ")
        )));
    }
    let legs: Vec<MoveRequest> = requests.into_iter().flatten().collect();
    let audit = legs.iter().find_map(|leg| administrative(&caller, leg.from));
    let request = BatchRequest {
        legs,
        initiator: Some(caller.id.get()),
        idempotency_key: idempotency_key(&http)?,
        audit,
    };
    let (outcome, replayed) = engine.execute_batch(request).await?;
    let view = BatchView::new(&outcome, &caller);
    if let Some(failed) = outcome.failed_leg {
        let reason = outcome.legs[failed]
            .failure_reason
            .map(Code::for_refusal)
            .unwrap_or(Code::Unavailable);
        let mut error = ApiError::new(
            reason,
            format!(
                "Leg {failed} was refused ({}); no leg of the batch applied",
                reason.as_str()
            ),
        );
        error.batch = serde_json::to_value(view).ok();
        return Err(error);
    }
    let mut response = HttpResponse::Created();
    if replayed {
        response.insert_header((REPLAYED_HEADER, HeaderValue::from_static("true")));
    }
    Ok(response.json(view))
}
