//! Authentication: argon2id password hashes, JWT access and refresh tokens, revocation.
//!
//! * Access tokens (15 minutes by default) carry `sub` (user id), `role`, `ver` (the
//!   user's token version), `jti`, `iat`, `exp`, `iss`, `aud`, `typ: access`. Only the
//!   configured algorithm (HS256) is accepted; issuer and audience are checked.
//! * Refresh tokens are JWTs too (`typ: refresh`, `fam`: the rotation family) whose `jti`
//!   is a row in the store: each can be used once. Using one again (a stolen copy, or the
//!   client replaying) revokes its whole family.
//! * Logout denies the access token's `jti` until it expires and revokes the user's
//!   refresh tokens. A role change or deletion bumps the user's token version, which
//!   retires every token issued before.

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use argon2::password_hash::phc::PasswordHash;
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use chrono::Utc;
use dashmap::DashMap;
use futures_util::future::LocalBoxFuture;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tally_actors::{AccountId, Role, Store};
use uuid::Uuid;

use crate::error::{ApiError, Code};
use crate::rate_limit::{RateLimiter, Scope};
use crate::redis_link::RedisLink;

/// The one signing algorithm accepted.
const ALGORITHM: Algorithm = Algorithm::HS256;
/// Clock skew tolerated on `exp`, between instances of a deployment.
const LEEWAY_SECONDS: u64 = 5;
/// Where revoked token ids are kept in Redis (after the deployment's prefix), each until
/// its token expires.
const REVOKED_PREFIX: &str = "revoked:";
/// The channel on which instances tell each other of revocations and user changes.
const EVENTS_CHANNEL: &str = "events";

/// Purge expired entries from the deny list once it grows past this many.
const DENY_LIST_PURGE_THRESHOLD: usize = 10_000;
/// The most access tokens remembered as verified, over both generations (see
/// [`VerifiedTokens`]).
const VERIFIED_TOKENS_MAX: usize = 32_768;

#[derive(Clone)]
pub struct AuthSettings {
    pub secret: Vec<u8>,
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("secret", &"<hidden>")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("access_ttl", &self.access_ttl)
            .field("refresh_ttl", &self.refresh_ttl)
            .finish()
    }
}

/// Signs tokens with a deployment's key. The server signs at login and at refresh; an
/// operator holding the same secret can give each of many users an access token without
/// a password check per user, which is how the load tester sends every transfer as the
/// owner of the account it debits.
#[derive(Clone)]
pub struct TokenSigner {
    settings: AuthSettings,
    key: EncodingKey,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    pub fn new(settings: AuthSettings) -> TokenSigner {
        TokenSigner {
            key: EncodingKey::from_secret(&settings.secret),
            settings,
        }
    }

    /// The claims of an access token for `user`, issued at `now` for the configured
    /// lifetime.
    pub fn access_claims(&self, user: i64, role: Role, token_version: i64, now: chrono::DateTime<Utc>) -> Claims {
        Claims {
            sub: user.to_string(),
            role,
            ver: token_version,
            jti: Uuid::new_v4().to_string(),
            iat: now.timestamp(),
            exp: (now + self.settings.access_ttl).timestamp(),
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            typ: "access".into(),
            fam: None,
        }
    }

    /// The signed text of `claims`.
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        jsonwebtoken::encode(&Header::new(ALGORITHM), claims, &self.key)
            .map_err(|error| anyhow::anyhow!("signing a token: {error}"))
    }
}

/// What a token says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    /// The user's token version when the token was issued.
    pub ver: i64,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    /// `access` or `refresh`.
    pub typ: String,
    /// The refresh token family (refresh tokens only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fam: Option<String>,
}

/// A freshly issued access and refresh token pair.
#[derive(Clone, Debug)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub access_expires_in: Duration,
}

/// The authenticated caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthUser {
    pub id: AccountId,
    pub role: Role,
    pub jti: String,
    pub expires_at: i64,
}

impl AuthUser {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether the caller may act on `user`'s account: their own, or any as admin.
    pub fn may_act_for(&self, user: AccountId) -> bool {
        self.is_admin() || self.id == user
    }

