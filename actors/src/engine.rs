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
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::Instrument;
use uuid::Uuid;

use crate::account::{AccountEffect, AccountState, AccountStatus, Refusal};
use crate::actor::{Credit, Debit, Refund, SetStatus, Snapshot, StepError, Sweep};
use crate::clock::{Clock, SystemClock};
use crate::config::{Durability, EngineConfig, Placement};
use crate::error::EngineError;
use crate::idempotency::{Claim, Fingerprint, IDEMPOTENCY_KEY_LENGTH_MAX, Idempotency};
use crate::metrics::EngineMetrics;
use crate::money::{AccountId, Amount};
use crate::persister::{PendingWrite, Persister, PersisterStatus};
use crate::record::{AuditEntry, JournalPosition, TransactionKind, TransactionRecord, TransactionStatus};
use crate::registry::{Registry, SendError};
use crate::shared::Shared;
use crate::store::Store;

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
        }
    }

    pub fn initiated_by(mut self, user: i64) -> Self {
        self.initiator = Some(user);
        self
    }

    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    fn validate(&self) -> Result<(), EngineError> {
        if self.from == self.to {
            return Err(EngineError::SelfTransfer);
        }
        let parties_fit = match self.kind {
            TransactionKind::Transfer => !self.from.is_external() && !self.to.is_external(),
            TransactionKind::Credit => self.from.is_external() && !self.to.is_external(),
            TransactionKind::Debit => !self.from.is_external() && self.to.is_external(),
        };
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

    fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            kind: self.kind,
            from: self.from,
            to: self.to,
            amount: self.amount,
        }
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
}

impl From<&AccountState> for AccountBalance {
    fn from(state: &AccountState) -> Self {
        AccountBalance {
            account: state.id,
            balance: state.balance,
            held: state.held,
            available: state.available(),
            status: state.status,
            version: state.version,
        }
    }
}

/// What operators see of the actors.
#[derive(Clone, Debug, Serialize)]
pub struct ActorStats {
    pub active: usize,
    pub mailbox_depth: usize,
    /// The accounts with the deepest mailboxes: (account, messages waiting).
    pub busiest: Vec<(AccountId, usize)>,
}

/// Who asked for an administrative change, for the audit log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditContext {
    pub actor_user_id: Option<i64>,
    pub request_id: Option<String>,
}

/// The engine: a cheap, cloneable handle.
#[derive(Clone, Debug)]
pub struct Engine {
    shared: Arc<Shared>,
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
            closing: Default::default(),
            in_flight: Default::default(),
            drained: Default::default(),
        });
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
        let guard = self.shared.enter().ok_or(EngineError::ShuttingDown)?;
        let (reply, outcome) = oneshot::channel();
        let shared = self.shared.clone();
        let span = tracing::debug_span!(
            "ledger.transfer",
            kind = request.kind.as_str(),
            from = request.from.get(),
            to = request.to.get(),
            amount_minor = request.amount.minor(),
            outcome = tracing::field::Empty,
        );
        // A task of its own: the transfer finishes even if the caller stops waiting.
        tokio::spawn(
            async move {
                coordinate(shared, request, reply).await;
                drop(guard);
            }
            .instrument(span),
        );
        outcome.await.unwrap_or(Err(EngineError::Unavailable(
            "the engine stopped; the outcome is not known",
        )))
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
        state
            .map(|state| AccountBalance::from(&state))
            .map_err(|error| step_error(id, error))
    }

    /// Freeze, unfreeze or close an account; durable (and audited) before it returns.
    pub async fn set_status(
        &self,
        id: AccountId,
        status: AccountStatus,
        audit: AuditContext,
    ) -> Result<AccountBalance, EngineError> {
        let _guard = self.shared.enter().ok_or(EngineError::ShuttingDown)?;
        let reservation = self.shared.persister.reserve()?;
        let at = self.shared.clock.now();
        let span = tracing::Span::current();
        let reply = self
            .shared
            .ask(id, SetStatus { status, at, span }, false)
            .await
            .map_err(|error| send_error(id, error))?
            .map_err(|error| step_error(id, error))?;
        let (before, effect) = reply?;
        let entry = AuditEntry {
            id: Uuid::now_v7(),
            entity_type: "account".into(),
            entity_id: id.to_string(),
            action: "status_changed".into(),
            actor_user_id: audit.actor_user_id,
            details: serde_json::json!({ "from": before.as_str(), "to": status.as_str() }),
            request_id: audit.request_id,
            created_at: at,
        };
        let write = PendingWrite {
            transaction: None,
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
        Ok(AccountBalance {
            account: id,
            balance: effect.balance,
            held: effect.held,
            available: effect.balance - effect.held,
            status: effect.status,
            version: effect.version,
        })
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
        ActorStats {
            active: self.shared.registry.active(),
            mailbox_depth: self.shared.registry.mailbox_depth(),
            busiest: self.shared.registry.busiest(busiest),
        }
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

    /// Make every live actor check for passivation now (the same check runs on a timer).
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
        let _ = tokio::task::spawn_blocking(move || shared.persister.flush_and_stop(SHUTDOWN_DRAIN_MAX)).await;
        self.stop_arbiters();
        tracing::info!("engine stopped; everything acknowledged is durable");
    }

    /// Stop as a crash would: nothing queued is written, nothing in flight finishes.
    /// For tests of recovery.
    pub async fn crash(&self) {
        self.shared.closing.store(true, Ordering::Release);
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || shared.persister.abort()).await;
        self.stop_arbiters();
    }

    fn stop_arbiters(&self) {
        for arbiter in self.owned_arbiters.lock().expect("arbiters lock").drain(..) {
            arbiter.stop();
        }
    }
}

