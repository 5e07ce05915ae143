//! Tally's engine: account actors, the transfer coordinator, the write-behind persister
//! and the stores (PostgreSQL, SQLite). It knows nothing of HTTP.
//!
//! * [`account`] — the balance logic of one account, a pure state machine;
//! * `actor` / `registry` — one actix actor per active account, activated on demand,
//!   passivated when idle, spread over one arbiter per core;
//! * [`engine`] — the public handle and the coordinator (debit → credit → refund);
//!   `holds` (pending transfers: post, void, expiry), [`batch`] (atomic multi-leg
//!   batches) and `reversal` build on it;
//! * [`persister`] — batching group commits with strict or relaxed durability;
//! * [`store`] — the database behind one interface, including what the service reads
//!   and writes directly: users, refresh tokens, audit rows, histories and journals.
//!
//! The invariants it keeps are those of design.md §11; [`Store::verify`] checks them.

pub mod account;
mod ack;
mod actor;
pub mod batch;
pub mod clock;
pub mod config;
pub mod engine;
pub mod error;
mod holds;
mod idempotency;
pub mod metrics;
pub mod money;
pub mod persister;
pub mod record;
mod registry;
mod reversal;
mod shared;
pub mod store;
#[cfg(feature = "test-support")]
pub mod testing;

pub use account::{AccountEffect, AccountRules, AccountState, AccountStatus, Refusal, StatusChangeRefusal};
pub use batch::{BatchOutcome, BatchRequest};
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{Durability, EngineConfig, Placement};
pub use engine::{AccountBalance, ActorStats, AuditContext, Engine, HoldTerms, MoveRequest, ReversalRequest};
pub use error::EngineError;
pub use idempotency::IDEMPOTENCY_KEY_LENGTH_MAX;
pub use metrics::EngineMetrics;
pub use money::{AMOUNT_MAX_MINOR, AccountId, Amount, AmountError, InvalidAccountId};
pub use persister::PersisterStatus;
pub use record::{AuditEntry, JournalPosition, TransactionKind, TransactionRecord, TransactionStatus};
pub use registry::BusyActor;
pub use store::{
    DEFAULT_DATABASE_URL, Faults, HistoryCursor, HistoryItem, HistoryQuery, JournalEntry, NewUser, PAGE_SIZE_MAX,
    RefreshToken, RefreshUse, Role, Store, StoreKind, UserChanges, UserRecord, UserWriteError, Violation,
};