    /// The caller and the request being handled, for an audit row.
    pub fn audit_context(&self) -> tally_actors::AuditContext {
        tally_actors::AuditContext {
            actor_user_id: Some(self.id.get()),
            request_id: crate::middleware::RequestId::current(),
        }
    }
}

/// Tokens denied before they expire (logout). In-process; shared across instances
/// once Redis is configured.
#[derive(Debug, Default)]
pub struct DenyList {
    denied: DashMap<String, i64>,
}

impl DenyList {
    pub fn deny(&self, jti: &str, expires_at: i64) {
        if self.denied.len() > DENY_LIST_PURGE_THRESHOLD {
            let now = Utc::now().timestamp();
            self.denied.retain(|_, expires| *expires > now);
        }
        self.denied.insert(jti.to_owned(), expires_at);
    }

    pub fn is_denied(&self, jti: &str) -> bool {
        self.denied.contains_key(jti)
    }
}

/// Whether a token expiring at `exp` is past its expiry at `now`, with the leeway: the
/// test the token library applies when it decodes one.
fn expired(exp: i64, now: i64) -> bool {
    exp < now - LEEWAY_SECONDS as i64
}

/// Access tokens whose signature, algorithm, issuer, audience and type were checked, by
/// their text. A client sends the same token with every request for its lifetime, and
/// checking the HMAC and decoding and parsing the token again each time cost more than
/// the rest of authentication together. Only what the text fixes comes from here: the
/// expiry is checked at every use, and revocation (deny list, token version) after.
///
/// Two generations of at most half the capacity each: tokens are remembered in the
/// current one, and a token found in the previous one moves to the current one. When the
/// current one is full it becomes the previous one and the previous one is forgotten, on
/// a thread of its own: freeing tens of thousands of tokens took about 20 ms, a stall of
/// an HTTP worker in the middle of a request, every few seconds once more users than the
/// memory holds were active.
#[derive(Debug)]
struct VerifiedTokens {
    generations: std::sync::RwLock<Generations>,
    /// Tokens remembered in the current generation.
    current_len: std::sync::atomic::AtomicUsize,
    generation_max: usize,
}

type TokenMemory = DashMap<Box<str>, Arc<Claims>>;

#[derive(Debug, Default)]
struct Generations {
    current: TokenMemory,
    previous: TokenMemory,
}

impl VerifiedTokens {
    fn new(capacity: usize) -> VerifiedTokens {
        VerifiedTokens {
            generations: std::sync::RwLock::new(Generations::default()),
            current_len: std::sync::atomic::AtomicUsize::new(0),
            generation_max: (capacity / 2).max(1),
        }
    }

    fn generations(&self) -> std::sync::RwLockReadGuard<'_, Generations> {
        self.generations.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The claims of `token` when it was verified before and has not expired at `now`.
    fn get(&self, token: &str, now: i64) -> Option<Arc<Claims>> {
        let claims = {
            let generations = self.generations();
            if let Some(found) = generations.current.get(token) {
                let claims = Arc::clone(found.value());
                drop(found);
                if expired(claims.exp, now) {
                    generations.current.remove(token);
                    return None;
                }
                return Some(claims);
            }
            let claims = Arc::clone(generations.previous.get(token)?.value());
            if expired(claims.exp, now) {
                return None;
            }
            claims
        };
        self.insert(token, Arc::clone(&claims));
        Some(claims)
    }

    /// Remember a verified token (see [`VerifiedTokens`] for what is forgotten).
    fn insert(&self, token: &str, claims: Arc<Claims>) {
        let full = {
            // Counted under the same guard as the insert, so a turn (which holds the lock
            // exclusively) never sees a token in one generation counted in the other.
            let generations = self.generations();
            generations.current.insert(token.into(), claims).is_none()
                && self.current_len.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 >= self.generation_max
        };
        if full {
            self.turn();
        }
    }

