//! Reversals: a movement from an earlier transaction's target back to its source, of
//! all or part of its amount, linked to it by `parent_id`.
//!
//! Only what moved money can be reversed (a completed transaction, a posted hold), and
//! a reversal is not itself reversed. All the completed reversals of one transaction
//! together give back at most its amount: reversals of one transaction take its lock
//! and keep it until they are durable, so each sees every earlier one in the store.

use std::sync::Arc;

use uuid::Uuid;

use crate::error::EngineError;
use crate::money::Amount;
use crate::shared::{KeyGuard, Shared};

/// Take the lock of `original` for a reversal of `amount`, once sure it fits in what is
/// left to reverse.
pub(crate) async fn admit(shared: &Arc<Shared>, original: Uuid, amount: Amount) -> Result<KeyGuard, EngineError> {
    let lock = shared.lock_key(original).await;
    let unreadable = |error: anyhow::Error| {
        tracing::warn!(error = format!("{error:#}"), "cannot read a transaction to reverse");
        EngineError::Unavailable("the store is unreachable; the reversal cannot be checked")
    };
    let record = shared
        .store
        .transaction(original)
        .await
        .map_err(unreadable)?
        .ok_or(EngineError::TransactionNotFound(original))?;
    let reversed = shared.store.reversed_total(original).await.map_err(unreadable)?;
    let remaining = record.amount.minor() - reversed;
    if amount.minor() > remaining {
        return Err(EngineError::ReversalExceedsOriginal { remaining });
    }
    Ok(lock)
}
