//! Atomic batches: several movements (transfers, credits, debits) that all apply or
//! none does.
//!
//! A batch runs in two phases over the account actors it touches. **Promise**: leg by
//! leg, the source promises the amount out (checked like a debit: status, available
//! balance, overdraft, daily cap) and the target promises room for it (status, maximum
//! balance). Promises live in the actors' memory only: they lower `available` but
//! change no balance, no version and nothing in the store, and an actor holding one
//! does not passivate. If any promise is refused, every promise made so far is dropped
//! and each leg is recorded as failed — the refused one with its reason, the others
//! `batch_aborted` — without a place in any account's history. **Settle**: when every
//! promise is made, each is kept (the amount leaves or arrives: a versioned change, as
//! for a transfer), which cannot be refused. All the legs' records and effects go to
//! the persister as one write, committed in one database transaction, so readers of
//! history never see part of a batch; a crash before that commit loses the whole
//! batch, which was never acknowledged.
//!
//! Each leg is checked against the accounts as they were before the batch: money a
//! leg brings into an account does not fund a later leg out of it.
//!
//! A batch is idempotent as a whole: its key is stored with its first leg, and a retry
//! returns every leg's recorded outcome.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::account::{AccountEffect, Refusal};
use crate::actor::{BatchMessage, BatchStep, StepError};
use crate::engine::{Identity, MoveRequest, Reply, new_record, persist, position, send_error};
use crate::error::EngineError;
use crate::idempotency::{Claim, Fingerprint, IDEMPOTENCY_KEY_LENGTH_MAX};
use crate::money::AccountId;
use crate::persister::PendingWrite;
use crate::record::{TransactionRecord, TransactionStatus};
use crate::shared::Shared;

/// Movements to apply together.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchRequest {
    /// Plain transfers, credits and debits (no holds, reversals or keys of their own).
    pub legs: Vec<MoveRequest>,
    pub initiator: Option<i64>,
    pub idempotency_key: Option<String>,
    /// Set for an administrative batch (see [`crate::MoveRequest::audit`]): every leg
    /// is audited.
    pub audit: Option<crate::AuditContext>,
}

/// How a batch ended: every leg's record, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BatchOutcome {
    pub batch_id: Uuid,
    pub legs: Vec<TransactionRecord>,
    /// The leg whose refusal aborted the batch; `None` when every leg applied.
    pub failed_leg: Option<usize>,
}

impl BatchOutcome {
    pub fn completed(&self) -> bool {
        self.failed_leg.is_none()
    }

    /// The outcome as recorded, from the stored legs of one batch (in leg order).
    fn from_legs(legs: Vec<TransactionRecord>) -> Option<BatchOutcome> {
        let batch_id = legs.first()?.batch_id?;
        let failed_leg = legs.iter().position(|leg| {
            leg.status == TransactionStatus::Failed && leg.failure_reason != Some(Refusal::BatchAborted)
        });
        Some(BatchOutcome {
            batch_id,
            legs,
            failed_leg,
        })
    }
}

impl BatchRequest {
    pub(crate) fn validate(&self, legs_max: usize) -> Result<(), EngineError> {
        if self.legs.is_empty() || self.legs.len() > legs_max {
            return Err(EngineError::BatchSize { max: legs_max });
        }
        for leg in &self.legs {
            if leg.hold.is_some() || leg.parent_id.is_some() || leg.idempotency_key.is_some() {
                return Err(EngineError::InvalidRequest(
                    "a batch leg is a plain transfer, credit or debit; the batch carries the idempotency key",
                ));
            }
            leg.validate()?;
        }
        if let Some(key) = &self.idempotency_key {
            if key.is_empty() || key.len() > IDEMPOTENCY_KEY_LENGTH_MAX {
                return Err(EngineError::InvalidRequest("an idempotency key has 1 to 255 bytes"));
            }
            if self.initiator.is_none() {
                return Err(EngineError::InvalidRequest(
                    "an idempotency key needs the user it belongs to",
                ));
            }
        }
        Ok(())
    }

