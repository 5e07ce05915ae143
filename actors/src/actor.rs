//! The account actor: owns one account's [`AccountState`] and serializes every change
//! to it. It runs on one of the engine's arbiters (chosen by account id) and is reached
//! only through the [`Registry`](crate::registry::Registry), which guarantees at most one
//! live actor per account.
//!
//! Life cycle: started by the registry on first use, it loads its state from the store
//! before handling any message (`ctx.wait` holds the mailbox). A missing account or a
//! failed load answers the queued messages and stops. Once idle for the passivation
//! time *and* with its latest version durable, it stops when the engine's idle sweep
//! asks (one sweep over the registry for all actors, so an actor carries no timer of
//! its own); the next message activates a fresh actor that loads exactly that state.
//!
//! Every handler is synchronous: it calls the pure balance logic with the time the
//! coordinator passed in and replies. Durability is the coordinator's and persister's
//! business; the actor never awaits I/O after its load.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::account::{
    AccountEffect, AccountRules, AccountState, AccountStatus, HoldRefusal, Refusal, StatusChangeRefusal,
};
use crate::money::Amount;
use crate::record::TransactionRecord;
use crate::registry::ActorCell;
use crate::shared::Shared;

/// Why an actor could not apply a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StepError {
    /// The balance logic refused the change; the account is still at `version`.
    Refused { refusal: Refusal, version: u64 },
    /// The account does not exist in the store.
    NotFound,
    /// The account could not be loaded (the store is unreachable).
    Unavailable,
}

/// The state an actor can be in.
#[derive(Debug)]
enum Life {
    Ready(AccountState),
    Missing,
    LoadFailed,
}

#[derive(Debug)]
pub(crate) struct AccountActor {
    /// Shared with the registry entry: the account, this actor's generation, the
    /// mailbox depth (the registry refuses new messages at the mailbox capacity) and
    /// when a message was last handled. The actor itself is kept to what fits the
    /// smaller task allocation: at a million accounts every byte here counts.
    cell: Arc<ActorCell>,
    /// `None` only until the load finishes; no message is handled before that.
    life: Option<Life>,
    shared: Arc<Shared>,
}

impl AccountActor {
    pub(crate) fn new(cell: Arc<ActorCell>, shared: Arc<Shared>) -> Self {
        AccountActor {
            cell,
            life: None,
            shared,
        }
    }

    /// Book-keeping common to every handled message; returns when handling began.
    fn received(&mut self) -> Instant {
        self.cell.depth.fetch_sub(1, Ordering::AcqRel);
        let now_ms = self.shared.clock.now().timestamp_millis();
        self.cell.last_active_ms.store(now_ms, Ordering::Relaxed);
        self.cell.count_message(now_ms);
        Instant::now()
    }

    /// A span for handling one message, child of the step that sent it.
    fn span(&self, parent: &tracing::Span, message: &'static str) -> tracing::span::EnteredSpan {
        tracing::debug_span!(parent: parent, "actor.handle", message, account = self.cell.id.get()).entered()
    }

    fn handled(&self, message: &str, began: Instant) {
        self.shared
            .metrics
            .actor_message_duration
            .with_label_values(&[message])
            .observe(began.elapsed().as_secs_f64());
    }

    fn state(&mut self) -> Result<&mut AccountState, StepError> {
        match self.life.as_mut() {
            Some(Life::Ready(state)) => Ok(state),
            Some(Life::Missing) => Err(StepError::NotFound),
            Some(Life::LoadFailed) | None => Err(StepError::Unavailable),
        }
    }

    /// Passivate when idle long enough, with nothing queued and everything durable.
    fn passivate_if_idle(&mut self, ctx: &mut Context<Self>) {
        let Some(Life::Ready(state)) = &self.life else {
            return;
        };
        if !self.cell.is_idle_since(self.shared.idle_cutoff_ms()) || !state.is_at_rest() {
            return;
        }
        let version = state.version;
        // Removing the durable entry first and the registry entry second matters: a new
        // actor can only be created after the registry entry is gone, and it inserts its
        // own durable entry, which must not be removed by this one.
        let removed = self
            .shared
            .durable
            .remove_if(&self.cell.id, |_, durable| *durable >= version);
        if removed.is_none() {
            return;
        }
        self.shared.registry.forget(&self.cell);
        self.shared.metrics.actor_passivations.inc();
        tracing::debug!(account = %self.cell.id, version, "passivating an idle account actor");
        ctx.stop();
    }
}

