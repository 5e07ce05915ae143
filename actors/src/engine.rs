//! The engine handle and the transfer coordinator.
//!
//! [`Engine::execute`] runs one movement as its own coordinator task (so no single
//! coordinator is a throughput ceiling, and a caller that goes away cannot leave a
//! transfer half-done): **debit** the source, **credit** the target, and when the credit
//! is refused **refund** the source and record the transfer as `rolled_back`. The record
//! and the effects go to the persister; in strict mode the caller hears back only once
//! they are durable.
//!
//! Credits and debits are transfers with the system `external` account, so the sum of
//! all balances stays zero.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::Instrument;
use uuid::Uuid;

use crate::account::{AccountEffect, AccountRules, AccountState, AccountStatus, DailyUsage, Refusal};
use crate::actor::{Credit, Debit, Refund, SetRules, SetStatus, Snapshot, StepError, Sweep};
use crate::batch::{BatchOutcome, BatchRequest};
use crate::clock::{Clock, SystemClock};
use crate::config::{Durability, EngineConfig, Placement};
use crate::error::EngineError;
use crate::idempotency::{Claim, Fingerprint, IDEMPOTENCY_KEY_LENGTH_MAX, Idempotency};
use crate::metrics::EngineMetrics;
use crate::money::{AccountId, Amount};
use crate::persister::{PendingWrite, Persister, PersisterStatus, Reservation};
use crate::record::{AuditEntry, JournalPosition, TransactionKind, TransactionRecord, TransactionStatus};
use crate::registry::{BusyActor, Registry, SendError};
use crate::shared::Shared;
use crate::store::{Store, StoreKind};

/// How long a graceful shutdown waits for operations in flight, then for the persister
/// to write what is queued. Past it, what is unwritten was never acknowledged.
const SHUTDOWN_DRAIN_MAX: Duration = Duration::from_secs(30);

/// A request to move money.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoveRequest {
    pub kind: TransactionKind,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: Amount,
    /// The user on whose behalf it runs; idempotency keys are scoped to this user.
    pub initiator: Option<i64>,
    pub idempotency_key: Option<String>,
    /// A transfer placed as a hold: reserved on the source, moved only when posted.
    pub hold: Option<HoldTerms>,
    /// For a reversal: the transaction it gives back.
    pub parent_id: Option<Uuid>,
    /// An administrative money action (an admin moving money that is not only their
    /// own): who asked, for the audit row written with the movement.
    pub audit: Option<AuditContext>,
}

/// How a transfer is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HoldTerms {
    /// When the engine voids the hold if it is still pending; none: it waits for a post
    /// or a void.
    pub expires_at: Option<DateTime<Utc>>,
}

/// What identifies a movement for idempotency: a retry must ask for the same one. A
/// hold's expiry is left out (a retry computes it anew from the same `expires_in`).
#[derive(Hash)]
pub(crate) struct Identity {
    kind: &'static str,
    from: i64,
    to: i64,
    amount: i64,
    held: bool,
    parent: Option<Uuid>,
    /// Batch legs share one key; a single movement never matches one of them.
    in_batch: bool,
}

impl Identity {
    pub(crate) fn of_record(record: &TransactionRecord) -> Identity {
        Identity {
            kind: record.kind.as_str(),
            from: record.from.get(),
            to: record.to.get(),
            amount: record.held_amount.unwrap_or(record.amount).minor(),
            held: record.held_amount.is_some(),
            parent: record.parent_id,
            in_batch: record.batch_id.is_some(),
        }
    }
}

impl MoveRequest {
    /// Move `amount` from one user account to another.
    pub fn transfer(from: AccountId, to: AccountId, amount: Amount) -> Self {
        Self::new(TransactionKind::Transfer, from, to, amount)
    }

    /// Deposit `amount` into `to` (from the external account).
    pub fn credit(to: AccountId, amount: Amount) -> Self {
        Self::new(TransactionKind::Credit, AccountId::EXTERNAL, to, amount)
    }

    /// Withdraw `amount` from `from` (to the external account).
    pub fn debit(from: AccountId, amount: Amount) -> Self {
        Self::new(TransactionKind::Debit, from, AccountId::EXTERNAL, amount)
    }

    fn new(kind: TransactionKind, from: AccountId, to: AccountId, amount: Amount) -> Self {
        MoveRequest {
            kind,
            from,
            to,
            amount,
            initiator: None,
            idempotency_key: None,
            hold: None,
            parent_id: None,
            audit: None,
        }
    }

    /// Give back `amount` of `original`: from its target to its source.
    pub(crate) fn reversal(original: &TransactionRecord, amount: Amount) -> Self {
        MoveRequest {
            parent_id: Some(original.id),
            ..Self::new(TransactionKind::Reversal, original.to, original.from, amount)
        }
    }