    /// The current generation becomes the previous one; the previous one is freed away
    /// from the request that filled the memory.
    fn turn(&self) {
        let forgotten = {
            let mut generations = self
                .generations
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // Another request may have turned first.
            if self.current_len.load(std::sync::atomic::Ordering::Relaxed) < self.generation_max {
                return;
            }
            let current = std::mem::take(&mut generations.current);
            self.current_len.store(0, std::sync::atomic::Ordering::Relaxed);
            std::mem::replace(&mut generations.previous, current)
        };
        if forgotten.is_empty() {
            return;
        }
        // Should the thread not start, the memory is freed here instead.
        let _ = std::thread::Builder::new()
            .name("tally-tokens-free".into())
            .spawn(move || drop(forgotten));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let generations = self.generations();
        generations.current.len() + generations.previous.len()
    }
}

/// Everything authentication needs, shared by all workers.
pub struct Auth {
    signer: TokenSigner,
    decoding: DecodingKey,
    /// What a token must satisfy besides its type (see [`Auth::decode`]).
    validation: Validation,
    hasher: Argon2<'static>,
    /// A hash of a random password, verified against when a login names no user, so
    /// that a login costs the same whether or not the user exists.
    decoy_hash: String,
    pub deny_list: DenyList,
    /// Users' current token versions, as far as this instance knows; loaded from the
    /// store on first use.
    token_versions: DashMap<i64, i64>,
    verified: VerifiedTokens,
    store: Store,
    /// Shares revocations with the other instances, when configured.
    redis: Option<RedisLink>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("issuer", &self.signer.settings.issuer)
            .field("audience", &self.signer.settings.audience)
            .finish_non_exhaustive()
    }
}

impl Auth {
    pub fn new(settings: AuthSettings, store: Store, redis: Option<RedisLink>) -> anyhow::Result<Auth> {
        let hasher = Argon2::default();
        let decoy: String = (0..32).map(|_| rand::random::<char>()).collect();
        let decoy_hash = hasher
            .hash_password(decoy.as_bytes())
            .map_err(|error| anyhow::anyhow!("hashing the decoy password: {error}"))?
            .to_string();
        let mut validation = Validation::new(ALGORITHM);
        validation.leeway = LEEWAY_SECONDS;
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        Ok(Auth {
            decoding: DecodingKey::from_secret(&settings.secret),
            validation,
            signer: TokenSigner::new(settings),
            hasher,
            decoy_hash,
            deny_list: DenyList::default(),
            token_versions: DashMap::new(),
            verified: VerifiedTokens::new(VERIFIED_TOKENS_MAX),
            store,
            redis,
        })
    }

    pub fn access_ttl(&self) -> Duration {
        self.signer.settings.access_ttl
    }

