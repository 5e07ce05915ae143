//! Registration, login, token refresh and logout.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, post, web};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tally_actors::{AuditEntry, NewUser, RefreshUse, Role, Store, UserWriteError};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{Auth, AuthUser, TokenPair};
use crate::domain::{validate_email, validate_password, validate_username};
use crate::error::{ApiError, Code, FieldError, Problem};
use crate::extract::JsonBody;
use crate::middleware::RequestId;
use crate::rate_limit::{RateLimiter, Scope};
use crate::routes::views::UserView;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// 3 to 32 letters, digits, '_', '-' or '.'.
    pub username: String,
    pub email: String,
    /// 8 to 128 characters.
    #[schema(format = Password)]
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    pub username: String,
    #[schema(format = Password)]
    pub password: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    pub refresh_token: String,
}

/// Tokens for an authenticated session.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub access_token: String,
    /// Use once at /auth/refresh; each use returns a new one.
    pub refresh_token: String,
    /// Always "Bearer".
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub user: UserView,
}

impl TokenView {
    fn new(pair: TokenPair, user: UserView) -> Self {
        TokenView {
            access_token: pair.access_token,
            refresh_token: pair.refresh_token,
            token_type: "Bearer".into(),
            expires_in: pair.access_expires_in.as_secs(),
            user,
        }
    }
}

/// An audit entry about a user, stamped with the current request.
pub fn audit(entity_id: String, action: &str, actor: Option<i64>, details: serde_json::Value) -> AuditEntry {
    AuditEntry {
        id: Uuid::now_v7(),
        entity_type: "user".into(),
        entity_id,
        action: action.into(),
        actor_user_id: actor,
        details,
        request_id: RequestId::current(),
        created_at: Utc::now(),
    }
}

pub fn store_error(error: anyhow::Error) -> ApiError {
    ApiError::new(Code::Unavailable, "The user store could not be reached; retry shortly").with_cause(error)
}

pub fn user_write_error(error: UserWriteError) -> ApiError {
    match error {
        UserWriteError::UsernameTaken => ApiError::new(Code::UsernameTaken, "That username is taken"),
        UserWriteError::EmailTaken => ApiError::new(Code::EmailTaken, "That email address is taken"),
        UserWriteError::NotFound => ApiError::new(Code::UserNotFound, "No such user"),
        UserWriteError::Store(error) => store_error(error),
    }
}

/// Hash a password on the blocking pool (argon2id takes tens of milliseconds of CPU).
pub async fn hash_password(auth: &Arc<Auth>, password: String) -> Result<String, ApiError> {
    let auth = auth.clone();
    web::block(move || auth.hash_password(&password))
        .await
        .map_err(|error| ApiError::internal(anyhow::anyhow!("password hashing did not run: {error}")))?
        .map_err(ApiError::internal)
}

/// Create a user (shared by registration, the first admin and `tally admin create`).
pub async fn create_user(
    store: &Store,
    auth: &Arc<Auth>,
    username: &str,
    email: &str,
    password: &str,
    role: Role,
    actor: Option<i64>,
) -> Result<tally_actors::UserRecord, ApiError> {
    let mut errors = Vec::new();
    let username = validate_username(username).map_err(|message| errors.push(FieldError::new("username", message)));
    let email = validate_email(email).map_err(|message| errors.push(FieldError::new("email", message)));
    let password_ok = validate_password(password).map_err(|message| errors.push(FieldError::new("password", message)));
    let (Ok(username), Ok(email), Ok(())) = (username, email, password_ok) else {
        return Err(ApiError::validation(errors));
    };
    let password_hash = hash_password(auth, password.to_string()).await?;
    let entry = audit(
        String::new(),
        "registered",
        actor,
        serde_json::json!({ "username": username, "role": role.as_str() }),
    );
    store
        .create_user(
            &NewUser {
                username,
                email,
                password_hash,
                role,
            },
            &entry,
        )
        .await
        .map_err(user_write_error)
}

/// Login and registration share a small per-IP budget: each attempt costs an argon2
/// hash, and guessing passwords should be slow.
async fn guard_password_endpoint(limiter: &RateLimiter, http: &HttpRequest) -> Result<(), ApiError> {
    let ip = crate::middleware::client_ip(http);
    let decision = limiter.check(&[(Scope::Login, &ip)]).await;
    if decision.allowed {
        Ok(())
    } else {
        Err(ApiError::rate_limited(
            decision,
            "Too many login or registration attempts from this address",
        ))
    }
}

/// Create an account.
#[utoipa::path(tag = "auth", request_body = RegisterBody,
    responses((status = 201, body = UserView), (status = 400, body = Problem), (status = 409, body = Problem),
        (status = 413, body = Problem), (status = 415, body = Problem), (status = 422, body = Problem),
        (status = 429, description = "Too many attempts from this address", body = Problem), (status = 503, body = Problem)))]