    /// Make this transfer a hold (a pending transfer).
    pub fn pending(mut self, expires_at: Option<DateTime<Utc>>) -> Self {
        self.hold = Some(HoldTerms { expires_at });
        self
    }

    pub fn initiated_by(mut self, user: i64) -> Self {
        self.initiator = Some(user);
        self
    }

    /// Make this an administrative money action, audited as asked by `context`.
    pub fn audited(mut self, context: AuditContext) -> Self {
        self.audit = Some(context);
        self
    }

    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    pub(crate) fn validate(&self) -> Result<(), EngineError> {
        if self.from == self.to {
            return Err(EngineError::SelfTransfer);
        }
        let parties_fit = match self.kind {
            TransactionKind::Transfer => !self.from.is_external() && !self.to.is_external(),
            TransactionKind::Credit => self.from.is_external() && !self.to.is_external(),
            TransactionKind::Debit => !self.from.is_external() && self.to.is_external(),
            TransactionKind::Reversal => true,
        };
        if (self.kind == TransactionKind::Reversal) != self.parent_id.is_some() {
            return Err(EngineError::InvalidRequest(
                "a reversal, and only a reversal, names what it reverses",
            ));
        }
        if self.hold.is_some() && self.kind != TransactionKind::Transfer {
            return Err(EngineError::InvalidRequest("only a transfer can be held"));
        }
        if !parties_fit {
            return Err(EngineError::InvalidRequest(
                "only credits and debits involve the external account, and always on one side",
            ));
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

    pub(crate) fn identity(&self, in_batch: bool) -> Identity {
        Identity {
            kind: self.kind.as_str(),
            from: self.from.get(),
            to: self.to.get(),
            amount: self.amount.minor(),
            held: self.hold.is_some(),
            parent: self.parent_id,
            in_batch,
        }
    }

    fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.identity(false))
    }
}

/// An account's balances as its actor holds them now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct AccountBalance {
    pub account: AccountId,
    pub balance: i64,
    pub held: i64,
    pub available: i64,
    pub status: AccountStatus,
    pub version: u64,
    pub rules: AccountRules,
    /// What left the account today (UTC), counted against its daily cap.
    pub debited_today: i64,
}

impl AccountBalance {
    fn of_effect(effect: &AccountEffect, today: DateTime<Utc>) -> Self {
        AccountBalance {
            account: effect.account,
            balance: effect.balance,
            held: effect.held,
            available: effect.balance - effect.held + effect.rules.overdraft_limit,
            status: effect.status,
            version: effect.version,
            rules: effect.rules,
            debited_today: debited_on(effect.usage, today),
        }
    }
}

fn debited_on(usage: DailyUsage, at: DateTime<Utc>) -> i64 {
    if usage.day == crate::account::day_of(at) {
        usage.debited
    } else {
        0
    }
}

impl AccountBalance {
    fn of_state(state: &AccountState, today: DateTime<Utc>) -> Self {
        AccountBalance {
            account: state.id,
            balance: state.balance,
            held: state.held(),
            available: state.available(),
            status: state.status,
            version: state.version,
            rules: state.rules(),
            debited_today: debited_on(state.usage, today),
        }
    }
}

/// What operators see of the actors.
#[derive(Clone, Debug, Serialize)]
pub struct ActorStats {
    pub active: usize,
    pub mailbox_depth: usize,
    /// The live actors with the deepest mailboxes.
    pub busiest_by_mailbox: Vec<BusyActor>,
    /// The live actors that handled the most messages in the last whole second.
    pub busiest_by_rate: Vec<BusyActor>,
}

/// Who asked for an administrative change, for the audit log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditContext {
    pub actor_user_id: Option<i64>,
    pub request_id: Option<String>,
}

/// A request to give back (part of) an earlier transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReversalRequest {
    pub original: Uuid,
    /// How much to give back; `None`: the whole original amount.
    pub amount: Option<Amount>,
    pub initiator: Option<i64>,
    pub idempotency_key: Option<String>,
    /// Set for an administrative reversal (see [`MoveRequest::audit`]).
    pub audit: Option<AuditContext>,
}

/// The audit rows of an administrative money action: one per transaction it recorded
/// (refused ones too: the attempt is what is audited), written in the same batch, each
/// named `action` (a hold's placement or settlement) or else by its kind.
pub(crate) fn money_audit(
    context: Option<&AuditContext>,
    action: Option<&'static str>,
    records: &[TransactionRecord],
) -> Vec<AuditEntry> {
    let Some(context) = context else {
        return Vec::new();
    };
    records
        .iter()
        .map(|record| AuditEntry {
            id: Uuid::now_v7(),
            entity_type: "transaction".into(),
            entity_id: record.id.to_string(),
            action: action.unwrap_or(record.kind.as_str()).into(),
            actor_user_id: context.actor_user_id,
            details: serde_json::json!({
                "from_user_id": record.from.get(),
                "to_user_id": record.to.get(),
                "amount_minor": record.amount.minor(),
                "status": record.status.as_str(),
                "failure_reason": record.failure_reason.map(|reason| reason.code()),
            }),
            request_id: context.request_id.clone(),
            // When this step happened: a hold's settlement completes long after it was
            // placed.
            created_at: record.completed_at,
        })
        .collect()
}