    /// Hash a password with argon2id and a fresh salt (CPU-heavy: call off the event
    /// loop).
    pub fn hash_password(&self, password: &str) -> anyhow::Result<String> {
        self.hasher
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|error| anyhow::anyhow!("hashing a password: {error}"))
    }

    /// Check `password` against `stored` (or against the decoy when there is no user),
    /// doing the same work either way.
    pub fn verify_password(&self, password: &str, stored: Option<&str>) -> bool {
        let hash = stored.unwrap_or(&self.decoy_hash);
        let Ok(parsed) = PasswordHash::new(hash) else {
            return false;
        };
        let matches = self.hasher.verify_password(password.as_bytes(), &parsed).is_ok();
        matches && stored.is_some()
    }

    /// Issue an access token and a refresh token (recorded in the store) for `user`.
    /// `family` continues a rotation; `None` starts a new one (a login).
    pub async fn issue(
        &self,
        user: i64,
        role: Role,
        token_version: i64,
        family: Option<Uuid>,
    ) -> anyhow::Result<TokenPair> {
        let now = Utc::now();
        let access = self.signer.access_claims(user, role, token_version, now);
        let refresh_id = Uuid::new_v4();
        let family = family.unwrap_or_else(Uuid::new_v4);
        let refresh_expires = now + self.signer.settings.refresh_ttl;
        let refresh = Claims {
            jti: refresh_id.to_string(),
            exp: refresh_expires.timestamp(),
            typ: "refresh".into(),
            fam: Some(family.to_string()),
            ..access.clone()
        };
        self.store
            .insert_refresh_token(&tally_actors::RefreshToken {
                id: refresh_id,
                user_id: user,
                family,
                expires_at: refresh_expires,
                created_at: now,
            })
            .await?;
        Ok(TokenPair {
            access_token: self.signer.sign(&access)?,
            refresh_token: self.signer.sign(&refresh)?,
            access_expires_in: self.signer.settings.access_ttl,
        })
    }

    /// Check a token's signature, algorithm, expiry, issuer, audience and type.
    pub fn decode(&self, token: &str, expected_type: &str) -> Result<Claims, ApiError> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|error| {
                let reason = match error.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => "the token has expired",
                    jsonwebtoken::errors::ErrorKind::InvalidIssuer => "the token has the wrong issuer",
                    jsonwebtoken::errors::ErrorKind::InvalidAudience => "the token has the wrong audience",
                    jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                        "the token uses an algorithm that is not accepted"
                    }
                    _ => "the token is invalid",
                };
                ApiError::unauthenticated(reason)
            })?
            .claims;
        if claims.typ != expected_type {
            return Err(ApiError::unauthenticated(format!(
                "a {expected_type} token is required"
            )));
        }
        Ok(claims)
    }

    /// [`Auth::decode`] for an access token, remembering the tokens that pass (see
    /// [`VerifiedTokens`]).
    fn verify_access(&self, token: &str) -> Result<Arc<Claims>, ApiError> {
        if let Some(claims) = self.verified.get(token, Utc::now().timestamp()) {
            return Ok(claims);
        }
        let claims = Arc::new(self.decode(token, "access")?);
        self.verified.insert(token, Arc::clone(&claims));
        Ok(claims)
    }

    /// The user's current token version (cached; loaded from the store on a miss).
    /// `None` when the user does not exist or was deleted.
    pub async fn token_version(&self, user: i64) -> Result<Option<i64>, ApiError> {
        if let Some(version) = self.token_versions.get(&user) {
            return Ok(Some(*version));
        }
        let record = self.store.user(user).await.map_err(|error| {
            ApiError::new(Code::Unavailable, "The user store could not be read; retry shortly").with_cause(error)
        })?;
        match record {
            Some(record) if record.deleted_at.is_none() => {
                self.token_versions.insert(user, record.token_version);
                Ok(Some(record.token_version))
            }
            _ => Ok(None),
        }
    }

    /// Remember a user's new token version (after a role change, a deletion…).
    pub fn set_token_version(&self, user: i64, version: i64) {
        self.token_versions.insert(user, version);
    }

    /// Drop what this instance knows of a user's tokens (after a deletion): the next
    /// request reads the user afresh.
    pub fn forget_user(&self, user: i64) {
        self.token_versions.remove(&user);
    }

    /// A user's tokens changed (new version, deletion): every instance forgets what it
    /// knew and reads the user afresh.
    pub async fn announce_user_change(&self, user: i64) {
        self.forget_user(user);
        self.publish(format!("user:{user}")).await;
    }

    /// Deny an access token until it expires, here and on every instance.
    pub async fn revoke(&self, jti: &str, expires_at: i64) {
        self.deny_list.deny(jti, expires_at);
        let Some(redis) = &self.redis else {
            return;
        };
        let seconds = (expires_at - Utc::now().timestamp()).max(1) as u64;
        let key = redis.key(&format!("{REVOKED_PREFIX}{jti}"));
        let _: Option<()> = redis
            .call(|mut connection| async move { connection.set_ex(key, expires_at, seconds).await })
            .await;
        self.publish(format!("revoked:{jti}:{expires_at}")).await;
    }

    async fn publish(&self, event: String) {
        if let Some(redis) = &self.redis {
            let channel = redis.key(EVENTS_CHANNEL);
            let _: Option<i64> = redis
                .call(|mut connection| async move { connection.publish(channel, event).await })
                .await;
        }
    }

    fn apply_event(&self, event: &str) {
        if let Some(user) = event.strip_prefix("user:").and_then(|user| user.parse().ok()) {
            self.forget_user(user);
        } else if let Some(revoked) = event.strip_prefix("revoked:")
            && let Some((jti, expires_at)) = revoked.rsplit_once(':')
            && let Ok(expires_at) = expires_at.parse()
        {
            self.deny_list.deny(jti, expires_at);
        }
    }

    /// Follow the other instances' revocations for as long as the process runs:
    /// subscribe, load the revocations made so far, apply each event; after a lost
    /// connection, do it all again (nothing published meanwhile is missed, since every
    /// revocation is also a key).
    pub async fn follow_events(self: Arc<Self>) {
        let Some(redis) = self.redis.clone() else {
            return;
        };
        let mut pause = Duration::from_millis(250);
        loop {
            if let Ok(mut pubsub) = redis.client().get_async_pubsub().await
                && pubsub.subscribe(redis.key(EVENTS_CHANNEL)).await.is_ok()
            {
                pause = Duration::from_millis(250);
                self.load_revocations(&redis).await;
                let mut messages = pubsub.on_message();
                while let Some(message) = futures_util::StreamExt::next(&mut messages).await {
                    if let Ok(event) = message.get_payload::<String>() {
                        self.apply_event(&event);
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    async fn load_revocations(&self, redis: &RedisLink) {
        let prefix = redis.key(REVOKED_PREFIX);
        let pattern = format!("{prefix}*");
        let revoked: Option<Vec<(String, i64)>> = redis
            .call(|mut connection| async move {
                let keys: Vec<String> = {
                    let mut iterator = connection.scan_match::<_, String>(&pattern).await?;
                    let mut keys = Vec::new();
                    while let Some(key) = futures_util::StreamExt::next(&mut iterator).await {
                        keys.push(key?);
                    }
                    keys
                };
                let mut revoked = Vec::with_capacity(keys.len());
                for key in keys {
                    let expires_at: Option<i64> = connection.get(&key).await?;
                    if let Some(expires_at) = expires_at {
                        revoked.push((key, expires_at));
                    }
                }
                Ok(revoked)
            })
            .await;
        for (key, expires_at) in revoked.unwrap_or_default() {
            if let Some(jti) = key.strip_prefix(prefix.as_str()) {
                self.deny_list.deny(jti, expires_at);
            }
        }
    }

    /// Authenticate the bearer token of a request.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<AuthUser, ApiError> {
        let token = authorization
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| ApiError::unauthenticated("An Authorization: Bearer <access token> header is required"))?;
        let claims = self.verify_access(token)?;
        if self.deny_list.is_denied(&claims.jti) {
            return Err(ApiError::unauthenticated("the token was revoked"));
        }
        let user: i64 = claims
            .sub
            .parse()
            .map_err(|_| ApiError::unauthenticated("the token is invalid"))?;
        let id = AccountId::new(user).map_err(|_| ApiError::unauthenticated("the token is invalid"))?;
        match self.token_version(user).await? {
            Some(version) if version == claims.ver => Ok(AuthUser {
                id,
                role: claims.role,
                jti: claims.jti.clone(),
                expires_at: claims.exp,
            }),
            Some(_) => Err(ApiError::unauthenticated("the token was revoked")),
            None => Err(ApiError::unauthenticated("the token's user no longer exists")),
        }
    }
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<AuthUser, ApiError>>;

    fn from_request(request: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        let auth = request.app_data::<web::Data<Arc<Auth>>>().cloned();
        let header = request
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let limiter = request.app_data::<web::Data<RateLimiter>>().cloned();
        Box::pin(async move {
            let auth = auth.ok_or_else(|| ApiError::internal(anyhow::anyhow!("authentication is not configured")))?;
            let user = auth.authenticate(header.as_deref()).await?;
            if let Some(limiter) = limiter {
                let decision = limiter.check(&[(Scope::User, &user.id.to_string())]).await;
                if !decision.allowed {
                    return Err(ApiError::rate_limited(decision, "Too many requests for this user"));
                }
            }
            Ok(user)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "7".into(),
            role: Role::User,
            ver: 0,
            jti: Uuid::new_v4().to_string(),
            iat: exp - 900,
            exp,
            iss: "tally".into(),
            aud: "tally-api".into(),
            typ: "access".into(),
            fam: None,
        }
    }

    #[test]
    fn a_remembered_token_still_expires() {
        let tokens = VerifiedTokens::new(8);
        let exp = 1_000_000;
        tokens.insert("a.b.c", Arc::new(claims(exp)));
        assert_eq!(tokens.get("a.b.c", exp).unwrap().exp, exp);
        assert!(
            tokens.get("a.b.c", exp + LEEWAY_SECONDS as i64).is_some(),
            "within the leeway"
        );
        assert!(tokens.get("a.b.x", exp).is_none(), "another text is another token");
        assert!(tokens.get("a.b.c", exp + LEEWAY_SECONDS as i64 + 1).is_none());
        assert_eq!(tokens.len(), 0, "an expired token is forgotten");
    }

    #[test]
    fn the_memory_of_verified_tokens_is_bounded() {
        let tokens = VerifiedTokens::new(4);
        for n in 0..10 {
            tokens.insert(&format!("token-{n}"), Arc::new(claims(2_000_000)));
            assert!(tokens.len() <= 4, "{} after {n}", tokens.len());
        }
        assert!(tokens.get("token-9", 0).is_some(), "the latest is remembered");
        assert!(tokens.get("token-0", 0).is_none(), "the oldest is forgotten");
    }

    #[test]
    fn a_token_in_use_outlives_the_turn_of_its_generation() {
        let tokens = VerifiedTokens::new(4);
        tokens.insert("kept", Arc::new(claims(2_000_000)));
        tokens.insert("once", Arc::new(claims(2_000_000)));
        // The generation is full: both are now the previous one.
        assert!(
            tokens.get("kept", 0).is_some(),
            "found in the previous generation, moved back"
        );
        tokens.insert("new-1", Arc::new(claims(2_000_000)));
        // The current generation ("kept", "new-1") turned: "once" is forgotten.
        assert!(tokens.get("kept", 0).is_some(), "still remembered");
        assert!(tokens.get("once", 0).is_none(), "not used since, forgotten");
        assert!(tokens.len() <= 4);
    }

    #[test]
    fn many_threads_remembering_at_once_keep_the_memory_bounded() {
        let tokens = Arc::new(VerifiedTokens::new(64));
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let tokens = Arc::clone(&tokens);
                std::thread::spawn(move || {
                    for n in 0..5_000 {
                        tokens.insert(&format!("token-{thread}-{n}"), Arc::new(claims(2_000_000)));
                        // Each generation may pass its half by the inserts under way when
                        // it filled: one per thread.
                        assert!(tokens.len() <= 64 + 2 * 4, "{}", tokens.len());
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert!(tokens.len() <= 64 + 2 * 4, "{}", tokens.len());
        assert!(tokens.len() >= 32, "the last generation is remembered");
    }

    /// The expiry test on remembered tokens is the one the token library applies.
    #[test]
    fn expiry_agrees_with_the_token_library() {
        let secret = b"expiry-secret-expiry-secret-0123456789";
        let mut validation = Validation::new(ALGORITHM);
        validation.leeway = LEEWAY_SECONDS;
        validation.set_audience(&["tally-api"]);
        let now = Utc::now().timestamp();
        for (exp, valid) in [
            (now - LEEWAY_SECONDS as i64 - 1, false),
            (now - LEEWAY_SECONDS as i64 + 2, true),
        ] {
            let token =
                jsonwebtoken::encode(&Header::new(ALGORITHM), &claims(exp), &EncodingKey::from_secret(secret)).unwrap();
            let decoded = jsonwebtoken::decode::<Claims>(&token, &DecodingKey::from_secret(secret), &validation);
            assert_eq!(decoded.is_ok(), valid, "exp {exp} at {now}: {decoded:?}");
            assert_eq!(expired(exp, now), !valid);
        }
    }
}
