//! The write-behind persister: one thread that turns applied changes into group commits.
//!
//! Coordinators hand it a [`PendingWrite`] (a transaction record and the account effects
//! it caused, or a status change with its audit row) over a crossbeam channel. The thread
//! gathers what arrived, picks the writes that may become durable now, writes them in one
//! database transaction, publishes the accounts' durable versions, and then — only then —
//! acknowledges each write (strict durability).
//!
//! **Which writes may go together.** Changes are applied in memory in each account's
//! version order, but records reach the persister in the order their transfers finish. A
//! transfer that spent money credited by a transfer still in flight must not become
//! durable before it: after a crash its balance would rest on money that never arrived.
//! So a batch takes only writes whose every effect extends its account's durable history
//! without a gap ([`select_ready`]); the others wait for the writes they depend on. Each
//! batch is therefore a causally closed set, and batches commit one after another in
//! order, so the store always holds exactly the state after some prefix of history.
//!
//! **Outages.** A failed batch is retried with exponential backoff, unchanged (writes are
//! idempotent). Meanwhile the queue fills; [`Persister::reserve`] refuses new writes once
//! it is full or once the outage has lasted `outage_refuse_after`, so callers get a fast
//! "unavailable" instead of piling up. Nothing accepted is dropped: when the database is
//! back, everything queued is written in order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use dashmap::DashMap;
use serde::Serialize;
use uuid::Uuid;

use crate::account::AccountEffect;
use crate::config::EngineConfig;
use crate::error::EngineError;
use crate::metrics::EngineMetrics;
use crate::money::AccountId;
use crate::record::{AuditEntry, TransactionRecord, TransactionStatus};
use crate::store::{Batch, Store};

/// The durable version of every active account: written by the persister after each
/// commit, inserted by an actor when it activates, removed when it passivates. An actor
/// may only passivate once its version is durable, so a later activation never loads a
/// stale row.
pub(crate) type DurableVersions = DashMap<AccountId, u64>;

/// Told, after each commit and before its writes are acknowledged, which accounts'
/// histories changed: a cache of histories invalidates them here, so no caller ever
/// reads a history older than its own acknowledged write.
pub type DurableListener = Box<dyn Fn(&[AccountId]) + Send + Sync>;

/// The listener slot, set once by the service before it serves.
#[derive(Clone, Default)]
pub(crate) struct ListenerSlot(Arc<std::sync::OnceLock<DurableListener>>);

impl ListenerSlot {
    pub fn get(&self) -> Option<&DurableListener> {
        self.0.get()
    }

    pub fn set(&self, listener: DurableListener) -> Result<(), DurableListener> {
        self.0.set(listener)
    }
}

impl std::fmt::Debug for ListenerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerSlot")
            .field("set", &self.0.get().is_some())
            .finish()
    }
}

/// One change handed to the persister.
#[derive(Debug)]
pub(crate) struct PendingWrite {
    /// The transactions this write records: one for a movement, one per leg for an
    /// atomic batch, none for a change of status or rules.
    pub transactions: Vec<TransactionRecord>,
    /// The accounts as they are right after each change this write made, in the order
    /// they were made (debit, credit, refund; a status change; the legs of a batch).
    pub effects: Vec<AccountEffect>,
    pub audit: Vec<AuditEntry>,
    pub applied_at: Instant,
    /// Resolved once the write is durable; dropped unresolved if the persister stops
    /// without writing it.
    pub ack: Option<crate::ack::AckSender>,
    /// The operation that made this write; the batch that makes it durable links to it.
    pub span: tracing::Span,
}

/// How often a batch waiting for writes under way checks whether any still are.
const UNDER_WAY_RECHECK: Duration = Duration::from_micros(50);

enum Command {
    Write(Box<PendingWrite>),
    /// Write everything queued, then stop.
    Flush,
}

/// A place in the queue, taken before anything moves so that an applied change always
/// has room to become durable. Dropping it unused gives the place back.
#[derive(Debug)]
pub(crate) struct Reservation {
    shared: Arc<PersisterShared>,
    used: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.used {
            self.shared.release(1);
        }
    }
}