/// The engine: a cheap, cloneable handle.
#[derive(Clone, Debug)]
pub struct Engine {
    pub(crate) shared: Arc<Shared>,
    owned_arbiters: Arc<std::sync::Mutex<Vec<Arbiter>>>,
}

impl Engine {
    /// Open the store at `config.database_url` (migrating it), check conservation, and
    /// start the persister and the arbiters. Must run inside an actix `System`.
    pub async fn open(config: EngineConfig) -> anyhow::Result<Engine> {
        Self::open_with_clock(config, Arc::new(SystemClock)).await
    }

    pub async fn open_with_clock(config: EngineConfig, clock: Arc<dyn Clock>) -> anyhow::Result<Engine> {
        let store = Store::connect(&config.database_url, config.read_connections_max).await?;
        Self::open_on(store, config, clock).await
    }

    /// Open on an already connected store (tests inject faults through it).
    pub async fn open_on(store: Store, config: EngineConfig, clock: Arc<dyn Clock>) -> anyhow::Result<Engine> {
        let (sum, accounts) = store.balance_sum().await?;
        if sum == 0 {
            tracing::info!(accounts, "conservation holds: all balances sum to 0");
        } else {
            tracing::error!(accounts, sum = %sum, "CONSERVATION BROKEN: all balances sum to {sum}, not 0; run `tally verify`");
        }
        let metrics = EngineMetrics::new();
        metrics.include_store(store.metrics());
        metrics.persister_queue_capacity.set(config.queue_capacity as i64);
        let durable = Arc::new(crate::persister::DurableVersions::new());
        let durable_listener = crate::persister::ListenerSlot::default();
        let persister = Persister::start(
            &store,
            &config,
            durable.clone(),
            metrics.clone(),
            durable_listener.clone(),
        )?;
        let (owned_arbiters, handles) = match config.placement {
            Placement::Current => (Vec::new(), vec![Arbiter::current()]),
            Placement::Arbiters(count) => {
                let arbiters: Vec<Arbiter> = (0..count.max(1)).map(|_| Arbiter::new()).collect();
                let handles = arbiters.iter().map(Arbiter::handle).collect();
                (arbiters, handles)
            }
        };
        let shared = Arc::new(Shared {
            registry: Registry::new(handles, config.mailbox_capacity),
            config,
            store,
            clock,
            metrics,
            durable,
            persister,
            durable_listener,
            idempotency: Idempotency::default(),
            locks: Default::default(),
            open_holds: Default::default(),
            expiries: Default::default(),
            closing: Default::default(),
            in_flight: Default::default(),
            drained: Default::default(),
        });
        let expiring = shared.store.expiring_holds().await?;
        if !expiring.is_empty() {
            tracing::info!(
                holds = expiring.len(),
                "open holds with an expiry; those already past it are voided now"
            );
        }
        crate::holds::start_expiry(&shared, expiring);
        start_idle_sweep(&shared);
        if shared.store.kind() == StoreKind::Sqlite {
            start_checkpoints(&shared);
        }
        Ok(Engine {
            shared,
            owned_arbiters: Arc::new(std::sync::Mutex::new(owned_arbiters)),
        })
    }

    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    pub fn metrics(&self) -> &EngineMetrics {
        &self.shared.metrics
    }

    pub fn durability(&self) -> Durability {
        self.shared.config.durability
    }

    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// The engine's clock: the time it stamps on what it records.
    pub fn now(&self) -> DateTime<Utc> {
        self.shared.clock.now()
    }

    /// Run one movement. Business refusals (insufficient funds, a frozen target…) are
    /// `Ok` records with status `failed` or `rolled_back`; errors mean nothing was
    /// recorded, or (for `Unavailable` after the work began) that the outcome is not
    /// known yet.
    pub async fn execute(&self, request: MoveRequest) -> Result<TransactionRecord, EngineError> {
        self.execute_with_replay(request).await.map(|(record, _)| record)
    }

    /// [`execute`](Self::execute), also telling whether the outcome is a replay: the
    /// idempotency key was used before and nothing ran now.
    pub async fn execute_with_replay(&self, request: MoveRequest) -> Result<(TransactionRecord, bool), EngineError> {
        request.validate()?;
        let span = tracing::debug_span!(
            "ledger.transfer",
            kind = request.kind.as_str(),
            from = request.from.get(),
            to = request.to.get(),
            amount_minor = request.amount.minor(),
            outcome = tracing::field::Empty,
        );
        self.detached(span, move |shared, reply| coordinate(shared, request, reply))
            .await
    }

