//! The engine's knobs, each with the limit it puts on memory, latency or load.
//!
//! The service fills an [`EngineConfig`] from the environment (design.md §8); tests and
//! benchmarks build one directly. Every default works on a laptop.

use std::time::Duration;

use crate::store::DEFAULT_DATABASE_URL;

/// When a write is acknowledged to its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The caller's future resolves only after the batch holding the write committed:
    /// an acknowledged write survives any crash. The default.
    Strict,
    /// The caller's future resolves once the write is applied in memory; a crash loses
    /// at most what the persister had not flushed yet (one flush interval, or more while
    /// the database is down). For measuring the engine alone.
    Relaxed,
}

impl Durability {
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "strict" => Some(Durability::Strict),
            "relaxed" => Some(Durability::Relaxed),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Strict => "strict",
            Durability::Relaxed => "relaxed",
        }
    }
}

/// Where account actors run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// One new arbiter (thread with its own event loop) per entry; actors are spread over
    /// them by account id. `Arbiters(available cores)` is the production setting.
    Arbiters(usize),
    /// Every actor on the caller's arbiter: deterministic, single-threaded; for tests.
    Current,
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// `postgres://…` or `sqlite:…`.
    pub database_url: String,
    pub durability: Durability,
    /// The most writes one group commit takes from the queue. Bounds the size of one
    /// database statement and the latency one batch adds to the writes behind it.
    pub batch_size_max: usize,
    /// How long the persister waits for more writes after the first one of a batch
    /// arrived. Zero: write at once; batches still form while the previous one commits.
    pub flush_delay_max: Duration,
    /// How long a batch waits for writes already under way: places taken in the queue by
    /// operations still being applied, whose writes arrive within microseconds. Under
    /// concurrent load this merges what would be a small batch into the next large one
    /// (each commit costs a round trip and a sync); a lone write never waits. Zero: never.
    pub under_way_wait_max: Duration,
    /// Writes accepted but not yet durable. When full, new writes are refused with
    /// "unavailable" instead of growing memory while the database is slow or down.
    pub queue_capacity: usize,
    /// Messages waiting in one account actor's mailbox. When full, callers get
    /// "overloaded" (HTTP 503) instead of an unbounded queue on a hot account.
    pub mailbox_capacity: usize,
    /// An account actor idle this long is passivated (stopped, its state being durable)
    /// so that memory is bounded by the accounts in use, not by all accounts.
    pub passivation_idle: Duration,
    /// How often each actor checks whether it has been idle long enough.
    pub passivation_check_interval: Duration,
    pub placement: Placement,
    /// The longest a strict-mode caller waits for its batch to commit before it is told
    /// "unavailable, outcome unknown" (the write stays queued and is written later; a
    /// retry with the same idempotency key tells the outcome).
    pub durable_wait_max: Duration,
    /// Once the persister has failed to write for this long, new writes are refused at
    /// once instead of queueing behind a database that is down.
    pub outage_refuse_after: Duration,
    /// First and largest pause between write attempts while the database fails.
    pub retry_backoff_min: Duration,
    pub retry_backoff_max: Duration,
    /// Connections of the read pool (account activation, idempotency lookups, reads).
    pub read_connections_max: u32,
    /// The most legs one atomic batch may have.
    pub batch_legs_max: usize,
    /// How often the engine looks for holds past their expiry.
    pub hold_expiry_interval: Duration,
    /// SQLite only: once the write-ahead log holds this many pages, the engine's
    /// background checkpoint empties it (see [`crate::Store::checkpoint`]); without that
    /// it only grows while writes keep coming.
    pub sqlite_wal_pages_max: u32,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            database_url: DEFAULT_DATABASE_URL.to_string(),
            durability: Durability::Strict,
            batch_size_max: 4_096,
            flush_delay_max: Duration::ZERO,
            under_way_wait_max: Duration::from_micros(400),
            queue_capacity: 100_000,
            mailbox_capacity: 1_024,
            passivation_idle: Duration::from_secs(300),
            passivation_check_interval: Duration::from_secs(30),
            sqlite_wal_pages_max: 32_768,
            placement: Placement::Arbiters(
                std::thread::available_parallelism()
                    .map(|cores| cores.get())
                    .unwrap_or(2),
            ),
            durable_wait_max: Duration::from_secs(10),
            outage_refuse_after: Duration::from_secs(2),
            retry_backoff_min: Duration::from_millis(20),
            retry_backoff_max: Duration::from_secs(2),
            read_connections_max: 16,
            batch_legs_max: 100,
            hold_expiry_interval: Duration::from_millis(100),
        }
    }
}