    fn fingerprint(&self) -> Fingerprint {
        let identities: Vec<Identity> = self.legs.iter().map(|leg| leg.identity(true)).collect();
        Fingerprint::of(&identities)
    }
}

/// Run `request`, answering `reply` (see [`persist`]).
pub(crate) async fn execute(shared: Arc<Shared>, request: BatchRequest, reply: Reply<BatchOutcome>) {
    let owner = match (&request.idempotency_key, request.initiator) {
        (Some(key), Some(initiator)) => {
            let fingerprint = request.fingerprint();
            let claimed = shared
                .idempotency
                .claim(&shared.store, initiator, key, fingerprint, |record| {
                    record.batch_id.is_some()
                })
                .await;
            match claimed {
                Ok(Claim::Owner(owner)) => Some(owner),
                Ok(Claim::Replay(first)) => {
                    let _ = reply.send(
                        replay(&shared, &first, fingerprint)
                            .await
                            .map(|outcome| (outcome, true)),
                    );
                    return;
                }
                Err(error) => {
                    let _ = reply.send(Err(error));
                    return;
                }
            }
        }
        _ => None,
    };
    let reservation = match shared.persister.reserve() {
        Ok(reservation) => reservation,
        Err(error) => {
            let _ = reply.send(Err(error));
            return;
        }
    };
    let at = shared.clock.now();
    let batch_id = Uuid::now_v7();
    let mut records: Vec<TransactionRecord> = request
        .legs
        .iter()
        .enumerate()
        .map(|(index, leg)| {
            let mut record = new_record(leg, at);
            record.initiator = request.initiator;
            record.batch_id = Some(batch_id);
            record.leg = Some(u32::try_from(index).expect("a batch has few legs"));
            record
        })
        .collect();
    if let Some(first) = records.first_mut() {
        first.idempotency_key = request.idempotency_key.clone();
    }

    let (effects, failed_leg) = match promise(&shared, &request.legs, at).await {
        Ok(Promised::All) => (settle(&shared, &mut records).await, None),
        Ok(Promised::Refused { leg, refusal }) => {
            for (index, record) in records.iter_mut().enumerate() {
                record.failure_reason = Some(if index == leg { refusal } else { Refusal::BatchAborted });
            }
            (Vec::new(), Some(leg))
        }
        Err(error) => {
            let _ = reply.send(Err(error));
            return;
        }
    };
    let outcome = if failed_leg.is_none() { "completed" } else { "failed" };
    shared.metrics.transfers.with_label_values(&["batch", outcome]).inc();
    tracing::Span::current().record("outcome", outcome);
    let outcome = BatchOutcome {
        batch_id,
        legs: records.clone(),
        failed_leg,
    };
    let write = PendingWrite {
        audit: crate::engine::money_audit(request.audit.as_ref(), None, &records),
        transactions: records,
        effects,
        applied_at: Instant::now(),
        ack: None,
        span: tracing::Span::current(),
    };
    let durable = persist(&shared, reservation, write, outcome.clone(), reply).await;
    if durable && let Some(owner) = owner {
        owner.finish(&outcome.legs[0]);
    }
}

/// The recorded outcome of the batch whose first leg is `first`, if it is the batch
/// with `fingerprint`.
async fn replay(
    shared: &Shared,
    first: &TransactionRecord,
    fingerprint: Fingerprint,
) -> Result<BatchOutcome, EngineError> {
    let batch_id = first.batch_id.ok_or(EngineError::IdempotencyConflict)?;
    let legs = shared.store.batch_legs(batch_id).await.map_err(|error| {
        tracing::warn!(error = format!("{error:#}"), "cannot read a batch");
        EngineError::Unavailable("the store is unreachable; the batch cannot be read")
    })?;
    let identities: Vec<Identity> = legs.iter().map(Identity::of_record).collect();
    if Fingerprint::of(&identities) != fingerprint {
        return Err(EngineError::IdempotencyConflict);
    }
    BatchOutcome::from_legs(legs).ok_or(EngineError::Unavailable("a stored batch has no legs"))
}

enum Promised {
    All,
    /// Leg `leg` was refused; every promise made was dropped.
    Refused {
        leg: usize,
        refusal: Refusal,
    },
}