    /// Create an empty, active account; false when it already existed.
    pub async fn create_account(&self, id: AccountId) -> Result<bool, EngineError> {
        if id.is_external() {
            return Ok(false);
        }
        self.shared.store.create_account(id).await.map_err(EngineError::Store)
    }

    /// The account's balances as its actor holds them (activating it if needed).
    pub async fn balance(&self, id: AccountId) -> Result<AccountBalance, EngineError> {
        let state = self
            .shared
            .ask(id, Snapshot, false)
            .await
            .map_err(|error| send_error(id, error))?;
        let today = self.shared.clock.now();
        state
            .map(|state| AccountBalance::of_state(&state, today))
            .map_err(|error| step_error(id, error))
    }

    /// Freeze, unfreeze or close an account; durable (and audited) before it returns.
    pub async fn set_status(
        &self,
        id: AccountId,
        status: AccountStatus,
        audit: AuditContext,
    ) -> Result<AccountBalance, EngineError> {
        self.change_account(id, audit, |at, span| async move {
            let (before, effect) = self
                .shared
                .ask(id, SetStatus { status, at, span }, false)
                .await
                .map_err(|error| send_error(id, error))?
                .map_err(|error| step_error(id, error))??;
            let details = serde_json::json!({ "from": before.as_str(), "to": status.as_str() });
            Ok(("status_changed", details, effect))
        })
        .await
    }

    /// Replace an account's rules (overdraft limit, maximum balance, daily debit cap);
    /// durable (and audited) before it returns.
    pub async fn set_rules(
        &self,
        id: AccountId,
        rules: AccountRules,
        audit: AuditContext,
    ) -> Result<AccountBalance, EngineError> {
        self.change_account(id, audit, |at, span| async move {
            let (before, effect) = self
                .shared
                .ask(id, SetRules { rules, at, span }, false)
                .await
                .map_err(|error| send_error(id, error))?
                .map_err(|error| step_error(id, error))??;
            let details = serde_json::json!({ "from": before, "to": rules });
            Ok(("rules_changed", details, effect))
        })
        .await
    }