/// What operators (`/api/v1/admin/persister`) and `/readyz` see of the persister.
#[derive(Clone, Debug, Serialize)]
pub struct PersisterStatus {
    pub healthy: bool,
    pub queue_depth: usize,
    pub queue_capacity: usize,
    pub batches_written: u64,
    pub writes_durable: u64,
    pub last_batch_size: usize,
    pub last_flush_duration_ms: f64,
    /// How long the oldest write of the last batch waited between being applied in
    /// memory and being durable: the apply-to-durable lag.
    pub last_batch_lag_ms: f64,
    /// Milliseconds since the current outage began; absent while healthy.
    pub failing_for_ms: Option<u64>,
    pub consecutive_failures: u64,
    /// What the current outage's last failed write met, as a kind (never the
    /// database's own text, which goes to the log); absent while healthy.
    pub last_error: Option<&'static str>,
}

/// The kind of a failed batch write, for operators: whether the database could not be
/// reached or refused the statement. The error's text stays in the log: it can quote
/// the database's internals.
fn failure_kind(error: &anyhow::Error) -> &'static str {
    match error.chain().find_map(|cause| cause.downcast_ref::<sqlx::Error>()) {
        // Connection exceptions (class 08) and a server shutting down, restarting or
        // starting up (57P01-57P03) are the database being away, not a refusal.
        Some(sqlx::Error::Database(database))
            if database
                .code()
                .is_some_and(|code| code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03")) =>
        {
            "database_unreachable"
        }
        Some(sqlx::Error::Database(_)) => "database_refused_the_batch",
        Some(
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed,
        ) => "database_unreachable",
        _ => "batch_write_failed",
    }
}

/// The last committed batch, as [`PersisterStatus`] reports it.
#[derive(Clone, Copy, Debug, Default)]
struct LastBatch {
    size: usize,
    took: Duration,
    lag: Duration,
}

#[derive(Debug)]
struct PersisterShared {
    /// Writes reserved or queued and not yet durable.
    queued: AtomicUsize,
    capacity: usize,
    /// Reference point for `failing_since_ns`.
    epoch: Instant,
    /// Nanoseconds after `epoch` at which the current outage began; 0 while healthy.
    failing_since_ns: AtomicU64,
    /// Set to stop at once, dropping everything queued (a simulated crash, or the end of
    /// a shutdown that could not flush).
    abort: AtomicBool,
    batches_written: AtomicU64,
    writes_durable: AtomicU64,
    consecutive_failures: AtomicU64,
    last_batch: Mutex<LastBatch>,
    last_error: Mutex<Option<&'static str>>,
    metrics: EngineMetrics,
}

impl PersisterShared {
    fn release(&self, count: usize) {
        self.queued.fetch_sub(count, Ordering::AcqRel);
        self.metrics.persister_queue_depth.sub(count as i64);
    }

