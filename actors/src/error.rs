//! The engine's errors: everything a caller of [`crate::Engine`] can be told besides a
//! recorded transaction. Business refusals of a movement (insufficient funds, a frozen
//! target…) are not errors: they are recorded transactions with a failure reason.

use crate::account::{Refusal, StatusChangeRefusal};
use crate::money::AccountId;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A transfer from an account to itself moves nothing and is refused before
    /// anything is touched.
    #[error("a transfer needs two different accounts")]
    SelfTransfer,
    /// The request is malformed in a way the types could not rule out.
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// The account does not exist.
    #[error("account {0} does not exist")]
    AccountNotFound(AccountId),
    /// The idempotency key was already used by this user for a different request.
    #[error("the idempotency key was already used for a different request")]
    IdempotencyConflict,
    /// An account's mailbox is full: the caller should retry shortly.
    #[error("account {0} is overloaded; retry shortly")]
    Overloaded(AccountId),
    /// The store is unreachable or the write queue is full: nothing new is accepted.
    /// When returned for a write already under way, its outcome is not known yet and a
    /// retry with the same idempotency key will tell it.
    #[error("the ledger is unavailable: {0}")]
    Unavailable(&'static str),
    /// A request on one account (not a movement) was refused by its balance logic.
    #[error("refused: {}", .0.code())]
    Refused(Refusal),
    /// The status change was refused.
    #[error(transparent)]
    StatusChange(#[from] StatusChangeRefusal),
    /// The engine is shutting down.
    #[error("the ledger is shutting down")]
    ShuttingDown,
    /// The store failed on a read.
    #[error("store error")]
    Store(#[source] anyhow::Error),
}