    /// An administrative change of one account: applied by its actor through `change`,
    /// then written with its audit entry; durable before it returns in strict mode.
    async fn change_account<F, Fut>(
        &self,
        id: AccountId,
        audit: AuditContext,
        change: F,
    ) -> Result<AccountBalance, EngineError>
    where
        F: FnOnce(DateTime<Utc>, tracing::Span) -> Fut,
        Fut: Future<Output = Result<(&'static str, serde_json::Value, AccountEffect), EngineError>>,
    {
        let _guard = self.shared.enter().ok_or(EngineError::ShuttingDown)?;
        let reservation = self.shared.persister.reserve()?;
        let at = self.shared.clock.now();
        let (action, details, effect) = change(at, tracing::Span::current()).await?;
        let entry = AuditEntry {
            id: Uuid::now_v7(),
            entity_type: "account".into(),
            entity_id: id.to_string(),
            action: action.into(),
            actor_user_id: audit.actor_user_id,
            details,
            request_id: audit.request_id,
            created_at: at,
        };
        let write = PendingWrite {
            transactions: Vec::new(),
            effects: vec![effect],
            audit: vec![entry],
            applied_at: Instant::now(),
            ack: None,
            span: tracing::Span::current(),
        };
        let strict = self.shared.config.durability == Durability::Strict;
        if let Some(ack) = self.shared.persister.submit(reservation, write, strict) {
            tokio::time::timeout(self.shared.config.durable_wait_max, ack)
                .await
                .map_err(|_| EngineError::Unavailable("the change is not durable yet; its outcome is not known"))?
                .map_err(|_| EngineError::Unavailable("the engine stopped; the outcome is not known"))?;
        }
        Ok(AccountBalance::of_effect(&effect, at))
    }

    /// Capture `amount` of the hold `id` (all of it when `None`): that amount moves to
    /// the target and the rest is released. Also tells whether the hold was already
    /// posted exactly so (a retry), in which case nothing ran now.
    pub async fn post_hold(&self, id: Uuid, amount: Option<Amount>) -> Result<(TransactionRecord, bool), EngineError> {
        self.post_hold_audited(id, amount, None).await
    }

    /// [`Engine::post_hold`], audited as an administrative money action when `audit`
    /// says who asked.
    pub async fn post_hold_audited(
        &self,
        id: Uuid,
        amount: Option<Amount>,
        audit: Option<AuditContext>,
    ) -> Result<(TransactionRecord, bool), EngineError> {
        let span = tracing::debug_span!("ledger.post_hold", hold = %id, outcome = tracing::field::Empty);
        self.detached(span, move |shared, reply| {
            crate::holds::settle(shared, id, crate::holds::Settlement::Post(amount), audit, reply)
        })
        .await
    }

    /// Release the hold `id` whole. Also tells whether it was already voided (a retry).
    pub async fn void_hold(&self, id: Uuid) -> Result<(TransactionRecord, bool), EngineError> {
        self.void_hold_audited(id, None).await
    }

    /// [`Engine::void_hold`], audited as an administrative money action when `audit` says
    /// who asked.
    pub async fn void_hold_audited(
        &self,
        id: Uuid,
        audit: Option<AuditContext>,
    ) -> Result<(TransactionRecord, bool), EngineError> {
        let span = tracing::debug_span!("ledger.void_hold", hold = %id, outcome = tracing::field::Empty);
        self.detached(span, move |shared, reply| {
            crate::holds::settle(shared, id, crate::holds::Settlement::Void, audit, reply)
        })
        .await
    }

    /// Give back `amount` (all of it when `None`) of the completed transaction or
    /// posted hold `original`: from its target to its source, linked to it. All the
    /// reversals of a transaction together give back at most its amount.
    pub async fn reverse(&self, request: ReversalRequest) -> Result<(TransactionRecord, bool), EngineError> {
        let original = self
            .shared
            .store
            .transaction(request.original)
            .await
            .map_err(EngineError::Store)?
            .ok_or(EngineError::TransactionNotFound(request.original))?;
        if original.kind == TransactionKind::Reversal || !original.moved_money() {
            return Err(EngineError::NotReversible {
                kind: original.kind,
                status: original.status,
            });
        }
        let mut movement = MoveRequest::reversal(&original, request.amount.unwrap_or(original.amount));
        movement.initiator = request.initiator;
        movement.idempotency_key = request.idempotency_key;
        movement.audit = request.audit;
        self.execute_with_replay(movement).await
    }

    /// Run every leg of `request` or none: see [`crate::batch`].
    pub async fn execute_batch(&self, request: BatchRequest) -> Result<(BatchOutcome, bool), EngineError> {
        request.validate(self.shared.config.batch_legs_max)?;
        let span = tracing::debug_span!(
            "ledger.batch",
            legs = request.legs.len(),
            outcome = tracing::field::Empty
        );
        self.detached(span, move |shared, reply| crate::batch::execute(shared, request, reply))
            .await
    }

    /// Run `work` as a task of its own (it finishes even if the caller stops waiting)
    /// and wait for the reply it sends.
    async fn detached<T, F, Fut>(&self, span: tracing::Span, work: F) -> Result<(T, bool), EngineError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Shared>, Reply<T>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let guard = self.shared.enter().ok_or(EngineError::ShuttingDown)?;
        let (reply, outcome) = oneshot::channel();
        // Boxed: the work's future is large (a transfer's holds every step's state), and
        // wrapping and spawning the task would otherwise copy it several times over;
        // a pointer is copied instead.
        let task = Box::pin(work(self.shared.clone(), reply));
        // The operation's own span is a debug one; when that level is off, the task runs
        // in its caller's span instead (a request's), so that what it logs still
        // carries the request's id.
        let span = if span.is_disabled() {
            tracing::Span::current()
        } else {
            span
        };
        tokio::spawn(
            async move {
                task.await;
                drop(guard);
            }
            .instrument(span),
        );
        outcome.await.unwrap_or(Err(EngineError::Unavailable(
            "the engine stopped; the outcome is not known",
        )))
    }