impl Actor for AccountActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.shared.metrics.actors_active.inc();
        let store = self.shared.store.clone();
        let id = self.cell.id;
        let load = async move { store.load_account(id).await };
        ctx.wait(load.into_actor(self).map(|loaded, actor, ctx| match loaded {
            Ok(Some(state)) => {
                actor.shared.durable.insert(actor.cell.id, state.version);
                actor.shared.metrics.actor_activations.inc();
                actor.life = Some(Life::Ready(state));
            }
            Ok(None) => {
                actor.life = Some(Life::Missing);
                actor.retire(ctx);
            }
            Err(error) => {
                tracing::warn!(account = %actor.cell.id, error = format!("{error:#}"), "cannot load an account");
                actor.life = Some(Life::LoadFailed);
                actor.retire(ctx);
            }
        }));
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        self.shared.metrics.actors_active.dec();
        // Messages still queued are dropped with the mailbox; their senders see the
        // mailbox closed and retry on a new actor.
        self.shared.registry.forget(&self.cell);
    }
}

impl AccountActor {
    /// An actor that could not load leaves the registry at once (so the next caller
    /// tries a fresh load), answers what is already queued, and stops shortly after.
    fn retire(&mut self, ctx: &mut Context<Self>) {
        self.shared.registry.forget(&self.cell);
        ctx.run_later(RETIRE_AFTER, |_, ctx| ctx.stop());
    }
}

/// How long an actor that failed to load keeps answering messages already sent to it
/// before it stops: long enough to drain its mailbox, short enough to hold no memory.
const RETIRE_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

/// Take `amount` out of the account (the first step of a transfer).
#[derive(Clone, Debug, Message)]
#[rtype(result = "Result<AccountEffect, StepError>")]
pub(crate) struct Debit {
    pub amount: Amount,
    pub at: DateTime<Utc>,
    /// The coordinator step this message belongs to (a disabled span unless tracing
    /// is exported).
    pub span: tracing::Span,
}

impl Handler<Debit> for AccountActor {
    type Result = Result<AccountEffect, StepError>;

    fn handle(&mut self, message: Debit, _ctx: &mut Self::Context) -> Self::Result {
        let _span = self.span(&message.span, "debit");
        let began = self.received();
        let result = self.state().and_then(|state| {
            let version = state.version;
            state
                .debit(message.amount, message.at)
                .map_err(|refusal| StepError::Refused { refusal, version })
        });
        self.handled("debit", began);
        result
    }
}

/// Put `amount` into the account (the second step of a transfer).
#[derive(Clone, Debug, Message)]
#[rtype(result = "Result<AccountEffect, StepError>")]
pub(crate) struct Credit {
    pub amount: Amount,
    pub at: DateTime<Utc>,
    /// The coordinator step this message belongs to (a disabled span unless tracing
    /// is exported).
    pub span: tracing::Span,
}

impl Handler<Credit> for AccountActor {
    type Result = Result<AccountEffect, StepError>;

    fn handle(&mut self, message: Credit, _ctx: &mut Self::Context) -> Self::Result {
        let _span = self.span(&message.span, "credit");
        let began = self.received();
        let result = self.state().and_then(|state| {
            let version = state.version;
            state
                .credit(message.amount, message.at)
                .map_err(|refusal| StepError::Refused { refusal, version })
        });
        self.handled("credit", began);
        result
    }
}

/// Give back a debit whose credit was refused. Sent only to an actor that applied the
/// debit and cannot have passivated since (its version is not durable yet).
#[derive(Clone, Debug, Message)]
#[rtype(result = "Result<AccountEffect, StepError>")]
pub(crate) struct Refund {
    pub amount: Amount,
    /// When the debit being refunded was applied (the daily cap gives it back if that
    /// was today).
    pub debited_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
    /// The coordinator step this message belongs to (a disabled span unless tracing
    /// is exported).
    pub span: tracing::Span,
}

impl Handler<Refund> for AccountActor {
    type Result = Result<AccountEffect, StepError>;

    fn handle(&mut self, message: Refund, _ctx: &mut Self::Context) -> Self::Result {
        let _span = self.span(&message.span, "refund");
        let began = self.received();
        let result = self
            .state()
            .map(|state| state.refund(message.amount, message.debited_at, message.at));
        self.handled("refund", began);
        result
    }
}

