//! Per-account rules, enforced by the account's actor atomically with everything else it
//! does: status (active, frozen, closed), overdraft limit, maximum balance and daily debit
//! cap (per calendar day in UTC). Admins change them at runtime; every change is audited.

use actix_web::{HttpResponse, get, put, web};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tally_actors::{AccountBalance, AccountRules, AccountStatus, Engine};
use utoipa::ToSchema;

use crate::auth::AuthUser;
use crate::domain::{format_minor, parse_limit};
use crate::error::{ApiError, FieldError, Problem};
use crate::extract::{JsonBody, path_user_id};
use crate::routes::transactions::field;

/// An account's rules and what they leave free today.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RulesView {
    pub user_id: i64,
    /// `active`, `frozen` or `closed`.
    pub status: String,
    /// How far below zero the balance may go, e.g. "100.00" ("0.00": no overdraft).
    pub overdraft_limit: String,
    /// The highest balance credits may reach; `null`: no maximum.
    pub max_balance: Option<String>,
    /// The most that may leave the account per calendar day (UTC), debits and holds
    /// together; `null`: no cap.
    pub daily_debit_cap: Option<String>,
    /// What left the account today (UTC), counted against the cap.
    pub debited_today: String,
}

impl From<&AccountBalance> for RulesView {
    fn from(balance: &AccountBalance) -> Self {
        RulesView {
            user_id: balance.account.get(),
            status: balance.status.as_str().to_string(),
            overdraft_limit: format_minor(balance.rules.overdraft_limit),
            max_balance: balance.rules.max_balance.map(format_minor),
            daily_debit_cap: balance.rules.daily_debit_cap.map(format_minor),
            debited_today: format_minor(balance.debited_today),
        }
    }
}

/// New rules for an account: each limit absent or `null` means none (an overdraft
/// limit of zero); `status`, when given, changes the account's status too.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RulesBody {
    /// `active`, `frozen` or `closed` (final; only with a zero balance and nothing held).
    pub status: Option<String>,
    #[schema(value_type = Option<String>, example = "100.00")]
    pub overdraft_limit: Option<Box<RawValue>>,
    #[schema(value_type = Option<String>, example = "10000.00")]
    pub max_balance: Option<Box<RawValue>>,
    #[schema(value_type = Option<String>, example = "500.00")]
    pub daily_debit_cap: Option<Box<RawValue>>,
}

/// `null` is as good as absent.
fn given(raw: &Option<Box<RawValue>>) -> Option<&RawValue> {
    raw.as_deref().filter(|raw| raw.get().trim() != "null")
}

/// An account's rules (the user themself, or an admin).
#[utoipa::path(tag = "accounts", params(("user_id" = i64, Path)),
    responses((status = 200, body = RulesView), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
#[get("/accounts/{user_id}/rules")]
pub async fn get_rules(
    engine: web::Data<Engine>,
    caller: AuthUser,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user = path_user_id(&path)?;
    if !caller.may_act_for(user) {
        return Err(ApiError::forbidden("You may only read your own account's rules"));
    }
    let balance = engine.balance(user).await?;
    Ok(HttpResponse::Ok().json(RulesView::from(&balance)))
}

/// Replace an account's rules, and optionally its status (admin only; audited).
#[utoipa::path(tag = "accounts", params(("user_id" = i64, Path)), request_body = RulesBody,
    responses((status = 200, body = RulesView), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, description = "Closing an account that holds money (account_not_empty)", body = Problem),
        (status = 422, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
#[put("/accounts/{user_id}/rules")]
pub async fn put_rules(
    engine: web::Data<Engine>,
    caller: AuthUser,
    path: web::Path<String>,
    body: JsonBody<RulesBody>,
) -> Result<HttpResponse, ApiError> {
    let user = path_user_id(&path)?;
    let body = body.0;
    let mut errors: Vec<FieldError> = Vec::new();
    let limit = |name: &str, raw: &Option<Box<RawValue>>, errors: &mut Vec<FieldError>| {
        given(raw).map(|raw| field(name, parse_limit(raw), errors))
    };
    let overdraft_limit = limit("overdraft_limit", &body.overdraft_limit, &mut errors);
    let max_balance = limit("max_balance", &body.max_balance, &mut errors);
    let daily_debit_cap = limit("daily_debit_cap", &body.daily_debit_cap, &mut errors);
    if daily_debit_cap == Some(Some(0)) {
        errors.push(FieldError::new(
            "daily_debit_cap",
            "must be more than zero (or null for no cap)",
        ));
    }
    let status = match body.status.as_deref() {
        None => None,
        Some(text) => match AccountStatus::parse(text) {
            Some(status) => Some(status),
            None => {
                errors.push(FieldError::new("status", "must be active, frozen or closed"));
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    if !caller.is_admin() {
        return Err(ApiError::forbidden("Only an admin may change an account's rules"));
    }
    let rules = AccountRules {
        overdraft_limit: overdraft_limit.flatten().unwrap_or(0),
        max_balance: max_balance.flatten(),
        daily_debit_cap: daily_debit_cap.flatten(),
    };
    let audit = || caller.audit_context();
    let current = engine.balance(user).await?;
    let mut balance = current;
    // Rules first: a closed account takes no new rules.
    if current.rules != rules {
        balance = engine.set_rules(user, rules, audit()).await?;
    }
    if let Some(status) = status
        && status != current.status
    {
        balance = engine.set_status(user, status, audit()).await?;
    }
    Ok(HttpResponse::Ok().json(RulesView::from(&balance)))
}
