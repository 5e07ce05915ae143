//! Every error the API answers with, as RFC 9457 problem+json.
//!
//! [`Code`] is the one registry of stable snake_case codes: each has its HTTP status and
//! title here and nowhere else. Handlers return [`ApiError`]; its `ResponseError`
//! implementation renders the problem body with the request id. Internal errors are
//! logged with their cause chain and answered with a generic 500 that says nothing of
//! the cause (database text, panics) — and every one of them is a bug to fix.

use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use tally_actors::{EngineError, Refusal, StatusChangeRefusal};
use utoipa::ToSchema;

use crate::middleware::RequestId;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

macro_rules! codes {
    ($( $variant:ident => ($status:expr, $code:literal, $title:literal), )*) => {
        /// The stable error codes clients may branch on.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Code { $( $variant, )* }

        impl Code {
            pub const ALL: &'static [Code] = &[ $( Code::$variant, )* ];

            pub fn status(self) -> StatusCode {
                match self { $( Code::$variant => $status, )* }
            }

            pub fn as_str(self) -> &'static str {
                match self { $( Code::$variant => $code, )* }
            }

            pub fn title(self) -> &'static str {
                match self { $( Code::$variant => $title, )* }
            }
        }
    };
}

codes! {
    MalformedJson => (StatusCode::BAD_REQUEST, "malformed_json", "The request body is not valid JSON"),
    InvalidParameter => (StatusCode::BAD_REQUEST, "invalid_parameter", "A path or query parameter is invalid"),
    Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated", "Authentication is required"),
    InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials", "Wrong username or password"),
    Forbidden => (StatusCode::FORBIDDEN, "forbidden", "Not allowed"),
    RouteNotFound => (StatusCode::NOT_FOUND, "route_not_found", "No such endpoint"),
    UserNotFound => (StatusCode::NOT_FOUND, "user_not_found", "No such user"),
    TransactionNotFound => (StatusCode::NOT_FOUND, "transaction_not_found", "No such transaction"),
    MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "Method not allowed on this endpoint"),
    UsernameTaken => (StatusCode::CONFLICT, "username_taken", "The username is taken"),
    EmailTaken => (StatusCode::CONFLICT, "email_taken", "The email address is taken"),
    AccountNotEmpty => (StatusCode::CONFLICT, "account_not_empty", "The account still holds money"),
    PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "The request body is too large"),
    UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "The request body must be application/json"),
    ValidationFailed => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", "The request is invalid"),
    IdempotencyKeyReused => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused", "The idempotency key was used for a different request"),
    SelfTransfer => (StatusCode::UNPROCESSABLE_ENTITY, "self_transfer", "A transfer needs two different accounts"),
    InsufficientFunds => (StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds", "Insufficient funds"),
    AccountFrozen => (StatusCode::UNPROCESSABLE_ENTITY, "account_frozen", "The account is frozen"),
    AccountClosed => (StatusCode::UNPROCESSABLE_ENTITY, "account_closed", "The account is closed"),
    AccountNotFound => (StatusCode::UNPROCESSABLE_ENTITY, "account_not_found", "The account does not exist"),
    BalanceOverflow => (StatusCode::UNPROCESSABLE_ENTITY, "balance_overflow", "The balance would overflow"),
    TargetUnavailable => (StatusCode::UNPROCESSABLE_ENTITY, "target_unavailable", "The target account could not be reached"),
    OverOverdraftLimit => (StatusCode::UNPROCESSABLE_ENTITY, "over_overdraft_limit", "The debit would go beyond the account's overdraft limit"),
    OverMaxBalance => (StatusCode::UNPROCESSABLE_ENTITY, "over_max_balance", "The credit would go beyond the account's maximum balance"),
    OverDailyCap => (StatusCode::UNPROCESSABLE_ENTITY, "over_daily_cap", "The debit would go beyond the account's daily debit cap"),
    HoldExpired => (StatusCode::CONFLICT, "hold_expired", "The hold expired before it was settled"),
    BatchAborted => (StatusCode::UNPROCESSABLE_ENTITY, "batch_aborted", "Another leg of the batch was refused, so none applied"),
    NotAHold => (StatusCode::CONFLICT, "not_a_hold", "The transaction is not a hold"),
    HoldNotPending => (StatusCode::CONFLICT, "hold_not_pending", "The hold is no longer pending"),
    HoldAmountTooLarge => (StatusCode::UNPROCESSABLE_ENTITY, "hold_amount_exceeded", "The amount to post is more than the hold"),
    NotReversible => (StatusCode::CONFLICT, "not_reversible", "The transaction cannot be reversed"),
    ReversalExceedsOriginal => (StatusCode::CONFLICT, "reversal_exceeds_original", "The reversal would give back more than the original moved"),
    BatchTooLarge => (StatusCode::UNPROCESSABLE_ENTITY, "batch_size_invalid", "A batch has too few or too many legs"),
    RulesRefused => (StatusCode::UNPROCESSABLE_ENTITY, "rules_refused", "The account's rules cannot change that way"),
    StatusChangeRefused => (StatusCode::UNPROCESSABLE_ENTITY, "status_change_refused", "The account status cannot change that way"),
    RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Too many requests"),
    InternalError => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "Internal error"),
    Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded", "The account is busy; retry shortly"),
    Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", "The ledger is temporarily unavailable"),
    RequestTimeout => (StatusCode::SERVICE_UNAVAILABLE, "request_timeout", "The request took too long"),
    ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "The server is shutting down"),
}