    fn failing_for(&self) -> Option<Duration> {
        match self.failing_since_ns.load(Ordering::Acquire) {
            0 => None,
            since => Some(self.epoch.elapsed().saturating_sub(Duration::from_nanos(since))),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Persister {
    sender: Sender<Command>,
    shared: Arc<PersisterShared>,
    outage_refuse_after: Duration,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Persister {
    /// Start the persister thread. It opens its own connection to `store`'s database
    /// (lazily, so a database that is down at start only delays the first write).
    pub fn start(
        store: &Store,
        config: &EngineConfig,
        durable: Arc<DurableVersions>,
        metrics: EngineMetrics,
        listener: ListenerSlot,
    ) -> anyhow::Result<Persister> {
        let (sender, receiver) = crossbeam_channel::unbounded();
        let shared = Arc::new(PersisterShared {
            queued: AtomicUsize::new(0),
            capacity: config.queue_capacity,
            epoch: Instant::now(),
            failing_since_ns: AtomicU64::new(0),
            abort: AtomicBool::new(false),
            batches_written: AtomicU64::new(0),
            writes_durable: AtomicU64::new(0),
            consecutive_failures: AtomicU64::new(0),
            last_batch: Mutex::new(LastBatch::default()),
            last_error: Mutex::new(None),
            metrics,
        });
        let writer = Writer {
            receiver,
            store: store.clone(),
            database_url: config.database_url.clone(),
            durable,
            shared: shared.clone(),
            batch_size_max: config.batch_size_max.max(1),
            flush_delay_max: config.flush_delay_max,
            under_way_wait_max: config.under_way_wait_max,
            backoff_min: config.retry_backoff_min,
            backoff_max: config.retry_backoff_max,
            pending: Vec::new(),
            flushing: false,
            listener,
        };
        let thread = std::thread::Builder::new()
            .name("tally-persister".into())
            .spawn(move || writer.run())?;
        Ok(Persister {
            sender,
            shared,
            outage_refuse_after: config.outage_refuse_after,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Take a place in the queue, or refuse at once when the queue is full or the
    /// database has been failing for too long.
    pub fn reserve(&self) -> Result<Reservation, EngineError> {
        if let Some(failing) = self.shared.failing_for()
            && failing >= self.outage_refuse_after
        {
            self.shared
                .metrics
                .persister_refused
                .with_label_values(&["outage"])
                .inc();
            return Err(EngineError::Unavailable("the database is unreachable"));
        }
        let taken = self
            .shared
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                (queued < self.shared.capacity).then_some(queued + 1)
            });
        if taken.is_err() {
            self.shared
                .metrics
                .persister_refused
                .with_label_values(&["queue_full"])
                .inc();
            return Err(EngineError::Unavailable("the write queue is full"));
        }
        self.shared.metrics.persister_queue_depth.inc();
        Ok(Reservation {
            shared: self.shared.clone(),
            used: false,
        })
    }

    /// Queue a write in the place `reservation` holds. With `wants_ack`, the returned
    /// receiver resolves once the write is durable.
    pub fn submit(
        &self,
        mut reservation: Reservation,
        mut write: PendingWrite,
        wants_ack: bool,
    ) -> Option<crate::ack::Durable> {
        let durable = if wants_ack {
            let (ack, durable) = crate::ack::channel();
            write.ack = Some(ack);
            Some(durable)
        } else {
            None
        };
        reservation.used = true;
        if self.sender.send(Command::Write(Box::new(write))).is_err() {
            // The thread is gone (after a crash or shutdown): the write will never be
            // durable, and the dropped ack tells a waiting caller so.
            self.shared.release(1);
        }
        durable
    }

    pub fn status(&self) -> PersisterStatus {
        let last_batch = *self.shared.last_batch.lock().expect("status lock");
        let failing = self.shared.failing_for();
        PersisterStatus {
            healthy: failing.is_none(),
            queue_depth: self.shared.queued.load(Ordering::Acquire),
            queue_capacity: self.shared.capacity,
            batches_written: self.shared.batches_written.load(Ordering::Relaxed),
            writes_durable: self.shared.writes_durable.load(Ordering::Relaxed),
            last_batch_size: last_batch.size,
            last_flush_duration_ms: last_batch.took.as_secs_f64() * 1e3,
            last_batch_lag_ms: last_batch.lag.as_secs_f64() * 1e3,
            failing_for_ms: failing.map(|duration| duration.as_millis() as u64),
            consecutive_failures: self.shared.consecutive_failures.load(Ordering::Relaxed),
            last_error: *self.shared.last_error.lock().expect("status lock"),
        }
    }

    /// Write everything queued, then stop the thread. Gives up after `deadline` (the
    /// database may be down): what is still queued then was never acknowledged.
    pub fn flush_and_stop(&self, deadline: Duration) {
        let _ = self.sender.send(Command::Flush);
        let started = Instant::now();
        let thread = self.thread.lock().expect("thread lock").take();
        if let Some(thread) = thread {
            while !thread.is_finished() {
                if started.elapsed() >= deadline {
                    tracing::error!(
                        queued = self.shared.queued.load(Ordering::Acquire),
                        "shutdown: the persister could not flush in time; unwritten changes were never acknowledged"
                    );
                    self.shared.abort.store(true, Ordering::Release);
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            join_writer(thread);
        }
    }

    /// Stop at once without writing what is queued, as a crash would.
    pub fn abort(&self) {
        self.shared.abort.store(true, Ordering::Release);
        let _ = self.sender.send(Command::Flush);
        if let Some(thread) = self.thread.lock().expect("thread lock").take() {
            join_writer(thread);
        }
    }
}

/// Wait for the writer thread; a panic in it is a bug and is not swallowed: it goes on
/// in the thread that stopped the persister.
fn join_writer(thread: JoinHandle<()>) {
    if let Err(panic) = thread.join() {
        tracing::error!("the persister's thread panicked");
        std::panic::resume_unwind(panic);
    }
}

struct Writer {
    receiver: Receiver<Command>,
    store: Store,
    database_url: String,
    durable: Arc<DurableVersions>,
    shared: Arc<PersisterShared>,
    batch_size_max: usize,
    flush_delay_max: Duration,
    under_way_wait_max: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    /// Writes received and not yet written: some wait for writes they depend on.
    pending: Vec<PendingWrite>,
    flushing: bool,
    listener: ListenerSlot,
}

impl Writer {
    fn run(mut self) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, "persister: cannot build its runtime");
                return;
            }
        };
        // Inside the runtime's context from here on, so that the store's held connection
        // can go back to its pool when the store is dropped at the end.
        let _context = runtime.enter();
        // The persister's own connection: it lives on this thread's runtime.
        let store = runtime.block_on(async { self.store.writer(&self.database_url) });
        let store = match store {
            Ok(store) => store,
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "persister: cannot open its connection");
                return;
            }
        };
        loop {
            if self.aborted() {
                return;
            }
            let disconnected = self.gather();
            if self.aborted() {
                return;
            }
            let ready = select_ready(&mut self.pending, &self.durable);
            if ready.is_empty() {
                if (self.flushing || disconnected) && self.receiver.is_empty() {
                    if !self.pending.is_empty() {
                        tracing::error!(
                            blocked = self.pending.len(),
                            "persister stopping with writes whose dependencies never arrived"
                        );
                    }
                    return;
                }
                continue;
            }
            if !self.write(&runtime, &store, ready) {
                return;
            }
        }
    }

    fn aborted(&self) -> bool {
        self.shared.abort.load(Ordering::Acquire)
    }

    /// Receive what is available (blocking while there is nothing to write), at most
    /// `batch_size_max` new writes, waiting up to `flush_delay_max` for more and up to
    /// `under_way_wait_max` while writes are under way. Returns whether every sender is
    /// gone.
    fn gather(&mut self) -> bool {
        let mut received = 0;
        // Block when there is nothing to do: the queue is empty, or everything pending
        // waits for writes that have not arrived yet.
        if !self.flushing {
            match self.receiver.recv() {
                Ok(command) => received += self.accept(command),
                Err(_) => return true,
            }
        }
        let started = Instant::now();
        let linger_until = started + self.flush_delay_max;
        let under_way_until = started + self.under_way_wait_max;
        while received < self.batch_size_max {
            match self.receiver.try_recv() {
                Ok(command) => received += self.accept(command),
                Err(TryRecvError::Disconnected) => return true,
                Err(TryRecvError::Empty) => {
                    let now = Instant::now();
                    // Places taken and not yet here: writes being applied right now.
                    let under_way = self.shared.queued.load(Ordering::Acquire) > self.pending.len();
                    let until = if under_way {
                        linger_until.max(under_way_until)
                    } else {
                        linger_until
                    };
                    if self.flushing || now >= until {
                        break;
                    }
                    // In short slices, to stop waiting as soon as nothing is under way
                    // (an operation refused before its write gives its place back).
                    match self.receiver.recv_timeout((until - now).min(UNDER_WAY_RECHECK)) {
                        Ok(command) => received += self.accept(command),
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => return true,
                    }
                }
            }
        }
        false
    }

    fn accept(&mut self, command: Command) -> usize {
        match command {
            Command::Write(write) => {
                self.pending.push(*write);
                1
            }
            Command::Flush => {
                self.flushing = true;
                0
            }
        }
    }

    /// Write one batch, retrying until it commits; false when aborted meanwhile.
    fn write(&mut self, runtime: &tokio::runtime::Runtime, store: &Store, writes: Vec<PendingWrite>) -> bool {
        let batch = build_batch(&writes);
        let metrics = &self.shared.metrics;
        let mut backoff = self.backoff_min;
        let span = tracing::debug_span!(
            "persister.batch",
            writes = writes.len(),
            accounts = batch.balances.len()
        );
        for write in &writes {
            span.follows_from(&write.span);
        }
        let _entered = span.enter();
        loop {
            let started = Instant::now();
            match runtime.block_on(store.write_batch(&batch)) {
                Ok(()) => {
                    let took = started.elapsed();
                    metrics.persister_flush_duration.observe(took.as_secs_f64());
                    metrics.persister_batch_size.observe(writes.len() as f64);
                    self.committed(&batch, writes, took);
                    return true;
                }
                Err(error) => {
                    metrics.persister_retries.inc();
                    let failures = self.shared.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                    let message = format!("{error:#}");
                    if failures == 1 {
                        metrics.persister_failures.inc();
                        let since = self.shared.epoch.elapsed().as_nanos().max(1) as u64;
                        self.shared.failing_since_ns.store(since, Ordering::Release);
                        tracing::error!(error = %message, writes = writes.len(), "persister: batch write failed; retrying with backoff");
                    } else {
                        tracing::debug!(error = %message, failures, "persister: batch write failed again");
                    }
                    *self.shared.last_error.lock().expect("status lock") = Some(failure_kind(&error));
                    if !self.sleep_unless_aborted(backoff) {
                        return false;
                    }
                    backoff = (backoff * 2).min(self.backoff_max);
                }
            }
        }
    }

    fn sleep_unless_aborted(&self, pause: Duration) -> bool {
        let until = Instant::now() + pause;
        while Instant::now() < until {
            if self.aborted() {
                return false;
            }
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(10)));
        }
        !self.aborted()
    }

    fn committed(&mut self, batch: &Batch, writes: Vec<PendingWrite>, took: Duration) {
        if self.shared.consecutive_failures.swap(0, Ordering::Relaxed) > 0 {
            let outage = self.shared.failing_for().unwrap_or_default();
            tracing::info!(
                outage_ms = outage.as_millis() as u64,
                "persister: the database is back; writing again"
            );
            *self.shared.last_error.lock().expect("status lock") = None;
        }
        self.shared.failing_since_ns.store(0, Ordering::Release);
        for effect in &batch.balances {
            let mut durable = self.durable.entry(effect.account).or_insert(0);
            debug_assert!(*durable < effect.version, "durable versions only move forward");
            *durable = (*durable).max(effect.version);
        }
        if let Some(listener) = self.listener.get() {
            listener(&touched_accounts(&writes));
        }
        // Book-keeping first, acknowledgements last: whoever hears back sees a
        // persister that already counts the write as durable.
        let count = writes.len();
        self.shared.release(count);
        self.shared.batches_written.fetch_add(1, Ordering::Relaxed);
        self.shared.writes_durable.fetch_add(count as u64, Ordering::Relaxed);
        let oldest = writes.iter().map(|write| write.applied_at).min();
        *self.shared.last_batch.lock().expect("status lock") = LastBatch {
            size: count,
            took,
            lag: oldest.map(|applied| applied.elapsed()).unwrap_or_default(),
        };
        let metrics = &self.shared.metrics;
        let mut acks = Vec::with_capacity(writes.len());
        for write in writes {
            metrics
                .persister_durable_lag
                .observe(write.applied_at.elapsed().as_secs_f64());
            acks.extend(write.ack);
        }
        crate::ack::acknowledge(acks);
    }
}

