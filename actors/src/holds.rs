//! Holds: transfers placed as pending, then posted (captured, all or part), voided, or
//! expired by the engine.
//!
//! Placing a hold reserves its amount on the source account (`held` grows, `available`
//! shrinks; the balance stays) — the source's actor checks it like a debit, rules and
//! daily cap included. Posting captures part or all of it through the usual debit →
//! credit → refund path and releases the rest; voiding releases it whole. Every step is
//! a durable change of the source account, and the hold's transaction row goes from
//! `pending` to `posted` (or `rolled_back` when the target refused the credit) or
//! `voided`.
//!
//! Settling one hold (post, void, expiry) takes the hold's lock and keeps it until the
//! outcome is durable, so they never race and a settled hold is always seen settled.
//! Expiries are kept in a queue in memory, loaded from the store when the engine opens
//! (so a hold whose expiry passed while Tally was down is voided at start), and checked
//! every `hold_expiry_interval` against the engine's clock.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::account::{AccountEffect, HoldRefusal, Refusal};
use crate::actor::{CaptureHold, HoldStepError, PlaceHold, ReleaseHold, Snapshot, StepError};
use crate::engine::{Reply, credit_or_refund, persist, position, send_error, step_error};
use crate::error::EngineError;
use crate::money::{AccountId, Amount};
use crate::persister::PendingWrite;
use crate::record::{TransactionRecord, TransactionStatus};
use crate::shared::Shared;

/// How a hold is settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settlement {
    /// Capture this much (all when `None`); the rest is released.
    Post(Option<Amount>),
    /// Release it whole, on request.
    Void,
    /// Release it whole: its expiry passed.
    Expire,
}

/// Reserve the hold `record` on its source. A refusal is a failed record, like a
/// refused debit.
pub(crate) async fn place(
    shared: &Arc<Shared>,
    mut record: TransactionRecord,
) -> Result<(TransactionRecord, Vec<AccountEffect>), EngineError> {
    let (source, target) = (record.from, record.to);
    // A hold that could never be posted is refused now rather than at its post.
    let target_state = shared
        .ask(target, Snapshot, false)
        .await
        .map_err(|error| send_error(target, error))?
        .map_err(|error| step_error(target, error))?;
    let refused = |mut record: TransactionRecord, refusal: Refusal, version: Option<u64>| {
        record.status = TransactionStatus::Failed;
        record.failure_reason = Some(refusal);
        record.refused_version = version;
        shared.metrics.transfers.with_label_values(&["hold", "failed"]).inc();
        Ok((record, Vec::new()))
    };
    if let Some(refusal) = Refusal::for_status(target_state.status) {
        // Nothing was reserved: the record has no place in the source's history.
        return refused(record, refusal, None);
    }
    let at = record.created_at;
    let span = tracing::debug_span!("ledger.hold", account = source.get());
    record.status = TransactionStatus::Pending;
    let placed = shared
        .ask(
            source,
            PlaceHold {
                record: record.clone(),
                at,
                span,
            },
            false,
        )
        .await
        .map_err(|error| send_error(source, error))?;
    match placed {
        Ok((effect, hold)) => {
            shared.open_holds.insert(hold.id, source);
            if let Some(expires_at) = hold.expires_at {
                expiries(shared).insert((expires_at, hold.id, source));
            }
            shared.metrics.transfers.with_label_values(&["hold", "pending"]).inc();
            Ok((hold, vec![effect]))
        }
        Err(StepError::Refused { refusal, version }) => refused(record, refusal, Some(version)),
        Err(StepError::NotFound) => Err(EngineError::AccountNotFound(source)),
        Err(StepError::Unavailable) => Err(EngineError::Unavailable("the source account could not be loaded")),
    }
}

fn expiries(
    shared: &Shared,
) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<(DateTime<Utc>, Uuid, AccountId)>> {
    shared.expiries.lock().expect("expiry queue lock")
}

