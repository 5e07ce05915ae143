//! Users and refresh tokens as the store keeps them: the types the service's auth and
//! user routes read and write through [`super::Store`].
//!
//! A user's account is the `balances` row with the same id, created in the same
//! database transaction as the user. Validation (username rules, email syntax, password
//! strength) belongs to the service's domain types; the store only guarantees what the
//! database can: case-insensitive uniqueness of usernames and emails, reported as typed
//! errors.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a user may do: every user moves their own money; admins also act on others'.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "user" => Some(Role::User),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A user to create. The caller has validated every field and hashed the password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewUser {
    pub username: String,
    /// Lower-cased by the caller; the store compares emails case-insensitively anyway.
    pub email: String,
    pub password_hash: String,
    pub role: Role,
}

/// A stored user, deleted ones included (with `deleted_at` set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    /// Also the id of the user's account; never 0, the external account.
    pub id: i64,
    pub username: String,
    pub email: String,
    pub password_hash: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// Bumped whenever the user's existing tokens must stop working (a new password, a
    /// role change, deletion); tokens carry the version they were issued under.
    pub token_version: i64,
}

/// The fields of a user to change; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserChanges {
    pub username: Option<String>,
    pub email: Option<String>,
    pub password_hash: Option<String>,
    pub role: Option<Role>,
    /// Retire every token issued to the user so far.
    pub bump_token_version: bool,
}

/// Why creating, changing or deleting a user failed. Only `Store` is unexpected; its
/// message is generic so database text never reaches a client, and the cause travels
/// as its source for the logs.
#[derive(Debug, thiserror::Error)]
pub enum UserWriteError {
    /// Another user, possibly a deleted one, has this username in any letter case.
    #[error("the username is already taken")]
    UsernameTaken,
    /// Another user, possibly a deleted one, has this email in any letter case.
    #[error("the email is already taken")]
    EmailTaken,
    /// No such user, or the user was deleted.
    #[error("the user does not exist")]
    NotFound,
    #[error("store error")]
    Store(#[source] anyhow::Error),
}

/// A refresh token as stored. The client presents `id` (however the service wraps
/// it); the store tracks whether it was spent or revoked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshToken {
    pub id: Uuid,
    pub user_id: i64,
    /// Shared by every token rotated from one login.
    pub family: Uuid,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// What presenting a refresh token found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshUse {
    /// The token was valid and is now spent: the caller issues its successor in the
    /// same family.
    Fresh { user_id: i64, family: Uuid },
    /// The token was already spent or revoked: someone holds a copy, so the caller
    /// revokes the whole family.
    Reused { user_id: i64, family: Uuid },
    /// No such token, or it expired unused.
    Unknown,
}