#[post("/auth/register")]
pub async fn register(
    auth: web::Data<Arc<Auth>>,
    engine: web::Data<tally_actors::Engine>,
    limiter: web::Data<RateLimiter>,
    http: HttpRequest,
    body: JsonBody<RegisterBody>,
) -> Result<HttpResponse, ApiError> {
    guard_password_endpoint(&limiter, &http).await?;
    let body = body.0;
    let user = create_user(
        engine.store(),
        &auth,
        &body.username,
        &body.email,
        &body.password,
        Role::User,
        None,
    )
    .await?;
    Ok(HttpResponse::Created().json(UserView::from(&user)))
}

/// Log in: an access token and a refresh token.
#[utoipa::path(tag = "auth", request_body = LoginBody,
    responses((status = 200, body = TokenView), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 415, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem),
        (status = 503, body = Problem)))]
#[post("/auth/login")]
pub async fn login(
    auth: web::Data<Arc<Auth>>,
    engine: web::Data<tally_actors::Engine>,
    limiter: web::Data<RateLimiter>,
    http: HttpRequest,
    body: JsonBody<LoginBody>,
) -> Result<HttpResponse, ApiError> {
    guard_password_endpoint(&limiter, &http).await?;
    let body = body.0;
    let store = engine.store();
    // Usernames and passwords of impossible shapes cannot match; they still cost a hash
    // so that timing tells nothing.
    let plausible = validate_username(&body.username).is_ok() && validate_password(&body.password).is_ok();
    let user = if plausible {
        store.user_by_username(&body.username).await.map_err(store_error)?
    } else {
        None
    };
    let verifier = auth.get_ref().clone();
    let stored = user.as_ref().map(|user| user.password_hash.clone());
    let password = body.password.clone();
    let verified = web::block(move || verifier.verify_password(&password, stored.as_deref()))
        .await
        .map_err(|error| ApiError::internal(anyhow::anyhow!("password check did not run: {error}")))?;
    let user = match user {
        Some(user) if verified => user,
        known => {
            let entity_id = known.map_or_else(|| "unknown".to_string(), |user| user.id.to_string());
            let username: String = body.username.chars().take(64).collect();
            let entry = audit(
                entity_id,
                "login_failed",
                None,
                serde_json::json!({ "username": username }),
            );
            if let Err(error) = store.append_audit(&[entry]).await {
                tracing::warn!(error = format!("{error:#}"), "could not audit a failed login");
            }
            return Err(ApiError::new(Code::InvalidCredentials, "Wrong username or password"));
        }
    };
    let pair = auth
        .issue(user.id, user.role, user.token_version, None)
        .await
        .map_err(store_error)?;
    auth.set_token_version(user.id, user.token_version);
    Ok(HttpResponse::Ok().json(TokenView::new(pair, UserView::from(&user))))
}

/// Trade a refresh token for a new pair. Each refresh token works once; using one
/// again revokes every token of its session.
#[utoipa::path(tag = "auth", request_body = RefreshBody,
    responses((status = 200, body = TokenView), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 415, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem)))]
#[post("/auth/refresh")]
pub async fn refresh(
    auth: web::Data<Arc<Auth>>,
    engine: web::Data<tally_actors::Engine>,
    body: JsonBody<RefreshBody>,
) -> Result<HttpResponse, ApiError> {
    let claims = auth.decode(&body.0.refresh_token, "refresh")?;
    let invalid = || ApiError::unauthenticated("The refresh token is not valid");
    let id = Uuid::parse_str(&claims.jti).map_err(|_| invalid())?;
    let store = engine.store();
    let now = Utc::now();
    let family = match store.use_refresh_token(id, now).await.map_err(store_error)? {
        RefreshUse::Fresh { family, .. } => family,
        RefreshUse::Reused { family, user_id } => {
            store.revoke_refresh_family(family, now).await.map_err(store_error)?;
            tracing::warn!(user_id, "a refresh token was used twice; its session is revoked");
            return Err(ApiError::unauthenticated(
                "The refresh token was already used; the session is revoked",
            ));
        }
        RefreshUse::Unknown => return Err(invalid()),
    };
    let user_id: i64 = claims.sub.parse().map_err(|_| invalid())?;
    let user = store
        .user(user_id)
        .await
        .map_err(store_error)?
        .filter(|user| user.deleted_at.is_none() && user.token_version == claims.ver)
        .ok_or_else(|| ApiError::unauthenticated("The session was revoked"))?;
    let pair = auth
        .issue(user.id, user.role, user.token_version, Some(family))
        .await
        .map_err(store_error)?;
    Ok(HttpResponse::Ok().json(TokenView::new(pair, UserView::from(&user))))
}

/// End the session: the access token stops working now and every refresh token of the
/// user is revoked.
#[utoipa::path(tag = "auth",
    responses((status = 204, description = "Logged out"), (status = 401, body = Problem), (status = 503, body = Problem)),
    security(("bearer" = [])))]
#[post("/auth/logout")]
pub async fn logout(
    auth: web::Data<Arc<Auth>>,
    engine: web::Data<tally_actors::Engine>,
    caller: AuthUser,
) -> Result<HttpResponse, ApiError> {
    auth.revoke(&caller.jti, caller.expires_at).await;
    engine
        .store()
        .revoke_user_refresh_tokens(caller.id.get(), Utc::now())
        .await
        .map_err(store_error)?;
    Ok(HttpResponse::NoContent().finish())
}
