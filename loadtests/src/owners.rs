//! Access tokens for the load-test users themselves, signed with the deployment's JWT
//! secret (`--jwt-secret`, the server's `JWT_SECRET`).
//!
//! Without them every request goes with the admin's token, and a transfer by an admin
//! between two other users' accounts is an administrative money action: Tally audits
//! it, one more row per transfer than an ordinary user's transfer costs. With them, a
//! transfer is sent by the owner of the account it debits and a read by the owner of the
//! account it reads, as those users' own clients would. Logging 100,000 users in would
//! cost an argon2 hash each (minutes on two cores), so the tester signs their tokens as
//! the server does at login; the server checks them like any other (signature, expiry,
//! issuer, audience, the user's token version, the deny list).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tally::auth::{AuthSettings, TokenSigner};
use tally_actors::Role;

/// Tally's default JWT_ISSUER and JWT_AUDIENCE.
pub const DEFAULT_ISSUER: &str = "tally";
pub const DEFAULT_AUDIENCE: &str = "tally-api";

/// How long the tester signs a token for: the server's default access token lifetime.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// How long before a token's expiry the tester signs its user a new one, so that a long
/// run never sends an expired token.
const RENEW_BEFORE_EXPIRY: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
struct OwnerToken {
    /// The user's token version when the token was signed.
    version: i64,
    text: Arc<str>,
    expires_at: i64,
}

/// One token per enrolled user, signed on first use and again near its expiry.
#[derive(Debug)]
pub struct OwnerTokens {
    signer: TokenSigner,
    tokens: RwLock<HashMap<i64, OwnerToken>>,
}

impl OwnerTokens {
    /// Sign tokens with `secret` for `issuer` and `audience`, each valid for `lifetime`
    /// (at least two minutes).
    pub fn new(secret: &str, issuer: &str, audience: &str, lifetime: Duration) -> OwnerTokens {
        let lifetime = lifetime.max(2 * RENEW_BEFORE_EXPIRY);
        OwnerTokens {
            signer: TokenSigner::new(AuthSettings {
                secret: secret.as_bytes().to_vec(),
                issuer: issuer.to_string(),
                audience: audience.to_string(),
                access_ttl: lifetime,
                refresh_ttl: lifetime,
            }),
            tokens: RwLock::new(HashMap::new()),
        }
    }

    /// Users (id, token version) the tester may act as, each signed a token now, before
    /// any load: signing 100,000 takes a fraction of a second, which would otherwise be
    /// spent inside a measured run. A user enrolled again with a new version gets a new
    /// token.
    pub fn enroll(&self, users: impl IntoIterator<Item = (i64, i64)>) {
        let now = chrono::Utc::now();
        let mut tokens = self.tokens.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (user, version) in users {
            if tokens.get(&user).is_none_or(|token| token.version != version) {
                tokens.insert(user, self.sign(user, version, now));
            }
        }
    }

    fn sign(&self, user: i64, version: i64, now: chrono::DateTime<chrono::Utc>) -> OwnerToken {
        let claims = self.signer.access_claims(user, Role::User, version, now);
        let text = self
            .signer
            .sign(&claims)
            .expect("HS256 signing of well-formed claims cannot fail");
        OwnerToken {
            version,
            text: Arc::from(text),
            expires_at: claims.exp,
        }
    }

    pub fn is_enrolled(&self, user: i64) -> bool {
        self.tokens
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains_key(&user)
    }

    /// How many users are enrolled.
    pub fn len(&self) -> usize {
        self.tokens
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `user`'s token, signed again first if it expires within a minute (or was
    /// refused); `None` when `user` is not enrolled (the admin acts for them then).
    pub fn token(&self, user: i64) -> Option<Arc<str>> {
        let now = chrono::Utc::now();
        let renew_after = now.timestamp() + RENEW_BEFORE_EXPIRY.as_secs() as i64;
        {
            let tokens = self.tokens.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            let token = tokens.get(&user)?;
            if token.expires_at > renew_after {
                return Some(token.text.clone());
            }
        }
        let mut tokens = self.tokens.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let token = tokens.get_mut(&user)?;
        if token.expires_at <= renew_after {
            *token = self.sign(user, token.version, now);
        }
        Some(token.text.clone())
    }

    /// Sign `user` a fresh token in place of `refused`, the one the server just answered
    /// 401 (unless another request already did).
    pub fn renew(&self, user: i64, refused: &str) {
        let mut tokens = self.tokens.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(token) = tokens.get_mut(&user)
            && &*token.text == refused
        {
            token.expires_at = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(token: &str) -> serde_json::Value {
        use base64::Engine as _;
        let part = token.split('.').nth(1).unwrap();
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    fn owners() -> OwnerTokens {
        OwnerTokens::new(
            "a-secret-a-secret-a-secret-0123456789",
            "tally",
            "tally-api",
            Duration::from_secs(900),
        )
    }

    #[test]
    fn an_enrolled_user_gets_one_token_of_their_own_until_it_is_refused() {
        let owners = owners();
        owners.enroll([(7, 0), (8, 3)]);
        let signed_at_enrollment = owners.tokens.read().unwrap()[&7].text.clone();
        assert!(!signed_at_enrollment.is_empty(), "signed before any request");
        let seven = owners.token(7).unwrap();
        assert_eq!(seven, signed_at_enrollment);
        assert_eq!(owners.token(7).unwrap(), seven, "the same token is reused");
        let claims = payload(&seven);
        assert_eq!(claims["sub"], "7");
        assert_eq!(claims["role"], "user");
        assert_eq!(claims["ver"], 0);
        assert_eq!(claims["typ"], "access");
        assert_eq!(payload(&owners.token(8).unwrap())["ver"], 3);
        owners.renew(7, "some older token");
        assert_eq!(
            owners.token(7).unwrap(),
            seven,
            "renewing another token changes nothing"
        );
        owners.renew(7, &seven);
        let renewed = owners.token(7).unwrap();
        assert_ne!(renewed, seven);
        assert_eq!(payload(&renewed)["sub"], "7");
    }

    #[test]
    fn an_unknown_user_has_no_token_and_a_new_version_gets_a_new_one() {
        let owners = owners();
        assert!(owners.is_empty());
        owners.enroll([(7, 0)]);
        assert!(owners.token(9).is_none());
        let first = owners.token(7).unwrap();
        owners.enroll([(7, 0)]);
        assert_eq!(owners.token(7).unwrap(), first, "enrolled again at the same version");
        owners.enroll([(7, 1)]);
        assert_eq!(payload(&owners.token(7).unwrap())["ver"], 1);
        assert_eq!(owners.len(), 1);
    }

    #[test]
    fn a_token_is_signed_again_before_it_expires() {
        let owners = owners();
        owners.enroll([(7, 0)]);
        let first = owners.token(7).unwrap();
        // As if the token had under a minute left.
        owners.tokens.write().unwrap().get_mut(&7).unwrap().expires_at = chrono::Utc::now().timestamp() + 30;
        assert_ne!(owners.token(7).unwrap(), first);
    }
}