impl Code {
    /// The problem `type` URI.
    pub fn type_uri(self) -> String {
        format!("urn:tally:problem:{}", self.as_str())
    }

    pub fn for_refusal(refusal: Refusal) -> Code {
        match refusal {
            Refusal::InsufficientFunds => Code::InsufficientFunds,
            Refusal::AccountFrozen => Code::AccountFrozen,
            Refusal::AccountClosed => Code::AccountClosed,
            Refusal::AccountNotFound => Code::AccountNotFound,
            Refusal::BalanceOverflow => Code::BalanceOverflow,
            Refusal::TargetUnavailable => Code::TargetUnavailable,
            Refusal::OverOverdraftLimit => Code::OverOverdraftLimit,
            Refusal::OverMaxBalance => Code::OverMaxBalance,
            Refusal::OverDailyCap => Code::OverDailyCap,
            Refusal::HoldExpired => Code::HoldExpired,
            Refusal::BatchAborted => Code::BatchAborted,
        }
    }
}

/// One invalid field of a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The field, as a path into the request (`amount`, `time`, `user_id`).
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// The problem+json body (RFC 9457).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable, snake_case: what clients branch on.
    pub code: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// For a refused movement: the recorded transaction.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub transaction: Option<serde_json::Value>,
    /// For a refused atomic batch: every leg's recorded outcome and the failing leg.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub batch: Option<serde_json::Value>,
}

/// An error answer: a code, a detail for people, and extras. Boxed, so that the many
/// `Result<_, ApiError>` stay one pointer wide.
#[derive(Debug)]
pub struct ApiError(Box<ApiErrorParts>);

impl std::ops::Deref for ApiError {
    type Target = ApiErrorParts;

    fn deref(&self) -> &ApiErrorParts {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut ApiErrorParts {
        &mut self.0
    }
}

#[derive(Debug)]
pub struct ApiErrorParts {
    pub code: Code,
    pub detail: String,
    pub errors: Vec<FieldError>,
    pub transaction: Option<serde_json::Value>,
    pub batch: Option<serde_json::Value>,
    /// Seconds after which a retry may succeed (503, 429).
    pub retry_after_seconds: Option<u64>,
    /// What went wrong inside, for the log only.
    pub cause: Option<anyhow::Error>,
    /// The budget that refused a rate-limited request: (limit, remaining, reset seconds).
    pub rate_limit: Option<(u32, u32, u64)>,
}

impl ApiError {
    pub fn new(code: Code, detail: impl Into<String>) -> Self {
        ApiError(Box::new(ApiErrorParts {
            code,
            detail: detail.into(),
            errors: Vec::new(),
            transaction: None,
            batch: None,
            retry_after_seconds: None,
            cause: None,
            rate_limit: None,
        }))
    }

    /// A 429 for a refused rate-limit `decision`.
    pub fn rate_limited(decision: crate::rate_limit::Decision, detail: &str) -> Self {
        let reset = decision.retry_after.as_secs_f64().ceil().max(1.0) as u64;
        let mut error = ApiError::new(Code::RateLimited, format!("{detail}; retry after {reset} s"));
        error.retry_after_seconds = Some(reset);
        error.rate_limit = Some((decision.limit, decision.remaining, reset));
        error
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            _ => format!("{} fields are invalid", errors.len()),
        };
        let mut error = ApiError::new(Code::ValidationFailed, detail);
        error.errors = errors;
        error
    }

    pub fn invalid_parameter(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut error = ApiError::new(Code::InvalidParameter, format!("{field}: {message}"));
        error.errors = vec![FieldError::new(field, message)];
        error
    }

    /// An unexpected failure: logged with its cause, answered with a generic 500.
    pub fn internal(cause: anyhow::Error) -> Self {
        ApiError::new(Code::InternalError, "An internal error occurred; it has been logged").with_cause(cause)
    }

    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        ApiError::new(Code::Unauthenticated, detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        ApiError::new(Code::Forbidden, detail)
    }

    /// Keep `cause` for the log (never for the client).
    pub fn with_cause(mut self, cause: anyhow::Error) -> Self {
        self.cause = Some(cause);
        self
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_seconds = Some(seconds);
        self
    }