    /// Be told, after every commit and before its writes are acknowledged, which
    /// accounts' histories changed. Set once; a second listener is refused.
    pub fn set_durable_listener(&self, listener: crate::persister::DurableListener) -> Result<(), &'static str> {
        self.shared
            .durable_listener
            .set(listener)
            .map_err(|_| "a durable listener is already set")
    }

    pub fn persister_status(&self) -> PersisterStatus {
        self.shared.persister.status()
    }

    pub fn actor_stats(&self, busiest: usize) -> ActorStats {
        let now_ms = self.shared.clock.now().timestamp_millis();
        let (busiest_by_mailbox, busiest_by_rate) = self.shared.registry.busiest(busiest, now_ms);
        ActorStats {
            active: self.shared.registry.active(),
            mailbox_depth: self.shared.registry.mailbox_depth(),
            busiest_by_mailbox,
            busiest_by_rate,
        }
    }

    /// Holds placed and neither posted, voided nor expired yet, in the whole ledger.
    pub async fn open_hold_count(&self) -> Result<i64, EngineError> {
        self.shared.store.open_hold_count().await.map_err(EngineError::Store)
    }

    /// Refresh gauges that are computed rather than counted (call before a scrape).
    pub fn refresh_gauges(&self) {
        let depth = self.shared.registry.mailbox_depth();
        self.shared.metrics.actor_mailbox_depth.set(depth as i64);
        let (in_use, idle) = self.shared.store.pool_connections();
        let pool = &self.shared.store.metrics().pool_connections;
        pool.with_label_values(&["in_use"]).set(in_use as i64);
        pool.with_label_values(&["idle"]).set(idle as i64);
    }

    /// Make every live actor check for passivation now (the idle sweep asks only those
    /// the registry saw idle, every `passivation_check_interval`).
    pub async fn sweep_idle(&self) {
        self.shared.registry.broadcast(Sweep).await;
    }

    /// Whether the engine is taking writes: the persister is healthy and not shutting down.
    pub fn is_ready(&self) -> bool {
        !self.shared.closing.load(Ordering::Acquire) && self.shared.persister.status().healthy
    }

    /// Graceful shutdown: refuse new operations, let those in flight finish, write
    /// everything queued, stop the actors.
    pub async fn shutdown(&self) {
        self.shared.closing.store(true, Ordering::Release);
        let drained = async {
            loop {
                let notified = self.shared.drained.notified();
                if self.shared.in_flight.load(Ordering::Acquire) == 0 {
                    break;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_DRAIN_MAX, drained).await.is_err() {
            tracing::error!("shutdown: operations still in flight after {SHUTDOWN_DRAIN_MAX:?}");
        }
        let shared = self.shared.clone();
        resume_panic(tokio::task::spawn_blocking(move || shared.persister.flush_and_stop(SHUTDOWN_DRAIN_MAX)).await);
        self.stop_arbiters();
        tracing::info!("engine stopped; everything acknowledged is durable");
    }

    /// Stop as a crash would: nothing queued is written, nothing in flight finishes.
    /// For tests of recovery.
    pub async fn crash(&self) {
        self.shared.closing.store(true, Ordering::Release);
        let shared = self.shared.clone();
        resume_panic(tokio::task::spawn_blocking(move || shared.persister.abort()).await);
        self.stop_arbiters();
    }

    fn stop_arbiters(&self) {
        for arbiter in self.owned_arbiters.lock().expect("arbiters lock").drain(..) {
            arbiter.stop();
        }
    }
}

pub(crate) fn send_error(id: AccountId, error: SendError) -> EngineError {
    match error {
        SendError::Overloaded => EngineError::Overloaded(id),
        SendError::Unavailable => EngineError::Unavailable("an account could not be reached"),
    }
}

pub(crate) fn step_error(id: AccountId, error: StepError) -> EngineError {
    match error {
        StepError::NotFound => EngineError::AccountNotFound(id),
        StepError::Unavailable => EngineError::Unavailable("an account could not be loaded"),
        StepError::Refused { refusal, .. } => EngineError::Refused(refusal),
    }
}

/// Where an operation run as a task of its own sends its outcome: the value, and
/// whether it is a replay of an earlier request (nothing ran now).
pub(crate) type Reply<T> = oneshot::Sender<Result<(T, bool), EngineError>>;

/// One movement, start to durable. Sends its outcome on `reply` as soon as the caller
/// may have it (strict: once durable; relaxed: once applied), then finishes the
/// idempotency book-keeping, which must wait for durability in either mode.
async fn coordinate(shared: Arc<Shared>, request: MoveRequest, reply: Reply<TransactionRecord>) {
    let owner = match (&request.idempotency_key, request.initiator) {
        (Some(key), Some(initiator)) => {
            let fingerprint = request.fingerprint();
            let matches = |record: &TransactionRecord| Fingerprint::of(&Identity::of_record(record)) == fingerprint;
            match shared
                .idempotency
                .claim(&shared.store, initiator, key, fingerprint, matches)
                .await
            {
                Ok(Claim::Owner(owner)) => Some(owner),
                Ok(Claim::Replay(record)) => {
                    let _ = reply.send(Ok((*record, true)));
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
    // Reversals of one transaction run one at a time, each until it is durable, so
    // together they never give back more than the original moved.
    let _original = match request.parent_id {
        Some(parent) => match crate::reversal::admit(&shared, parent, request.amount).await {
            Ok(lock) => Some(lock),
            Err(error) => {
                let _ = reply.send(Err(error));
                return;
            }
        },
        None => None,
    };
    let reservation = match shared.persister.reserve() {
        Ok(reservation) => reservation,
        Err(error) => {
            let _ = reply.send(Err(error));
            return;
        }
    };
    let (record, effects) = match apply(&shared, &request).await {
        Ok(applied) => applied,
        Err(error) => {
            let _ = reply.send(Err(error));
            return;
        }
    };
    tracing::Span::current().record("outcome", record.status.as_str());
    let write = PendingWrite {
        audit: money_audit(
            request.audit.as_ref(),
            request.hold.map(|_| "hold_placed"),
            std::slice::from_ref(&record),
        ),
        transactions: vec![record.clone()],
        effects,
        applied_at: Instant::now(),
        ack: None,
        span: tracing::Span::current(),
    };
    let durable = persist(&shared, reservation, write, record.clone(), reply).await;
    if durable && let Some(owner) = owner {
        owner.finish(&record);
    }
}

/// A panic while stopping the persister (a bug) goes on in the caller, not into the void.
fn resume_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined
        && error.is_panic()
    {
        std::panic::resume_unwind(error.into_panic());
    }
}

/// Hand `write` to the persister and answer `reply` with `value` when the caller may
/// have it: at once in relaxed mode, once durable in strict mode (or "unavailable,
/// outcome unknown" past the longest wait). Returns once the write is durable (true)
/// or will never be (false, the engine stopped), whatever was answered.
pub(crate) async fn persist<T: Clone>(
    shared: &Arc<Shared>,
    reservation: Reservation,
    write: PendingWrite,
    value: T,
    reply: Reply<T>,
) -> bool {
    let strict = shared.config.durability == Durability::Strict;
    let submitted = Instant::now();
    let mut ack = shared
        .persister
        .submit(reservation, write, true)
        .expect("an acknowledgement was asked for");
    let mut reply = Some(reply);
    if !strict && let Some(reply) = reply.take() {
        let _ = reply.send(Ok((value.clone(), false)));
    }
    let durable_span = tracing::debug_span!("ledger.durable");
    let waited = tokio::time::timeout(shared.config.durable_wait_max, &mut ack)
        .instrument(durable_span.clone())
        .await;
    let durable = match waited {
        Ok(result) => result.is_ok(),
        Err(_) => {
            if let Some(reply) = reply.take() {
                let _ = reply.send(Err(EngineError::Unavailable(
                    "the write is not durable yet; retry with the same idempotency key to learn its outcome",
                )));
            }
            // Keep what the caller holds (an idempotency key, a hold or reversal lock)
            // until the write is durable, so a retry waits for this outcome rather than
            // applying the operation again.
            ack.instrument(durable_span).await.is_ok()
        }
    };
    shared
        .metrics
        .transfer_step_duration
        .with_label_values(&["durable"])
        .observe(submitted.elapsed().as_secs_f64());
    if let Some(reply) = reply.take() {
        let _ = reply.send(if durable {
            Ok((value, false))
        } else {
            Err(EngineError::Unavailable(
                "the engine stopped before the write was durable",
            ))
        });
    }
    durable
}

/// A new record of `request`, failed until a step says otherwise.
pub(crate) fn new_record(request: &MoveRequest, created_at: DateTime<Utc>) -> TransactionRecord {
    TransactionRecord {
        id: Uuid::now_v7(),
        kind: request.kind,
        status: TransactionStatus::Failed,
        from: request.from,
        to: request.to,
        amount: request.amount,
        debit: None,
        credit: None,
        refund: None,
        refused_version: None,
        failure_reason: None,
        initiator: request.initiator,
        idempotency_key: request.idempotency_key.clone(),
        created_at,
        completed_at: created_at,
        held_amount: request.hold.map(|_| request.amount),
        expires_at: request.hold.and_then(|hold| hold.expires_at),
        parent_id: request.parent_id,
        batch_id: None,
        leg: None,
    }
}

/// Debit, credit, and refund when the credit is refused (or, for a hold, reserve on
/// the source). Returns the record and the effects it caused, in the order they were
/// applied.
async fn apply(
    shared: &Arc<Shared>,
    request: &MoveRequest,
) -> Result<(TransactionRecord, Vec<AccountEffect>), EngineError> {
    let metrics = &shared.metrics;
    let created_at = shared.clock.now();
    let mut record = new_record(request, created_at);
    if request.hold.is_some() {
        return crate::holds::place(shared, record).await;
    }
    let step = Instant::now();
    let step_span = tracing::debug_span!("ledger.debit", account = request.from.get());
    let debit = shared
        .ask(
            request.from,
            Debit {
                amount: request.amount,
                at: created_at,
                span: step_span.clone(),
            },
            false,
        )
        .instrument(step_span)
        .await
        .map_err(|error| send_error(request.from, error))?;
    metrics
        .transfer_step_duration
        .with_label_values(&["debit"])
        .observe(step.elapsed().as_secs_f64());
    let debited = match debit {
        Ok(effect) => effect,
        Err(StepError::Refused { refusal, version }) => {
            record.failure_reason = Some(refusal);
            record.refused_version = Some(version);
            metrics
                .transfers
                .with_label_values(&[request.kind.as_str(), "failed"])
                .inc();
            return Ok((record, Vec::new()));
        }
        Err(StepError::NotFound) => return Err(EngineError::AccountNotFound(request.from)),
        Err(StepError::Unavailable) => {
            return Err(EngineError::Unavailable("the source account could not be loaded"));
        }
    };
    record.debit = Some(position(&debited));
    let effects = credit_or_refund(shared, &mut record, debited, created_at, TransactionStatus::Completed).await;
    Ok((record, effects))
}

/// The second half of a movement whose money already left the source: credit the
/// target, or, when it refuses, refund the source and record `rolled_back` with the
/// reason. Returns the effects, the source's `debited` first.
pub(crate) async fn credit_or_refund(
    shared: &Arc<Shared>,
    record: &mut TransactionRecord,
    debited: AccountEffect,
    debited_at: DateTime<Utc>,
    success: TransactionStatus,
) -> Vec<AccountEffect> {
    let metrics = &shared.metrics;
    let kind = record.kind.as_str();
    let step = Instant::now();
    let step_span = tracing::debug_span!("ledger.credit", account = record.to.get());
    let credit = shared
        .ask(
            record.to,
            Credit {
                amount: record.amount,
                at: shared.clock.now(),
                span: step_span.clone(),
            },
            true,
        )
        .instrument(step_span)
        .await;
    metrics
        .transfer_step_duration
        .with_label_values(&["credit"])
        .observe(step.elapsed().as_secs_f64());
    let refusal = match credit {
        Ok(Ok(credited)) => {
            record.status = success;
            record.credit = Some(position(&credited));
            record.completed_at = shared.clock.now();
            metrics.transfers.with_label_values(&[kind, "completed"]).inc();
            metrics
                .amount_moved_minor
                .with_label_values(&[kind])
                .inc_by(record.amount.minor() as u64);
            return vec![debited, credited];
        }
        Ok(Err(StepError::Refused { refusal, .. })) => refusal,
        Ok(Err(StepError::NotFound)) => Refusal::AccountNotFound,
        Ok(Err(StepError::Unavailable)) | Err(_) => Refusal::TargetUnavailable,
    };

    let step = Instant::now();
    let refunded = refund(shared, record.from, record.amount, debited_at)
        .instrument(tracing::debug_span!(
            "ledger.refund",
            account = record.from.get(),
            reason = refusal.code()
        ))
        .await;
    metrics
        .transfer_step_duration
        .with_label_values(&["refund"])
        .observe(step.elapsed().as_secs_f64());
    record.status = TransactionStatus::RolledBack;
    record.failure_reason = Some(refusal);
    record.refund = Some(position(&refunded));
    record.completed_at = shared.clock.now();
    metrics.transfers.with_label_values(&[kind, "rolled_back"]).inc();
    metrics.rollbacks.with_label_values(&[refusal.code()]).inc();
    vec![debited, refunded]
}

/// Every `passivation_check_interval`, ask the actors idle for `passivation_idle` to
/// passivate. Stops with the engine.
fn start_idle_sweep(shared: &Arc<Shared>) {
    crate::shared::every(shared, shared.config.passivation_check_interval, |shared| {
        let asked = shared.registry.sweep_idle(shared.idle_cutoff_ms());
        tracing::debug!(asked, "idle sweep");
        std::ops::ControlFlow::Continue(())
    });
}

/// How often the SQLite write-ahead log is copied into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// On SQLite, checkpoint the write-ahead log every [`CHECKPOINT_INTERVAL`] from a
/// connection other than the persister's, one checkpoint at a time, so that group
/// commits never wait for one. Stops with the engine.
fn start_checkpoints(shared: &Arc<Shared>) {
    let running = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let wal_pages_max = shared.config.sqlite_wal_pages_max;
    crate::shared::every(shared, CHECKPOINT_INTERVAL, move |shared| {
        if !running.swap(true, Ordering::AcqRel) {
            let store = shared.store.clone();
            let running = running.clone();
            tokio::spawn(async move {
                if let Err(error) = store.checkpoint(wal_pages_max).await {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "SQLite checkpoint failed; the next one tries again"
                    );
                }
                running.store(false, Ordering::Release);
            });
        }
        std::ops::ControlFlow::Continue(())
    });
}

/// Give a debit back. The source actor applied the debit and cannot passivate before
/// that version is durable, which needs this refund, so it is there to receive it;
/// the loop only covers a send racing with the actor's own start.
pub(crate) async fn refund(
    shared: &Arc<Shared>,
    from: AccountId,
    amount: Amount,
    debited_at: DateTime<Utc>,
) -> AccountEffect {
    let mut pause = Duration::from_millis(1);
    loop {
        let message = Refund {
            amount,
            debited_at,
            at: shared.clock.now(),
            span: tracing::Span::current(),
        };
        match shared.ask(from, message, true).await {
            Ok(Ok(effect)) => return effect,
            other => {
                tracing::error!(account = %from, outcome = ?other, "refund could not be delivered; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

pub(crate) fn position(effect: &AccountEffect) -> JournalPosition {
    JournalPosition {
        version: effect.version,
        balance_after: effect.balance,
    }
}