/// Post, void or expire the hold `id`, answering `reply` (see [`persist`]).
pub(crate) async fn settle(
    shared: Arc<Shared>,
    id: Uuid,
    settlement: Settlement,
    audit: Option<crate::AuditContext>,
    reply: Reply<TransactionRecord>,
) {
    let _lock = shared.lock_key(id).await;
    let source = match open_source(&shared, id, settlement).await {
        Ok(Open::Source(source)) => source,
        Ok(Open::Settled(record)) => {
            let _ = reply.send(Ok((*record, true)));
            return;
        }
        Err(error) => {
            let _ = reply.send(Err(error));
            return;
        }
    };
    let reservation = match shared.persister.reserve() {
        Ok(reservation) => reservation,
        Err(error) => {
            let _ = reply.send(Err(error));
            return;
        }
    };
    let at = shared.clock.now();
    let span = tracing::Span::current();
    let answer = match settlement {
        Settlement::Post(amount) => {
            let message = CaptureHold { id, amount, at, span };
            shared.ask(source, message, true).await
        }
        Settlement::Void | Settlement::Expire => shared.ask(source, ReleaseHold { id, at, span }, true).await,
    };
    let (effect, hold) = match answer.map_err(|error| send_error(source, error)).and_then(|answer| {
        answer.map_err(|error| match error {
            HoldStepError::Step(error) => step_error(source, error),
            HoldStepError::Hold(HoldRefusal::NotOpen) => {
                EngineError::Unavailable("the hold is not open on its account; its state is being settled")
            }
            HoldStepError::Hold(HoldRefusal::AmountAboveHold) => EngineError::HoldAmountTooLarge,
            HoldStepError::Hold(HoldRefusal::Refused(refusal)) => EngineError::Refused(refusal),
        })
    }) {
        Ok(settled) => settled,
        Err(error) => {
            let _ = reply.send(Err(error));
            return;
        }
    };
    shared.open_holds.remove(&id);
    if let Some(expires_at) = hold.expires_at {
        expiries(&shared).remove(&(expires_at, id, source));
    }
    let mut record = hold.clone();
    let effects = match settlement {
        Settlement::Post(amount) => {
            record.amount = amount.unwrap_or(hold.amount);
            record.debit = Some(position(&effect));
            credit_or_refund(&shared, &mut record, effect, hold.created_at, TransactionStatus::Posted).await
        }
        Settlement::Void | Settlement::Expire => {
            record.status = TransactionStatus::Voided;
            record.failure_reason = (settlement == Settlement::Expire).then_some(Refusal::HoldExpired);
            record.completed_at = at;
            let outcome = if settlement == Settlement::Expire {
                "expired"
            } else {
                "voided"
            };
            shared.metrics.transfers.with_label_values(&["hold", outcome]).inc();
            vec![effect]
        }
    };
    tracing::Span::current().record("outcome", record.status.as_str());
    let write = PendingWrite {
        audit: crate::engine::money_audit(
            audit.as_ref(),
            Some(match settlement {
                Settlement::Post(_) => "hold_posted",
                Settlement::Void | Settlement::Expire => "hold_voided",
            }),
            std::slice::from_ref(&record),
        ),
        transactions: vec![record.clone()],
        effects,
        applied_at: Instant::now(),
        ack: None,
        span: tracing::Span::current(),
    };
    persist(&shared, reservation, write, record, reply).await;
}

enum Open {
    /// The hold is open on this account.
    Source(AccountId),
    /// The hold was already settled exactly as asked: its record.
    Settled(Box<TransactionRecord>),
}

/// Where the hold `id` is open, or why it cannot be settled as asked. Runs under the
/// hold's lock, so what the store says of a settled hold is final.
async fn open_source(shared: &Arc<Shared>, id: Uuid, settlement: Settlement) -> Result<Open, EngineError> {
    if let Some(source) = shared.open_holds.get(&id) {
        return Ok(Open::Source(*source));
    }
    let record = shared
        .store
        .transaction(id)
        .await
        .map_err(|error| {
            tracing::warn!(error = format!("{error:#}"), "cannot read a hold");
            EngineError::Unavailable("the store is unreachable; the hold cannot be read")
        })?
        .ok_or(EngineError::TransactionNotFound(id))?;
    let Some(held) = record.held_amount else {
        return Err(EngineError::NotAHold(id));
    };
    if record.status == TransactionStatus::Pending {
        return Ok(Open::Source(record.from));
    }
    let same = match settlement {
        // A post is repeated when it asked for the amount captured (all of it, if none).
        Settlement::Post(amount) => {
            matches!(record.status, TransactionStatus::Posted | TransactionStatus::RolledBack)
                && record.amount == amount.unwrap_or(held)
        }
        Settlement::Void => record.status == TransactionStatus::Voided && record.failure_reason.is_none(),
        Settlement::Expire => false,
    };
    if same {
        Ok(Open::Settled(Box::new(record)))
    } else {
        Err(EngineError::HoldNotPending {
            status: record.status,
            reason: record.failure_reason,
        })
    }
}

/// Start the task that voids holds past their expiry, with the open holds the store
/// knows of (`pending`: expiry, hold, source account).
pub(crate) fn start_expiry(shared: &Arc<Shared>, pending: Vec<(DateTime<Utc>, Uuid, AccountId)>) {
    expiries(shared).extend(pending);
    crate::shared::every(shared, shared.config.hold_expiry_interval, |shared| {
        for (expires_at, id, source) in due(shared) {
            let Some(guard) = shared.enter() else {
                return ControlFlow::Break(());
            };
            let task_shared = shared.clone();
            tokio::spawn(async move {
                let (reply, outcome) = oneshot::channel();
                settle(task_shared.clone(), id, Settlement::Expire, None, reply).await;
                if let Ok(Err(error)) = outcome.await
                    && !matches!(
                        error,
                        EngineError::HoldNotPending { .. }
                            | EngineError::TransactionNotFound(_)
                            | EngineError::NotAHold(_)
                    )
                {
                    // Not settled (the store or the account is unavailable): try again
                    // on a later tick.
                    tracing::warn!(hold = %id, error = %error, "cannot expire a hold yet; will retry");
                    expiries(&task_shared).insert((expires_at, id, source));
                }
                drop(guard);
            });
        }
        ControlFlow::Continue(())
    });
}

/// Take the holds whose expiry has passed off the queue.
fn due(shared: &Shared) -> Vec<(DateTime<Utc>, Uuid, AccountId)> {
    let now = shared.clock.now();
    let mut queue = expiries(shared);
    let mut due = Vec::new();
    while let Some(first) = queue.first()
        && first.0 <= now
    {
        due.push(queue.pop_first().expect("checked above"));
    }
    due
}