/// Change the account's status; replies with the status before and the effect.
#[derive(Clone, Debug, Message)]
#[rtype(result = "Result<Result<(AccountStatus, AccountEffect), StatusChangeRefusal>, StepError>")]
pub(crate) struct SetStatus {
    pub status: AccountStatus,
    pub at: DateTime<Utc>,
    pub span: tracing::Span,
}

impl Handler<SetStatus> for AccountActor {
    type Result = Result<Result<(AccountStatus, AccountEffect), StatusChangeRefusal>, StepError>;

    fn handle(&mut self, message: SetStatus, _ctx: &mut Self::Context) -> Self::Result {
        let _span = self.span(&message.span, "set_status");
        let began = self.received();
        let result = self.state().map(|state| {
            let before = state.status;
            state
                .set_status(message.status, message.at)
                .map(|effect| (before, effect))
        });
        self.handled("set_status", began);
        result
    }
}

/// Read the account's current state.
#[derive(Clone, Copy, Debug, Message)]
#[rtype(result = "Result<AccountState, StepError>")]
pub(crate) struct Snapshot;

impl Handler<Snapshot> for AccountActor {
    type Result = Result<AccountState, StepError>;

    fn handle(&mut self, _message: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        let began = self.received();
        let result = self.state().map(|state| state.clone());
        self.handled("snapshot", began);
        result
    }
}

/// Check whether to passivate: sent by the idle sweep to actors the registry saw idle,
/// and to every actor by [`Engine::sweep_idle`](crate::Engine::sweep_idle) (tests move a
/// manual clock and then sweep). Counts as activity only in the mailbox, not for
/// idleness.
#[derive(Clone, Copy, Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Sweep;

impl Handler<Sweep> for AccountActor {
    type Result = ();

    fn handle(&mut self, _message: Sweep, ctx: &mut Self::Context) {
        self.cell.depth.fetch_sub(1, Ordering::AcqRel);
        self.passivate_if_idle(ctx);
    }
}

/// Why a hold could not be captured or released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HoldStepError {
    Step(StepError),
    Hold(HoldRefusal),
}

/// Reserve a hold on this account (a pending transfer from it).
#[derive(Clone, Debug, Message)]
#[rtype(result = "Result<(AccountEffect, TransactionRecord), StepError>")]
pub(crate) struct PlaceHold {
    pub record: TransactionRecord,
    pub at: DateTime<Utc>,
    pub span: tracing::Span,
}

impl Handler<PlaceHold> for AccountActor {
    type Result = Result<(AccountEffect, TransactionRecord), StepError>;

    fn handle(&mut self, message: PlaceHold, _ctx: &mut Self::Context) -> Self::Result {
        let _span = self.span(&message.span, "place_hold");
        let began = self.received();
        let id = message.record.id;
        let result = self.state().and_then(|state| {
            let version = state.version;
            state
                .place_hold(message.record, message.at)
                .map(|effect| (effect, state.holds()[&id].clone()))
                .map_err(|refusal| StepError::Refused { refusal, version })
        });
        self.handled("place_hold", began);
        result
    }
}

/// Capture (all or part of) an open hold: the amount leaves, the rest is released.
#[derive(Clone, Debug, Message)]
#[rtype(result = "Result<(AccountEffect, TransactionRecord), HoldStepError>")]
pub(crate) struct CaptureHold {
    pub id: Uuid,
    pub amount: Option<Amount>,
    pub at: DateTime<Utc>,
    pub span: tracing::Span,
}

impl Handler<CaptureHold> for AccountActor {
    type Result = Result<(AccountEffect, TransactionRecord), HoldStepError>;

    fn handle(&mut self, message: CaptureHold, _ctx: &mut Self::Context) -> Self::Result {
        let _span = self.span(&message.span, "capture_hold");
        let began = self.received();
        let result = self.state().map_err(HoldStepError::Step).and_then(|state| {
            state
                .capture_hold(message.id, message.amount, message.at)
                .map_err(HoldStepError::Hold)
        });
        self.handled("capture_hold", began);
        result
    }
}

/// Release an open hold whole (a void, or an expiry).
#[derive(Clone, Debug, Message)]
#[rtype(result = "Result<(AccountEffect, TransactionRecord), HoldStepError>")]
pub(crate) struct ReleaseHold {
    pub id: Uuid,
    pub at: DateTime<Utc>,
    pub span: tracing::Span,
}