/// Every account a batch's writes touch (either party of a transaction, and every
/// account whose state changed), once each.
fn touched_accounts(writes: &[PendingWrite]) -> Vec<AccountId> {
    let mut accounts: Vec<AccountId> = writes
        .iter()
        .flat_map(|write| {
            let parties = write.transactions.iter().flat_map(|record| [record.from, record.to]);
            parties.chain(write.effects.iter().map(|effect| effect.account))
        })
        .collect();
    accounts.sort_unstable();
    accounts.dedup();
    accounts
}

/// What one batch writes: every transaction and audit row of `writes`, and for each
/// account only its latest state.
fn build_batch(writes: &[PendingWrite]) -> Batch {
    let mut latest: HashMap<AccountId, AccountEffect> = HashMap::new();
    let mut records: HashMap<Uuid, usize> = HashMap::new();
    let mut batch = Batch::default();
    for write in writes {
        for record in &write.transactions {
            // A hold placed and then posted or voided before its placement was written
            // is one row: the final state supersedes the pending one.
            match records.get(&record.id) {
                Some(&index) => {
                    if batch.transactions[index].status == TransactionStatus::Pending {
                        batch.transactions[index] = record.clone();
                    }
                }
                None => {
                    records.insert(record.id, batch.transactions.len());
                    batch.transactions.push(record.clone());
                }
            }
        }
        batch.audit.extend(write.audit.iter().cloned());
        for effect in &write.effects {
            latest
                .entry(effect.account)
                .and_modify(|known| {
                    if effect.version > known.version {
                        *known = *effect;
                    }
                })
                .or_insert(*effect);
        }
    }
    // A settled hold whose pending row is not in this batch was written by an earlier
    // one (its placement's version precedes the settlement's): its row is updated.
    let placed_here: std::collections::HashSet<Uuid> = writes
        .iter()
        .flat_map(|write| &write.transactions)
        .filter(|record| record.status == TransactionStatus::Pending)
        .map(|record| record.id)
        .collect();
    let (settled, new): (Vec<TransactionRecord>, Vec<TransactionRecord>) = std::mem::take(&mut batch.transactions)
        .into_iter()
        .partition(|record| settles_earlier_hold(record) && !placed_here.contains(&record.id));
    batch.transactions = new;
    batch.settled_holds = settled;
    batch.balances = latest.into_values().collect();
    batch.balances.sort_unstable_by_key(|effect| effect.account);
    batch
}

