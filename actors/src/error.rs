//! The engine's errors: everything a caller of [`crate::Engine`] can be told besides a
//! recorded transaction. Business refusals of a movement (insufficient funds, a frozen
//! target…) are not errors: they are recorded transactions with a failure reason.

use uuid::Uuid;

use crate::account::{Refusal, StatusChangeRefusal};
use crate::money::AccountId;
use crate::record::{TransactionKind, TransactionStatus};

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
    /// No transaction with this id (or not durable yet).
    #[error("transaction {0} does not exist")]
    TransactionNotFound(Uuid),
    /// The transaction is not a hold, so it cannot be posted or voided.
    #[error("transaction {0} is not a hold")]
    NotAHold(Uuid),
    /// The hold was already settled otherwise (posted, voided, expired, or refused).
    #[error("the hold is no longer pending: it is {}", .status.as_str())]
    HoldNotPending {
        status: TransactionStatus,
        reason: Option<Refusal>,
    },
    /// A post asked for more than the hold holds.
    #[error("the amount to post is more than the hold")]
    HoldAmountTooLarge,
    /// Only a completed transaction or a posted hold can be reversed, and not a reversal.
    #[error("a {} that is {} cannot be reversed", .kind.as_str(), .status.as_str())]
    NotReversible {
        kind: TransactionKind,
        status: TransactionStatus,
    },
    /// The reversal would give back more than is left of the original.
    #[error("only {remaining} minor units of the original are left to reverse")]
    ReversalExceedsOriginal { remaining: i64 },
    /// A batch has no legs or more than allowed.
    #[error("a batch has 1 to {max} legs")]
    BatchSize { max: usize },
    /// The store failed on a read.
    #[error("store error")]
    Store(#[source] anyhow::Error),
}