impl Handler<ReleaseHold> for AccountActor {
    type Result = Result<(AccountEffect, TransactionRecord), HoldStepError>;

    fn handle(&mut self, message: ReleaseHold, _ctx: &mut Self::Context) -> Self::Result {
        let _span = self.span(&message.span, "release_hold");
        let began = self.received();
        let result = self
            .state()
            .map_err(HoldStepError::Step)
            .and_then(|state| state.release_hold(message.id, message.at).map_err(HoldStepError::Hold));
        self.handled("release_hold", began);
        result
    }
}

/// The legs of an atomic batch, as one account sees them: promise, then keep or drop
/// the promise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BatchStep {
    /// Promise `amount` out (checked like a debit).
    Reserve {
        amount: Amount,
    },
    /// Promise room for `amount` in (checked like a credit).
    ReserveIncoming {
        amount: Amount,
    },
    /// Drop a promise out made at `reserved_at`.
    Unreserve {
        amount: Amount,
        reserved_at: DateTime<Utc>,
    },
    DropIncoming {
        amount: Amount,
    },
    /// Keep a promise out: the amount leaves.
    Settle {
        amount: Amount,
    },
    /// Keep a promise in: the amount arrives.
    SettleIncoming {
        amount: Amount,
    },
}

/// One step of an atomic batch on this account. Promises are refused like debits and
/// credits; dropping and keeping them cannot fail. Keeping one is a durable change.
#[derive(Clone, Debug, Message)]
#[rtype(result = "Result<Option<AccountEffect>, StepError>")]
pub(crate) struct BatchMessage {
    pub step: BatchStep,
    pub at: DateTime<Utc>,
    pub span: tracing::Span,
}

impl Handler<BatchMessage> for AccountActor {
    type Result = Result<Option<AccountEffect>, StepError>;

    fn handle(&mut self, message: BatchMessage, _ctx: &mut Self::Context) -> Self::Result {
        let _span = self.span(&message.span, "batch");
        let began = self.received();
        let at = message.at;
        let result = self.state().and_then(|state| {
            let version = state.version;
            let refused = |refusal| StepError::Refused { refusal, version };
            match message.step {
                BatchStep::Reserve { amount } => state.reserve(amount, at).map(|()| None).map_err(refused),
                BatchStep::ReserveIncoming { amount } => state.reserve_incoming(amount).map(|()| None).map_err(refused),
                BatchStep::Unreserve { amount, reserved_at } => {
                    state.unreserve(amount, reserved_at, at);
                    Ok(None)
                }
                BatchStep::DropIncoming { amount } => {
                    state.unreserve_incoming(amount);
                    Ok(None)
                }
                BatchStep::Settle { amount } => Ok(Some(state.settle_reserved(amount, at))),
                BatchStep::SettleIncoming { amount } => Ok(Some(state.settle_incoming(amount, at))),
            }
        });
        self.handled("batch", began);
        result
    }
}

/// Replace the account's rules.
#[derive(Clone, Debug, Message)]
#[rtype(result = "Result<Result<(AccountRules, AccountEffect), StatusChangeRefusal>, StepError>")]
pub(crate) struct SetRules {
    pub rules: AccountRules,
    pub at: DateTime<Utc>,
    pub span: tracing::Span,
}

impl Handler<SetRules> for AccountActor {
    type Result = Result<Result<(AccountRules, AccountEffect), StatusChangeRefusal>, StepError>;

    fn handle(&mut self, message: SetRules, _ctx: &mut Self::Context) -> Self::Result {
        let _span = self.span(&message.span, "set_rules");
        let began = self.received();
        let result = self.state().map(|state| {
            let before = state.rules();
            state
                .set_rules(message.rules, message.at)
                .map(|effect| (before, effect))
        });
        self.handled("set_rules", began);
        result
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// A million account actors cost a million tokio tasks, each allocated whole and
    /// aligned to 128 bytes: with this future at 408 bytes or less the task takes 512
    /// bytes, above it 640. A field added to the actor or its state must keep it there
    /// (rarely used state belongs in `AccountState`'s extras).
    #[test]
    fn an_actor_task_fits_the_smaller_allocation() {
        let size = std::mem::size_of::<actix::dev::ContextFut<AccountActor, Context<AccountActor>>>();
        assert!(size <= 408, "the actor's context future is {size} bytes");
    }
}