/// Whether `record` settles a hold (posted, or voided, or rolled back at its post): the
/// hold's row was written as pending before.
fn settles_earlier_hold(record: &TransactionRecord) -> bool {
    record.held_amount.is_some()
        && matches!(
            record.status,
            TransactionStatus::Posted | TransactionStatus::Voided | TransactionStatus::RolledBack
        )
}

/// One account's durable version and the versions pending writes carry for it, in
/// order, each with the index of its write.
struct Frontier {
    durable: u64,
    versions: Vec<(u64, usize)>,
}

/// Remove from `pending` and return the largest set of writes that may become durable
/// together: for every account, the versions they carry continue its durable version
/// without a gap. Writes that wait for a missing version stay in `pending`.
///
/// Excluding one write can open a gap in another account's history (the write carried
/// that account's next version too), so exclusion repeats until nothing changes.
fn select_ready(pending: &mut Vec<PendingWrite>, durable: &DurableVersions) -> Vec<PendingWrite> {
    let mut versions: HashMap<AccountId, Vec<(u64, usize)>> = HashMap::new();
    for (index, write) in pending.iter().enumerate() {
        for effect in &write.effects {
            versions
                .entry(effect.account)
                .or_default()
                .push((effect.version, index));
        }
    }
    let mut excluded = vec![false; pending.len()];
    let frontiers: Vec<Frontier> = versions
        .into_iter()
        .map(|(account, mut list)| {
            list.sort_unstable();
            let frontier = match durable.get(&account) {
                Some(version) => *version,
                None => {
                    // An account's actor records its loaded version before it applies
                    // anything, so this cannot happen; writing on rather than stalling
                    // every write of the account is the lesser harm.
                    tracing::error!(%account, "persister: no durable version known for an account");
                    list[0].0 - 1
                }
            };
            Frontier {
                durable: frontier,
                versions: list,
            }
        })
        .collect();
    loop {
        let mut changed = false;
        for Frontier {
            durable,
            versions: list,
        } in &frontiers
        {
            let mut next = *durable + 1;
            let mut cut = list.len();
            for (position, &(version, index)) in list.iter().enumerate() {
                if version == next && !excluded[index] {
                    next += 1;
                } else {
                    cut = position;
                    break;
                }
            }
            for &(_, index) in &list[cut..] {
                if !excluded[index] {
                    excluded[index] = true;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut ready = Vec::new();
    let mut waiting = Vec::new();
    for (write, excluded) in pending.drain(..).zip(excluded) {
        if excluded {
            waiting.push(write);
        } else {
            ready.push(write);
        }
    }
    *pending = waiting;
    ready
}

#[cfg(test)]
mod tests {
    /// A database error with a SQLSTATE code, as PostgreSQL would send it.
    #[derive(Debug)]
    struct Sqlstate(&'static str);

    impl std::fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "internal detail of the database ({})", self.0)
        }
    }

    impl std::error::Error for Sqlstate {}

    impl sqlx::error::DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            "internal detail of the database"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    #[test]
    fn a_failed_write_is_named_by_its_kind_never_by_its_text() {
        let kind = |error: sqlx::Error| failure_kind(&anyhow::Error::new(error).context("writing a batch"));
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(kind(sqlx::Error::Io(io)), "database_unreachable");
        assert_eq!(kind(sqlx::Error::PoolTimedOut), "database_unreachable");
        for away in ["57P01", "57P03", "08006"] {
            let error = sqlx::Error::Database(Box::new(Sqlstate(away)));
            assert_eq!(kind(error), "database_unreachable", "{away}");
        }
        let full = sqlx::Error::Database(Box::new(Sqlstate("53100")));
        assert_eq!(kind(full), "database_refused_the_batch");
        assert_eq!(failure_kind(&anyhow::anyhow!("injected")), "batch_write_failed");
    }

    use chrono::Utc;

    use super::*;
    use crate::account::AccountStatus;

    fn effect(account: i64, version: u64) -> AccountEffect {
        AccountEffect {
            account: AccountId::new(account).unwrap(),
            version,
            balance: 0,
            held: 0,
            status: AccountStatus::Active,
            rules: Default::default(),
            usage: Default::default(),
            at: Utc::now(),
        }
    }

    fn write(effects: &[(i64, u64)]) -> PendingWrite {
        PendingWrite {
            transactions: Vec::new(),
            effects: effects
                .iter()
                .map(|&(account, version)| effect(account, version))
                .collect(),
            audit: Vec::new(),
            applied_at: Instant::now(),
            ack: None,
            span: tracing::Span::none(),
        }
    }

    fn durable(versions: &[(i64, u64)]) -> DurableVersions {
        versions
            .iter()
            .map(|&(account, version)| (AccountId::new(account).unwrap(), version))
            .collect()
    }

    fn versions_of(writes: &[PendingWrite]) -> Vec<Vec<(i64, u64)>> {
        writes
            .iter()
            .map(|write| write.effects.iter().map(|e| (e.account.get(), e.version)).collect())
            .collect()
    }

    /// A batch waits for a write whose place in the queue is taken while it is being
    /// applied, stops waiting when that place is given back, and a lone write never waits.
    #[tokio::test]
    async fn a_batch_waits_for_writes_under_way_and_only_for_them() {
        use crate::testing::{Backend, TestDb};
        let db = TestDb::create(Backend::Sqlite).await;
        let store = Store::connect(&db.url, 2).await.unwrap();
        let wait = Duration::from_secs(5);
        let config = EngineConfig {
            database_url: db.url.clone(),
            under_way_wait_max: wait,
            ..EngineConfig::default()
        };
        let persister = Persister::start(
            &store,
            &config,
            Arc::default(),
            EngineMetrics::new(),
            ListenerSlot::default(),
        )
        .unwrap();
        let written = |expected: u64, what: &str| assert_eq!(persister.status().batches_written, expected, "{what}");

        let started = Instant::now();
        let lone = persister
            .submit(persister.reserve().unwrap(), write(&[]), true)
            .unwrap();
        lone.await.unwrap();
        assert!(started.elapsed() < wait, "a lone write waited: {:?}", started.elapsed());
        written(1, "the lone write");

        let (first, second) = (persister.reserve().unwrap(), persister.reserve().unwrap());
        let first = persister.submit(first, write(&[]), true).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let second = persister.submit(second, write(&[]), true).unwrap();
        first.await.unwrap();
        second.await.unwrap();
        written(
            2,
            "the second write, under way while the first waited, joined its batch",
        );

        let (given_back, taken) = (persister.reserve().unwrap(), persister.reserve().unwrap());
        let started = Instant::now();
        let taken = persister.submit(taken, write(&[]), true).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(given_back);
        taken.await.unwrap();
        assert!(
            started.elapsed() < wait,
            "waited for a place given back: {:?}",
            started.elapsed()
        );
        written(3, "the write after the place given back");
        persister.flush_and_stop(wait);
    }

    #[test]
    fn writes_that_continue_the_durable_history_are_ready() {
        let mut pending = vec![write(&[(1, 1), (2, 1)]), write(&[(1, 2), (3, 5)])];
        let ready = select_ready(&mut pending, &durable(&[(1, 0), (2, 0), (3, 4)]));
        assert_eq!(versions_of(&ready), vec![vec![(1, 1), (2, 1)], vec![(1, 2), (3, 5)]]);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_write_waits_for_the_missing_version_it_builds_on() {
        // Version 1 of account 1 belongs to a transfer still in flight.
        let mut pending = vec![write(&[(1, 2), (2, 1)])];
        let ready = select_ready(&mut pending, &durable(&[(1, 0), (2, 0)]));
        assert!(ready.is_empty());
        assert_eq!(pending.len(), 1);
    }

    #[test]
    fn waiting_spreads_to_writes_that_build_on_a_waiting_write() {
        // The first write waits for account 3's version 1; the second builds on the
        // first through account 2, so it must wait too, although account 1 is complete.
        let mut pending = vec![write(&[(2, 1), (3, 2)]), write(&[(1, 1), (2, 2)]), write(&[(4, 1)])];
        let ready = select_ready(&mut pending, &durable(&[(1, 0), (2, 0), (3, 0), (4, 0)]));
        assert_eq!(versions_of(&ready), vec![vec![(4, 1)]]);
        assert_eq!(pending.len(), 2);
        // The missing write arrives: everything goes together.
        pending.push(write(&[(3, 1), (5, 1)]));
        let ready = select_ready(&mut pending, &durable(&[(1, 0), (2, 0), (3, 0), (4, 1), (5, 0)]));
        assert_eq!(ready.len(), 3);
        assert!(pending.is_empty());
    }

    #[test]
    fn a_refunded_transfer_and_a_transfer_between_its_debit_and_refund_go_together() {
        // Debit at version 1 and refund at version 3 of account 1, with another debit
        // at version 2 in between: each needs the other, so they share a batch.
        let mut pending = vec![write(&[(1, 2), (2, 1)]), write(&[(1, 1), (1, 3)])];
        let ready = select_ready(&mut pending, &durable(&[(1, 0), (2, 0)]));
        assert_eq!(ready.len(), 2);
    }

    #[test]
    fn writes_without_effects_are_always_ready() {
        let mut pending = vec![write(&[]), write(&[(9, 3)])];
        let ready = select_ready(&mut pending, &durable(&[(9, 1)]));
        assert_eq!(versions_of(&ready), vec![Vec::<(i64, u64)>::new()]);
        assert_eq!(pending.len(), 1);
    }

    #[test]
    fn a_batch_keeps_only_the_latest_state_of_each_account() {
        let mut first = effect(1, 1);
        first.balance = 10;
        let mut second = effect(1, 2);
        second.balance = 7;
        let writes = vec![
            PendingWrite {
                effects: vec![second],
                ..write(&[])
            },
            PendingWrite {
                effects: vec![first, effect(2, 1)],
                ..write(&[])
            },
        ];
        let batch = build_batch(&writes);
        assert_eq!(batch.balances.len(), 2);
        assert_eq!((batch.balances[0].version, batch.balances[0].balance), (2, 7));
    }

    #[test]
    fn a_hold_placed_and_settled_in_one_batch_is_written_once_in_its_final_state() {
        let placed = TransactionRecord {
            id: Uuid::now_v7(),
            kind: crate::record::TransactionKind::Transfer,
            status: TransactionStatus::Pending,
            from: AccountId::new(1).unwrap(),
            to: AccountId::new(2).unwrap(),
            amount: crate::money::Amount::from_minor(5).unwrap(),
            debit: None,
            credit: None,
            refund: None,
            refused_version: Some(1),
            failure_reason: None,
            initiator: None,
            idempotency_key: None,
            created_at: Utc::now(),
            completed_at: Utc::now(),
            held_amount: crate::money::Amount::from_minor(5).ok(),
            expires_at: None,
            parent_id: None,
            batch_id: None,
            leg: None,
        };
        let voided = TransactionRecord {
            status: TransactionStatus::Voided,
            ..placed.clone()
        };
        let other = TransactionRecord {
            id: Uuid::now_v7(),
            ..placed.clone()
        };
        // Whichever order the two writes of the hold come in, the settled state wins.
        for (first, second) in [(&placed, &voided), (&voided, &placed)] {
            let writes = vec![
                PendingWrite {
                    transactions: vec![first.clone(), other.clone()],
                    ..write(&[])
                },
                PendingWrite {
                    transactions: vec![second.clone()],
                    ..write(&[])
                },
            ];
            let batch = build_batch(&writes);
            assert_eq!(batch.transactions.len(), 2, "both new rows are inserted");
            assert_eq!(batch.transactions[0].status, TransactionStatus::Voided);
            assert_eq!(batch.transactions[1].id, other.id);
            assert!(batch.settled_holds.is_empty());
        }
        // Settled alone: its pending row was written before, so it is an update.
        let batch = build_batch(&[PendingWrite {
            transactions: vec![voided.clone()],
            ..write(&[])
        }]);
        assert!(batch.transactions.is_empty());
        assert_eq!(batch.settled_holds, vec![voided]);
    }
}