/// One promise made: which account, and how to drop it.
#[derive(Clone, Copy)]
struct Promise {
    account: AccountId,
    drop: BatchStep,
}

/// Make every leg's promises, in order; on the first refusal (or error) drop those made.
async fn promise(shared: &Arc<Shared>, legs: &[MoveRequest], at: DateTime<Utc>) -> Result<Promised, EngineError> {
    let mut made: Vec<Promise> = Vec::with_capacity(legs.len() * 2);
    let mut refused = None;
    'legs: for (index, leg) in legs.iter().enumerate() {
        let amount = leg.amount;
        let sides = [
            Promise {
                account: leg.from,
                drop: BatchStep::Unreserve {
                    amount,
                    reserved_at: at,
                },
            },
            Promise {
                account: leg.to,
                drop: BatchStep::DropIncoming { amount },
            },
        ];
        for (side, step) in sides
            .into_iter()
            .zip([BatchStep::Reserve { amount }, BatchStep::ReserveIncoming { amount }])
        {
            let message = BatchMessage {
                step,
                at,
                span: tracing::Span::current(),
            };
            let answer = match shared.ask(side.account, message, false).await {
                Ok(answer) => answer,
                Err(error) => {
                    refused = Some(Err(send_error(side.account, error)));
                    break 'legs;
                }
            };
            match answer {
                Ok(_) => made.push(side),
                Err(StepError::Refused { refusal, .. }) => {
                    refused = Some(Ok(Promised::Refused { leg: index, refusal }));
                    break 'legs;
                }
                Err(StepError::NotFound) => {
                    refused = Some(Ok(Promised::Refused {
                        leg: index,
                        refusal: Refusal::AccountNotFound,
                    }));
                    break 'legs;
                }
                Err(StepError::Unavailable) => {
                    refused = Some(Err(EngineError::Unavailable(
                        "an account of the batch could not be loaded",
                    )));
                    break 'legs;
                }
            }
        }
    }
    let Some(refused) = refused else {
        return Ok(Promised::All);
    };
    for promise in made.iter().rev() {
        deliver(shared, promise.account, promise.drop, at).await;
    }
    refused
}

/// Keep every promise, leg by leg: the records become completed and the effects are
/// returned in the order they were made.
async fn settle(shared: &Arc<Shared>, records: &mut [TransactionRecord]) -> Vec<AccountEffect> {
    let mut effects = Vec::with_capacity(records.len() * 2);
    for record in records.iter_mut() {
        let at = shared.clock.now();
        let amount = record.amount;
        let debited = deliver(shared, record.from, BatchStep::Settle { amount }, at)
            .await
            .expect("keeping a promise changes the account");
        let credited = deliver(shared, record.to, BatchStep::SettleIncoming { amount }, at)
            .await
            .expect("keeping a promise changes the account");
        record.debit = Some(position(&debited));
        record.credit = Some(position(&credited));
        effects.push(debited);
        effects.push(credited);
        record.status = TransactionStatus::Completed;
        record.completed_at = at;
        let kind = record.kind.as_str();
        shared.metrics.transfers.with_label_values(&[kind, "completed"]).inc();
        shared
            .metrics
            .amount_moved_minor
            .with_label_values(&[kind])
            .inc_by(record.amount.minor() as u64);
    }
    effects
}

/// Send a step that cannot be refused (keeping or dropping a promise). The account's
/// actor holds the promise and does not passivate while it does, so it is there; the
/// loop only covers a full mailbox or a send racing with the actor's start.
async fn deliver(
    shared: &Arc<Shared>,
    account: AccountId,
    step: BatchStep,
    at: DateTime<Utc>,
) -> Option<AccountEffect> {
    let mut pause = Duration::from_millis(1);
    loop {
        let message = BatchMessage {
            step,
            at,
            span: tracing::Span::current(),
        };
        match shared.ask(account, message, true).await {
            Ok(Ok(effect)) => return effect,
            other => {
                tracing::error!(%account, outcome = ?other, "a batch step could not be delivered; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}