    /// The body, with the request id it answers.
    pub fn problem(&self, request_id: Option<String>) -> Problem {
        Problem {
            type_uri: self.code.type_uri(),
            title: self.code.title().to_string(),
            status: self.code.status().as_u16(),
            detail: self.detail.clone(),
            code: self.code.as_str().to_string(),
            errors: self.errors.clone(),
            request_id,
            transaction: self.transaction.clone(),
            batch: self.batch.clone(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.detail)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        if let Some(cause) = &self.cause {
            // A dependency that is down is answered 503 and retried by clients: worth a
            // warning, not the error an operator is paged for.
            if self.status_code() == StatusCode::SERVICE_UNAVAILABLE {
                tracing::warn!(
                    error = format!("{cause:#}"),
                    code = self.code.as_str(),
                    "unavailable; answered 503"
                );
            } else {
                tracing::error!(error = format!("{cause:#}"), "internal error");
            }
        }
        let request_id = RequestId::current();
        let mut response = HttpResponse::build(self.status_code());
        if let Some(id) = &request_id
            && let Ok(value) = HeaderValue::from_str(id)
        {
            response.insert_header((crate::middleware::REQUEST_ID_HEADER, value));
        }
        response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)));
        let retry_after = self.retry_after_seconds.or(match self.code {
            Code::Overloaded | Code::Unavailable | Code::RequestTimeout | Code::ShuttingDown => Some(1),
            _ => None,
        });
        if let Some(seconds) = retry_after {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        if let Some((limit, remaining, reset)) = self.rate_limit {
            response.insert_header(("RateLimit-Limit", limit.to_string()));
            response.insert_header(("RateLimit-Remaining", remaining.to_string()));
            response.insert_header(("RateLimit-Reset", reset.to_string()));
        }
        if self.code.status() == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        response.body(serde_json::to_string(&self.problem(request_id)).unwrap_or_default())
    }
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::SelfTransfer => {
                ApiError::new(Code::SelfTransfer, "The source and the target are the same account")
            }
            EngineError::InvalidRequest(detail) => ApiError::new(Code::ValidationFailed, detail),
            EngineError::AccountNotFound(id) => ApiError::new(Code::UserNotFound, format!("User {id} does not exist")),
            EngineError::IdempotencyConflict => ApiError::new(
                Code::IdempotencyKeyReused,
                "This Idempotency-Key was already used for a different request",
            ),
            EngineError::Overloaded(id) => ApiError::new(
                Code::Overloaded,
                format!("Account {id} has too many requests in flight; retry shortly"),
            ),
            EngineError::Unavailable(detail) => ApiError::new(Code::Unavailable, detail),
            EngineError::Refused(refusal) => {
                ApiError::new(Code::for_refusal(refusal), refusal.code().replace('_', " "))
            }
            EngineError::StatusChange(refusal) => match refusal {
                StatusChangeRefusal::BalanceNotZero => ApiError::new(Code::AccountNotEmpty, refusal.to_string()),
                StatusChangeRefusal::InvalidRule => ApiError::new(Code::RulesRefused, refusal.to_string()),
                _ => ApiError::new(Code::StatusChangeRefused, refusal.to_string()),
            },
            EngineError::TransactionNotFound(id) => {
                ApiError::new(Code::TransactionNotFound, format!("Transaction {id} does not exist"))
            }
            EngineError::NotAHold(id) => ApiError::new(
                Code::NotAHold,
                format!("Transaction {id} is not a hold: only a pending transfer can be posted or voided"),
            ),
            EngineError::HoldNotPending { status, reason } => match reason {
                Some(Refusal::HoldExpired) => ApiError::new(Code::HoldExpired, "The hold expired and was voided"),
                _ => ApiError::new(
                    Code::HoldNotPending,
                    format!(
                        "The hold is {}; only a pending hold can be posted or voided",
                        status.as_str()
                    ),
                ),
            },
            EngineError::HoldAmountTooLarge => ApiError::new(
                Code::HoldAmountTooLarge,
                "The amount to post is more than the hold; post at most the held amount",
            ),
            EngineError::NotReversible { kind, status } => ApiError::new(
                Code::NotReversible,
                format!(
                    "A {} that is {} cannot be reversed: only a completed transaction or a posted hold can",
                    kind.as_str(),
                    status.as_str()
                ),
            ),
            EngineError::ReversalExceedsOriginal { remaining } => ApiError::new(
                Code::ReversalExceedsOriginal,
                format!(
                    "Only {} is left to reverse of the original",
                    crate::domain::format_minor(remaining)
                ),
            ),
            EngineError::BatchSize { max } => {
                ApiError::new(Code::BatchTooLarge, format!("A batch has 1 to {max} legs"))
            }
            EngineError::ShuttingDown => {
                ApiError::new(Code::ShuttingDown, "The server is shutting down; retry elsewhere")
            }
            EngineError::Store(cause) => {
                ApiError::new(Code::Unavailable, "The ledger store could not be read; retry shortly").with_cause(cause)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_never_5xx_for_client_mistakes() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            assert!(seen.insert(code.as_str()), "{} twice", code.as_str());
            assert!(code.as_str().chars().all(|c| c.is_ascii_lowercase() || c == '_'));
            let server_side = matches!(
                code,
                Code::InternalError | Code::Overloaded | Code::Unavailable | Code::RequestTimeout | Code::ShuttingDown
            );
            assert_eq!(code.status().is_server_error(), server_side, "{}", code.as_str());
        }
    }

    #[test]
    fn every_refusal_has_its_own_code() {
        for &refusal in Refusal::ALL {
            assert_eq!(Code::for_refusal(refusal).as_str(), refusal.code());
        }
    }
}