fn send_error(id: AccountId, error: SendError) -> EngineError {
    match error {
        SendError::Overloaded => EngineError::Overloaded(id),
        SendError::Unavailable => EngineError::Unavailable("an account could not be reached"),
    }
}

fn step_error(id: AccountId, error: StepError) -> EngineError {
    match error {
        StepError::NotFound => EngineError::AccountNotFound(id),
        StepError::Unavailable => EngineError::Unavailable("an account could not be loaded"),
        StepError::Refused { refusal, .. } => EngineError::Refused(refusal),
    }
}

/// One movement, start to durable. Sends its outcome on `reply` as soon as the caller
/// may have it (strict: once durable; relaxed: once applied), then finishes the
/// idempotency book-keeping, which must wait for durability in either mode.
async fn coordinate(
    shared: Arc<Shared>,
    request: MoveRequest,
    reply: oneshot::Sender<Result<(TransactionRecord, bool), EngineError>>,
) {
    let owner = match (&request.idempotency_key, request.initiator) {
        (Some(key), Some(initiator)) => {
            match shared
                .idempotency
                .claim(&shared.store, initiator, key, request.fingerprint())
                .await
            {
                Ok(Claim::Owner(owner)) => Some(owner),
                Ok(Claim::Replay(record)) => {
                    let _ = reply.send(Ok((record, true)));
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
    let (record, effects) = match apply(&shared, &request).await {
        Ok(applied) => applied,
        Err(error) => {
            let _ = reply.send(Err(error));
            return;
        }
    };
    let strict = shared.config.durability == Durability::Strict;
    tracing::Span::current().record("outcome", record.status.as_str());
    let write = PendingWrite {
        transaction: Some(record.clone()),
        effects,
        audit: Vec::new(),
        applied_at: Instant::now(),
        ack: None,
        span: tracing::Span::current(),
    };
    let submitted = Instant::now();
    let ack = shared
        .persister
        .submit(reservation, write, true)
        .expect("an acknowledgement was asked for");
    let mut reply = Some(reply);
    if !strict && let Some(reply) = reply.take() {
        let _ = reply.send(Ok((record.clone(), false)));
    }
    let mut ack = ack;
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
            // Keep the idempotency key claimed until the write is durable, so a retry
            // waits for this outcome rather than applying the movement again.
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
            Ok((record.clone(), false))
        } else {
            Err(EngineError::Unavailable(
                "the engine stopped before the write was durable",
            ))
        });
    }
    if durable && let Some(owner) = owner {
        owner.finish(&record);
    }
}

/// Debit, credit, and refund when the credit is refused. Returns the record and the
/// effects it caused, in the order they were applied.
async fn apply(
    shared: &Arc<Shared>,
    request: &MoveRequest,
) -> Result<(TransactionRecord, Vec<AccountEffect>), EngineError> {
    let metrics = &shared.metrics;
    let created_at = shared.clock.now();
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
    let mut record = TransactionRecord {
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
    };
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

    let step = Instant::now();
    let step_span = tracing::debug_span!("ledger.credit", account = request.to.get());
    let credit = shared
        .ask(
            request.to,
            Credit {
                amount: request.amount,
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
            record.status = TransactionStatus::Completed;
            record.credit = Some(position(&credited));
            record.completed_at = shared.clock.now();
            metrics
                .transfers
                .with_label_values(&[request.kind.as_str(), "completed"])
                .inc();
            metrics
                .amount_moved_minor
                .with_label_values(&[request.kind.as_str()])
                .inc_by(request.amount.minor() as u64);
            return Ok((record, vec![debited, credited]));
        }
        Ok(Err(StepError::Refused { refusal, .. })) => refusal,
        Ok(Err(StepError::NotFound)) => Refusal::AccountNotFound,
        Ok(Err(StepError::Unavailable)) | Err(_) => Refusal::TargetUnavailable,
    };

    let step = Instant::now();
    let refunded = refund(shared, request.from, request.amount)
        .instrument(tracing::debug_span!(
            "ledger.refund",
            account = request.from.get(),
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
    metrics
        .transfers
        .with_label_values(&[request.kind.as_str(), "rolled_back"])
        .inc();
    metrics.rollbacks.with_label_values(&[refusal.code()]).inc();
    Ok((record, vec![debited, refunded]))
}

/// Give a debit back. The source actor applied the debit and cannot passivate before
/// that version is durable, which needs this refund, so it is there to receive it;
/// the loop only covers a send racing with the actor's own start.
async fn refund(shared: &Arc<Shared>, from: AccountId, amount: Amount) -> AccountEffect {
    let mut pause = Duration::from_millis(1);
    loop {
        let message = Refund {
            amount,
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

fn position(effect: &AccountEffect) -> JournalPosition {
    JournalPosition {
        version: effect.version,
        balance_after: effect.balance,
    }
}
