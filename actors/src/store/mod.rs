//! Stores: where the engine's state becomes durable. PostgreSQL is the production store,
//! SQLite the embedded default; both sit behind [`Store`] and behave the same.
//!
//! The persister is the only writer of `transactions`, `balances` (after creation) and
//! `audit_logs`: it hands over one [`Batch`] at a time, written in one database
//! transaction with set-based statements. Batch writes are idempotent (rows are keyed by
//! engine-generated ids and balance rows only move forward in version), so a batch whose
//! commit outcome was lost with the connection can simply be written again.
//!
//! The service writes users ([`UserRecord`]), refresh tokens ([`RefreshToken`]) and
//! administrative audit rows directly, and reads an account's past back: its history
//! ([`HistoryQuery`]), its journal and its balance at a time ([`JournalEntry`]).

mod activation;
mod held;
mod history;
mod postgres;
mod sqlite;
mod users;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::account::{AccountEffect, AccountRules, AccountState, AccountStatus, DailyUsage, Refusal};
use crate::clock::{Clock, SystemClock};
use crate::metrics::StoreMetrics;
use crate::money::{AccountId, Amount};
use crate::record::{AuditEntry, JournalPosition, TransactionKind, TransactionRecord, TransactionStatus};
use history::{Dialect, JournalBound, Statement};

pub use history::{HistoryCursor, HistoryItem, HistoryQuery, JournalEntry};
pub use users::{NewUser, RefreshToken, RefreshUse, Role, UserChanges, UserRecord, UserWriteError};

/// The default store: an SQLite file under `./data/`, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/tally.db";

/// Everything one group commit writes.
#[derive(Debug, Default)]
pub struct Batch {
    /// New rows.
    pub transactions: Vec<TransactionRecord>,
    /// Holds already written as pending by an earlier batch, now settled (posted,
    /// voided, expired): their rows are updated.
    pub settled_holds: Vec<TransactionRecord>,
    /// The latest effect of every account the batch touches: one balance row update
    /// per distinct account.
    pub balances: Vec<AccountEffect>,
    pub audit: Vec<AuditEntry>,
}

/// Failures injected by tests to exercise the outage paths without stopping a server.
#[derive(Debug, Default)]
pub struct Faults {
    fail_writes: AtomicBool,
    fail_reads: AtomicBool,
}

impl Faults {
    /// Make every batch write fail (as if the database were down) until cleared.
    pub fn fail_writes(&self, fail: bool) {
        self.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// Make every read (account loads, lookups) fail until cleared.
    pub fn fail_reads(&self, fail: bool) {
        self.fail_reads.store(fail, Ordering::SeqCst);
    }

    fn check_write(&self) -> anyhow::Result<()> {
        if self.fail_writes.load(Ordering::Relaxed) {
            bail!("injected write failure");
        }
        Ok(())
    }

    fn check_read(&self) -> anyhow::Result<()> {
        if self.fail_reads.load(Ordering::Relaxed) {
            bail!("injected read failure");
        }
        Ok(())
    }
}

/// Which database a store talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Postgres,
    Sqlite,
}

/// A broken invariant found by [`Store::verify`] (design.md §11).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// The balances, the external account included, do not sum to zero.
    Conservation { sum: i128 },
    /// A user account is below zero by more than its overdraft limit.
    NegativeBalance { account: i64, balance: i64 },
    /// An account's held amount differs from the sum of its open holds.
    HeldMismatch { account: i64, held: i64, open_holds: i64 },
    /// An account's balance differs from the sum of its journal deltas.
    BalanceMismatch {
        account: i64,
        balance: i64,
        journal_sum: i128,
    },
    /// A journal entry's balance after is not the previous one plus its delta.
    JournalBreak { account: i64, version: i64 },
    /// Two journal entries of one account carry the same version.
    DuplicateVersion { account: i64, version: i64 },
    /// An account's stored version is behind its own journal.
    VersionBehindJournal {
        account: i64,
        version: i64,
        journal_version: i64,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::Conservation { sum } => {
                write!(f, "conservation: all balances sum to {sum}, not 0")
            }
            Violation::NegativeBalance { account, balance } => {
                write!(
                    f,
                    "negative balance: account {account} holds {balance}, beyond its overdraft limit"
                )
            }
            Violation::HeldMismatch {
                account,
                held,
                open_holds,
            } => write!(
                f,
                "held mismatch: account {account} holds {held} back but its open holds sum to {open_holds}"
            ),
            Violation::BalanceMismatch {
                account,
                balance,
                journal_sum,
            } => write!(
                f,
                "balance mismatch: account {account} holds {balance} but its journal sums to {journal_sum}"
            ),
            Violation::JournalBreak { account, version } => write!(
                f,
                "journal break: account {account} version {version} does not follow from the entry before it"
            ),
            Violation::DuplicateVersion { account, version } => {
                write!(
                    f,
                    "duplicate journal version: account {account} version {version} appears twice"
                )
            }
            Violation::VersionBehindJournal {
                account,
                version,
                journal_version,
            } => write!(
                f,
                "stale balance row: account {account} is at version {version} but its journal reaches {journal_version}"
            ),
        }
    }
}

/// A handle to the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    faults: Arc<Faults>,
    metrics: Arc<StoreMetrics>,
    activations: Arc<activation::Activations>,
}

#[derive(Clone, Debug)]
enum Backend {
    Postgres(postgres::PgStore),
    Sqlite(sqlite::SqliteStore),
}

/// The most rows one page of history, journal or users may hold; larger requests are
/// clamped. A page is built in memory and sent as one response, so this bounds both;
/// 1000 rows still let a client walk a long history in few round trips.
pub const PAGE_SIZE_MAX: i64 = 1000;

/// A requested page size within `0..=PAGE_SIZE_MAX`.
fn page_size(limit: i64) -> i64 {
    limit.clamp(0, PAGE_SIZE_MAX)
}

/// How long a caller waits for a pooled connection before the store counts as
/// unavailable; short, so an outage turns into fast 503s rather than piled-up requests.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

impl Store {
    /// Run one store operation, counting it and timing it by name.
    async fn observed<T, E>(&self, operation: &'static str, work: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        let started = std::time::Instant::now();
        let result = work.await;
        self.metrics.record(operation, result.is_ok(), started.elapsed());
        result
    }

    /// Connect to `url` (`postgres://…` or `sqlite://…`) and apply pending migrations.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Store> {
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres(postgres::PgStore::connect(url, max_connections, ACQUIRE_TIMEOUT).await?)
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite(sqlite::SqliteStore::connect(url, max_connections, ACQUIRE_TIMEOUT).await?)
        } else {
            bail!("DATABASE_URL must start with postgres://, postgresql:// or sqlite: (got {url:?})");
        };
        let store = Store {
            backend,
            faults: Arc::new(Faults::default()),
            metrics: Arc::new(StoreMetrics::new()),
            activations: Arc::default(),
        };
        store.migrate().await.context("applying migrations")?;
        Ok(store)
    }

    /// A second handle on the same database with its own single connection, opened
    /// lazily on the caller's runtime: the persister's. It shares this store's injected
    /// faults.
    pub fn writer(&self, url: &str) -> anyhow::Result<Store> {
        let backend = match &self.backend {
            Backend::Postgres(_) => Backend::Postgres(postgres::PgStore::connect_writer(url, ACQUIRE_TIMEOUT)?),
            Backend::Sqlite(_) => Backend::Sqlite(sqlite::SqliteStore::connect_writer(url, ACQUIRE_TIMEOUT)?),
        };
        Ok(Store {
            backend,
            faults: self.faults.clone(),
            metrics: self.metrics.clone(),
            activations: Arc::default(),
        })
    }

    /// On SQLite, checkpoint the write-ahead log from a pool connection (the persister's
    /// own connection leaves that to this), and empty the log once it holds
    /// `wal_pages_max` pages; nothing to do on PostgreSQL.
    pub async fn checkpoint(&self, wal_pages_max: u32) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Postgres(_) => Ok(()),
            Backend::Sqlite(store) => self.observed("checkpoint", store.checkpoint(wal_pages_max)).await,
        }
    }

    pub fn kind(&self) -> StoreKind {
        match &self.backend {
            Backend::Postgres(_) => StoreKind::Postgres,
            Backend::Sqlite(_) => StoreKind::Sqlite,
        }
    }

    /// The PostgreSQL pool, for the service's own tables; `None` on SQLite.
    pub fn postgres_pool(&self) -> Option<&sqlx::PgPool> {
        match &self.backend {
            Backend::Postgres(store) => Some(&store.pool),
            Backend::Sqlite(_) => None,
        }
    }

    /// The SQLite pool, for the service's own tables; `None` on PostgreSQL.
    pub fn sqlite_pool(&self) -> Option<&sqlx::SqlitePool> {
        match &self.backend {
            Backend::Sqlite(store) => Some(&store.pool),
            Backend::Postgres(_) => None,
        }
    }

    /// The store's operation counters and timings (shared with its writer handle).
    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    /// Connections of this handle's pool: (in use, idle).
    pub fn pool_connections(&self) -> (usize, usize) {
        let (size, idle) = match &self.backend {
            Backend::Postgres(store) => (store.pool.size() as usize, store.pool.num_idle()),
            Backend::Sqlite(store) => (store.pool.size() as usize, store.pool.num_idle()),
        };
        (size.saturating_sub(idle), idle)
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Postgres(store) => store.migrate().await,
            Backend::Sqlite(store) => store.migrate().await,
        }
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> anyhow::Result<()> {
        self.observed("ping", async {
            self.faults.check_read()?;
            match &self.backend {
                Backend::Postgres(store) => store.ping().await,
                Backend::Sqlite(store) => store.ping().await,
            }
        })
        .await
    }

    /// Create an empty, active account; returns false when it already existed.
    pub async fn create_account(&self, id: AccountId) -> anyhow::Result<bool> {
        self.observed("create_account", async { Ok(self.create_accounts(&[id]).await? == 1) })
            .await
    }

    /// Create empty, active accounts in one statement; returns how many were new.
    pub async fn create_accounts(&self, ids: &[AccountId]) -> anyhow::Result<u64> {
        self.observed("create_accounts", async {
            self.faults.check_write()?;
            match &self.backend {
                Backend::Postgres(store) => store.create_accounts(ids).await,
                Backend::Sqlite(store) => store.create_accounts(ids).await,
            }
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn load_account(&self, id: AccountId) -> anyhow::Result<Option<AccountState>> {
        self.observed("load_account", async {
            self.faults.check_read()?;
            let Some(row) = self.account_row(id).await? else {
                return Ok(None);
            };
            // `held` is the sum of the open holds, written in the same transaction as
            // they are, and every hold holds a positive amount: with nothing held there
            // is nothing to look up, which spares nearly every activation a query.
            let (_, held, ..) = row;
            let holds = match (&self.backend, held) {
                (_, 0) => Vec::new(),
                (Backend::Postgres(store), _) => store.open_holds(id).await?,
                (Backend::Sqlite(store), _) => store.open_holds(id).await?,
            };
            RawAccount::from_row(row, holds).into_state(id).map(Some)
        })
        .await
    }

    /// The account's balances row, read together with those of other activations asked
    /// for meanwhile (see [`activation`]).
    async fn account_row(&self, id: AccountId) -> anyhow::Result<Option<AccountRow>> {
        let (row, start) = self.activations.ask(id);
        if start {
            let store = self.clone();
            let read = move |ids: Vec<i64>| {
                let store = store.clone();
                async move { store.account_rows(&ids).await }
            };
            tokio::spawn(self.activations.clone().serve(read));
        }
        match row.await {
            Ok(Ok(row)) => Ok(row),
            Ok(Err(error)) => Err(anyhow::anyhow!("{error:#}")),
            Err(_) => bail!("the read of the account's row stopped before it answered"),
        }
    }

    /// The balances rows of those of `ids` that exist, each after its account's id.
    async fn account_rows(&self, ids: &[i64]) -> anyhow::Result<Vec<(i64, AccountRow)>> {
        match &self.backend {
            Backend::Postgres(store) => store.account_rows(ids).await,
            Backend::Sqlite(store) => store.account_rows(ids).await,
        }
    }

    /// Write one batch in one database transaction.
    #[tracing::instrument(level = "debug", skip_all, fields(transactions = batch.transactions.len(), balances = batch.balances.len()))]
    pub async fn write_batch(&self, batch: &Batch) -> anyhow::Result<()> {
        self.observed("write_batch", async {
            self.faults.check_write()?;
            match &self.backend {
                Backend::Postgres(store) => store.write_batch(batch).await,
                Backend::Sqlite(store) => store.write_batch(batch).await,
            }
        })
        .await
    }

    pub async fn transaction(&self, id: Uuid) -> anyhow::Result<Option<TransactionRecord>> {
        self.observed("transaction", async {
            self.faults.check_read()?;
            let raw = match &self.backend {
                Backend::Postgres(store) => store.transaction(id).await?,
                Backend::Sqlite(store) => store.transaction(id).await?,
            };
            raw.map(RawTransaction::into_record).transpose()
        })
        .await
    }

    /// The transaction `initiator` requested with idempotency key `key`, if any.
    pub async fn find_by_idempotency_key(
        &self,
        initiator: i64,
        key: &str,
    ) -> anyhow::Result<Option<TransactionRecord>> {
        self.observed("find_by_idempotency_key", async {
            self.faults.check_read()?;
            let raw = match &self.backend {
                Backend::Postgres(store) => store.find_by_idempotency_key(initiator, key).await?,
                Backend::Sqlite(store) => store.find_by_idempotency_key(initiator, key).await?,
            };
            raw.map(RawTransaction::into_record).transpose()
        })
        .await
    }

    /// The legs of the atomic batch `batch`, in leg order.
    pub async fn batch_legs(&self, batch: Uuid) -> anyhow::Result<Vec<TransactionRecord>> {
        self.observed("batch_legs", async {
            self.faults.check_read()?;
            let raws = match &self.backend {
                Backend::Postgres(store) => store.batch_legs(batch).await?,
                Backend::Sqlite(store) => store.batch_legs(batch).await?,
            };
            raws.into_iter().map(RawTransaction::into_record).collect()
        })
        .await
    }

    /// How much of `original` completed reversals have given back so far.
    pub async fn reversed_total(&self, original: Uuid) -> anyhow::Result<i64> {
        self.observed("reversed_total", async {
            self.faults.check_read()?;
            match &self.backend {
                Backend::Postgres(store) => store.reversed_total(original).await,
                Backend::Sqlite(store) => store.reversed_total(original).await,
            }
        })
        .await
    }

    /// Every open hold with an expiry: (expiry, hold, source account), soonest first.
    pub async fn expiring_holds(&self) -> anyhow::Result<Vec<(DateTime<Utc>, Uuid, AccountId)>> {
        self.observed("expiring_holds", async {
            self.faults.check_read()?;
            let rows = match &self.backend {
                Backend::Postgres(store) => store.expiring_holds().await?,
                Backend::Sqlite(store) => store.expiring_holds().await?,
            };
            rows.into_iter()
                .map(|(at, id, account)| Ok((at, id, AccountId::new(account)?)))
                .collect()
        })
        .await
    }

    /// How many transactions are stored.
    pub async fn transaction_count(&self) -> anyhow::Result<i64> {
        self.count("transaction_count", "SELECT COUNT(*) FROM transactions")
            .await
    }

    /// Holds placed and not settled yet (an index holds exactly these rows).
    pub async fn open_hold_count(&self) -> anyhow::Result<i64> {
        self.count(
            "open_hold_count",
            "SELECT COUNT(*) FROM transactions WHERE status = 'pending'",
        )
        .await
    }

    async fn count(&self, operation: &'static str, sql: &'static str) -> anyhow::Result<i64> {
        self.observed(operation, async {
            self.faults.check_read()?;
            match &self.backend {
                Backend::Postgres(store) => store.count(sql).await,
                Backend::Sqlite(store) => store.count(sql).await,
            }
        })
        .await
    }

    /// The audit entries about one entity, oldest first.
    pub async fn audit_entries(&self, entity_type: &str, entity_id: &str) -> anyhow::Result<Vec<AuditEntry>> {
        self.observed("audit_entries", async {
            self.faults.check_read()?;
            match &self.backend {
                Backend::Postgres(store) => store.audit_entries(entity_type, entity_id).await,
                Backend::Sqlite(store) => store.audit_entries(entity_type, entity_id).await,
            }
        })
        .await
    }

    /// The sum of all balances and the number of accounts.
    pub async fn balance_sum(&self) -> anyhow::Result<(i128, i64)> {
        self.observed("balance_sum", async {
            match &self.backend {
                Backend::Postgres(store) => store.balance_sum().await,
                Backend::Sqlite(store) => store.balance_sum().await,
            }
        })
        .await
    }

    /// Check the store-level invariants of design.md §11 (conservation, no negative
    /// user balance, balance = sum of journal, journal order) and list every violation,
    /// at most `limit` of each kind.
    pub async fn verify(&self, limit: i64) -> anyhow::Result<Vec<Violation>> {
        self.observed("verify", async {
            let mut violations = Vec::new();
            let (sum, _) = self.balance_sum().await?;
            if sum != 0 {
                violations.push(Violation::Conservation { sum });
            }
            let found = match &self.backend {
                Backend::Postgres(store) => store.verify(limit).await?,
                Backend::Sqlite(store) => store.verify(limit).await?,
            };
            violations.extend(found);
            Ok(violations)
        })
        .await
    }

    fn dialect(&self) -> Dialect {
        match &self.backend {
            Backend::Postgres(_) => Dialect::Postgres,
            Backend::Sqlite(_) => Dialect::Sqlite,
        }
    }

    /// Create a user, its empty and active account (the balances row with the user's
    /// id) and the audit row recording it, in one database transaction. The audit
    /// entry's `entity_id` is replaced by the new user's id, which only the database
    /// knows. If a balances row with the new id already exists (an account created
    /// without a user) nothing is written and the store error says so: a new user never
    /// inherits someone's money.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn create_user(&self, user: &NewUser, audit: &AuditEntry) -> Result<UserRecord, UserWriteError> {
        self.observed("create_user", async {
            self.faults.check_write().map_err(UserWriteError::Store)?;
            let now = SystemClock.now();
            let raw = match &self.backend {
                Backend::Postgres(store) => store.create_user(user, audit, now).await?,
                Backend::Sqlite(store) => store.create_user(user, audit, now).await?,
            };
            raw.into_record().map_err(UserWriteError::Store)
        })
        .await
    }

    /// Create many users at once (provisioning, load-test set-up), each with its empty
    /// account and a `registered` audit row attributed to `actor`. Idempotent: users
    /// whose username or email exists are left alone. Returns the id of every named user,
    /// new or not, in the order given.
    #[tracing::instrument(level = "debug", skip_all, fields(users = users.len()))]
    pub async fn create_users(&self, users: &[NewUser], actor: Option<i64>) -> anyhow::Result<Vec<(String, i64)>> {
        self.observed("create_users", async {
            self.faults.check_write()?;
            let now = SystemClock.now();
            let audit_ids: Vec<Uuid> = users.iter().map(|_| Uuid::now_v7()).collect();
            match &self.backend {
                Backend::Postgres(store) => store.create_users(users, &audit_ids, actor, now).await,
                Backend::Sqlite(store) => store.create_users(users, &audit_ids, actor, now).await,
            }
        })
        .await
    }

    /// The user with this id, deleted or not.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn user(&self, id: i64) -> anyhow::Result<Option<UserRecord>> {
        self.observed("user", async {
            self.faults.check_read()?;
            let raw = match &self.backend {
                Backend::Postgres(store) => store.user(id).await?,
                Backend::Sqlite(store) => store.user(id).await?,
            };
            raw.map(RawUser::into_record).transpose()
        })
        .await
    }

    /// The user with this username in any letter case, unless deleted.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn user_by_username(&self, username: &str) -> anyhow::Result<Option<UserRecord>> {
        self.observed("user_by_username", async {
            self.faults.check_read()?;
            let raw = match &self.backend {
                Backend::Postgres(store) => store.user_by_username(username).await?,
                Backend::Sqlite(store) => store.user_by_username(username).await?,
            };
            raw.map(RawUser::into_record).transpose()
        })
        .await
    }

    /// One page of the users not deleted, by ascending id: those after `after_id` (the
    /// last id of the previous page), at most `limit` (clamped to [`PAGE_SIZE_MAX`]).
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn users(&self, after_id: Option<i64>, limit: i64) -> anyhow::Result<Vec<UserRecord>> {
        self.observed("users", async {
            self.faults.check_read()?;
            let limit = page_size(limit);
            if limit == 0 {
                return Ok(Vec::new());
            }
            // Ids start at 1, so 0 is before every user.
            let after_id = after_id.unwrap_or(0);
            let raw = match &self.backend {
                Backend::Postgres(store) => store.users(after_id, limit).await?,
                Backend::Sqlite(store) => store.users(after_id, limit).await?,
            };
            raw.into_iter().map(RawUser::into_record).collect()
        })
        .await
    }

    /// How many users are not deleted.
    pub async fn user_count(&self) -> anyhow::Result<i64> {
        self.observed("user_count", async {
            self.faults.check_read()?;
            match &self.backend {
                Backend::Postgres(store) => store.user_count().await,
                Backend::Sqlite(store) => store.user_count().await,
            }
        })
        .await
    }

    /// Change the given fields of a user that is not deleted, stamp `updated_at` and
    /// write the audit rows, in one database transaction; the audit rows are written
    /// only if the user was changed. Empty changes only stamp `updated_at`.
    #[tracing::instrument(level = "debug", skip(self, changes, audit))]
    pub async fn update_user(
        &self,
        id: i64,
        changes: &UserChanges,
        audit: &[AuditEntry],
    ) -> Result<UserRecord, UserWriteError> {
        self.observed("update_user", async {
            self.faults.check_write().map_err(UserWriteError::Store)?;
            let now = SystemClock.now();
            let raw = match &self.backend {
                Backend::Postgres(store) => store.update_user(id, changes, audit, now).await?,
                Backend::Sqlite(store) => store.update_user(id, changes, audit, now).await?,
            };
            raw.ok_or(UserWriteError::NotFound)?
                .into_record()
                .map_err(UserWriteError::Store)
        })
        .await
    }

    /// Delete a user softly (`deleted_at` and `updated_at` become now; it stays readable
    /// by id and its username and email stay taken), revoke all its refresh tokens and
    /// write the audit row, in one database transaction. The account is left as it is:
    /// its balance and journal belong to the ledger.
    #[tracing::instrument(level = "debug", skip(self, audit))]
    pub async fn delete_user(&self, id: i64, audit: &AuditEntry) -> Result<UserRecord, UserWriteError> {
        self.observed("delete_user", async {
            self.faults.check_write().map_err(UserWriteError::Store)?;
            let now = SystemClock.now();
            let raw = match &self.backend {
                Backend::Postgres(store) => store.delete_user(id, audit, now).await?,
                Backend::Sqlite(store) => store.delete_user(id, audit, now).await?,
            };
            raw.ok_or(UserWriteError::NotFound)?
                .into_record()
                .map_err(UserWriteError::Store)
        })
        .await
    }

    /// Write audit rows in one statement. Rows are keyed by their ids, so writing the
    /// same entries again changes nothing.
    #[tracing::instrument(level = "debug", skip_all, fields(entries = entries.len()))]
    pub async fn append_audit(&self, entries: &[AuditEntry]) -> anyhow::Result<()> {
        self.observed("append_audit", async {
            self.faults.check_write()?;
            if entries.is_empty() {
                return Ok(());
            }
            match &self.backend {
                Backend::Postgres(store) => store.append_audit(entries).await,
                Backend::Sqlite(store) => store.append_audit(entries).await,
            }
        })
        .await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(user_id = token.user_id))]
    pub async fn insert_refresh_token(&self, token: &RefreshToken) -> anyhow::Result<()> {
        self.observed("insert_refresh_token", async {
            self.faults.check_write()?;
            match &self.backend {
                Backend::Postgres(store) => store.insert_refresh_token(token).await,
                Backend::Sqlite(store) => store.insert_refresh_token(token).await,
            }
        })
        .await
    }

    /// Spend a refresh token, atomically: of any number of concurrent uses of one valid
    /// token exactly one is [`RefreshUse::Fresh`] and the others are
    /// [`RefreshUse::Reused`]. A token expired at `now` and never used is unknown.
    #[tracing::instrument(level = "debug", skip_all)]
    pub async fn use_refresh_token(&self, id: Uuid, now: DateTime<Utc>) -> anyhow::Result<RefreshUse> {
        self.observed("use_refresh_token", async {
            self.faults.check_write()?;
            match &self.backend {
                Backend::Postgres(store) => store.use_refresh_token(id, now).await,
                Backend::Sqlite(store) => store.use_refresh_token(id, now).await,
            }
        })
        .await
    }

    /// Revoke every token of a family not yet revoked; returns how many were.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn revoke_refresh_family(&self, family: Uuid, now: DateTime<Utc>) -> anyhow::Result<u64> {
        self.observed("revoke_refresh_family", async {
            self.faults.check_write()?;
            match &self.backend {
                Backend::Postgres(store) => store.revoke_refresh_family(family, now).await,
                Backend::Sqlite(store) => store.revoke_refresh_family(family, now).await,
            }
        })
        .await
    }

    /// Revoke every token of a user not yet revoked; returns how many were.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn revoke_user_refresh_tokens(&self, user_id: i64, now: DateTime<Utc>) -> anyhow::Result<u64> {
        self.observed("revoke_user_refresh_tokens", async {
            self.faults.check_write()?;
            match &self.backend {
                Backend::Postgres(store) => store.revoke_user_refresh_tokens(user_id, now).await,
                Backend::Sqlite(store) => store.revoke_user_refresh_tokens(user_id, now).await,
            }
        })
        .await
    }

    /// One page of an account's history, newest first: every transaction it was the
    /// source of (failed attempts included) and every one that credited it. See
    /// [`HistoryQuery`] and [`HistoryItem::position`].
    #[tracing::instrument(level = "debug", skip_all, fields(account = %query.account))]
    pub async fn history(&self, query: &HistoryQuery) -> anyhow::Result<Vec<HistoryItem>> {
        self.observed("history", async {
            self.faults.check_read()?;
            let Some(statement) = history::history_statement(query, self.dialect()) else {
                return Ok(Vec::new());
            };
            let rows = match &self.backend {
                Backend::Postgres(store) => store.history(statement).await?,
                Backend::Sqlite(store) => store.history(statement).await?,
            };
            rows.into_iter()
                .map(|(position, raw)| {
                    Ok(HistoryItem {
                        position: u64::try_from(position).context("negative history position")?,
                        transaction: raw.into_record()?,
                    })
                })
                .collect()
        })
        .await
    }

    /// One page of an account's balance changes, newest first: those with a version
    /// below `before_version` (all for `None`), at most `limit` (clamped to
    /// [`PAGE_SIZE_MAX`]).
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn journal(
        &self,
        account: AccountId,
        before_version: Option<u64>,
        limit: i64,
    ) -> anyhow::Result<Vec<JournalEntry>> {
        self.observed("journal", async {
            self.faults.check_read()?;
            let limit = page_size(limit);
            if limit == 0 {
                return Ok(Vec::new());
            }
            let statement =
                history::journal_statement(account, JournalBound::Before(before_version), limit, self.dialect());
            self.journal_entries(statement).await
        })
        .await
    }

    /// The account's latest journal entry among those whose transaction was created at
    /// or before `at`: its `balance_after` is the balance at that time. `None` when
    /// there is none, so the balance was 0.
    ///
    /// Each index is walked backwards from the newest entry until one is old enough,
    /// so the cost grows with how far back `at` lies.
    #[tracing::instrument(level = "debug", skip(self))]
    pub async fn balance_at(&self, account: AccountId, at: DateTime<Utc>) -> anyhow::Result<Option<JournalEntry>> {
        self.observed("balance_at", async {
            self.faults.check_read()?;
            let statement = history::journal_statement(account, JournalBound::At(at), 1, self.dialect());
            Ok(self.journal_entries(statement).await?.into_iter().next())
        })
        .await
    }

    async fn journal_entries(&self, statement: Statement) -> anyhow::Result<Vec<JournalEntry>> {
        let rows = match &self.backend {
            Backend::Postgres(store) => store.journal(statement).await?,
            Backend::Sqlite(store) => store.journal(statement).await?,
        };
        rows.into_iter().map(RawJournalEntry::into_entry).collect()
    }
}

/// The unique indexes of `users` whose violation is the caller's to handle, recognised
/// by name (see the users migration); any other violation is a store error.
const USERNAME_INDEX: &str = "users_username_lower";
const EMAIL_INDEX: &str = "users_email_lower";

/// A failed user write as the caller sees it; `violated_index` is the unique index the
/// database named, if the failure was a unique violation.
fn user_write_error(error: sqlx::Error, violated_index: Option<&str>, doing: &'static str) -> UserWriteError {
    match violated_index {
        Some(USERNAME_INDEX) => UserWriteError::UsernameTaken,
        Some(EMAIL_INDEX) => UserWriteError::EmailTaken,
        _ => UserWriteError::Store(anyhow::Error::new(error).context(doing)),
    }
}

/// The columns of a users row, in the order both stores return them.
const USER_COLUMNS: &str =
    "id, username, email, password_hash, role, created_at, updated_at, deleted_at, token_version";

/// A users row, common to both stores once times are converted.
#[derive(Debug)]
struct RawUser {
    id: i64,
    username: String,
    email: String,
    password_hash: String,
    role: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
    token_version: i64,
}

impl RawUser {
    fn into_record(self) -> anyhow::Result<UserRecord> {
        Ok(UserRecord {
            id: self.id,
            role: Role::parse(&self.role).with_context(|| format!("unknown role {:?}", self.role))?,
            username: self.username,
            email: self.email,
            password_hash: self.password_hash,
            created_at: self.created_at,
            updated_at: self.updated_at,
            deleted_at: self.deleted_at,
            token_version: self.token_version,
        })
    }
}

/// A journal entry row, common to both stores once ids and times are converted.
#[derive(Debug)]
struct RawJournalEntry {
    transaction_id: Uuid,
    kind: String,
    version: i64,
    delta: i64,
    balance_after: i64,
    counterparty: i64,
    created_at: DateTime<Utc>,
}

impl RawJournalEntry {
    fn into_entry(self) -> anyhow::Result<JournalEntry> {
        Ok(JournalEntry {
            transaction_id: self.transaction_id,
            kind: TransactionKind::parse(&self.kind).with_context(|| format!("unknown type {:?}", self.kind))?,
            version: u64::try_from(self.version).context("negative journal version")?,
            delta: self.delta,
            balance_after: self.balance_after,
            counterparty: AccountId::new(self.counterparty)?,
            created_at: self.created_at,
        })
    }
}

/// SQL shared by both stores: the journal as entries, derived from the transactions rows.
const JOURNAL_ENTRIES: &str = "
    SELECT from_user_id AS account, from_version AS version, -amount AS delta, from_balance_after AS balance_after
      FROM transactions WHERE from_balance_after IS NOT NULL
    UNION ALL
    SELECT to_user_id, to_version, amount, to_balance_after
      FROM transactions WHERE to_version IS NOT NULL
    UNION ALL
    SELECT from_user_id, refund_version, amount, refund_balance_after
      FROM transactions WHERE refund_version IS NOT NULL";

/// The invariant queries, each returning `(account, a, b)` rows of violations; shared by
/// both stores (they differ only in parameter syntax, which these do not use).
/// Turns one result row `(account, a, b)` of a verify query into its violation.
type MakeViolation = fn(i64, i64, i64) -> Violation;

fn verify_queries(limit: i64) -> [(MakeViolation, String); 6] {
    [
        (
            |account, balance, _| Violation::NegativeBalance { account, balance },
            format!(
                "SELECT user_id, amount, 0 FROM balances
                  WHERE user_id <> 0 AND amount < -overdraft_limit ORDER BY user_id LIMIT {limit}"
            ),
        ),
        (
            |account, held, open_holds| Violation::HeldMismatch {
                account,
                held,
                open_holds,
            },
            format!(
                "WITH open_holds AS (SELECT from_user_id AS account, SUM(amount) AS total
                                       FROM transactions WHERE status = 'pending' GROUP BY from_user_id)
                 SELECT b.user_id, b.held, COALESCE(h.total, 0)
                   FROM balances b LEFT JOIN open_holds h ON h.account = b.user_id
                  WHERE b.held <> COALESCE(h.total, 0)
                  ORDER BY b.user_id LIMIT {limit}"
            ),
        ),
        (
            |account, balance, journal_sum| Violation::BalanceMismatch {
                account,
                balance,
                journal_sum: i128::from(journal_sum),
            },
            format!(
                "WITH entries AS ({JOURNAL_ENTRIES}),
                      sums AS (SELECT account, SUM(delta) AS total FROM entries GROUP BY account)
                 SELECT b.user_id, b.amount, COALESCE(s.total, 0)
                   FROM balances b LEFT JOIN sums s ON s.account = b.user_id
                  WHERE b.amount <> COALESCE(s.total, 0)
                  ORDER BY b.user_id LIMIT {limit}"
            ),
        ),
        (
            |account, version, _| Violation::JournalBreak { account, version },
            format!(
                "WITH entries AS ({JOURNAL_ENTRIES}),
                      ordered AS (SELECT account, version, delta, balance_after,
                                         LAG(balance_after, 1, 0) OVER (PARTITION BY account ORDER BY version) AS before
                                    FROM entries)
                 SELECT account, version, 0 FROM ordered WHERE before + delta <> balance_after
                  ORDER BY account, version LIMIT {limit}"
            ),
        ),
        (
            |account, version, _| Violation::DuplicateVersion { account, version },
            format!(
                "WITH entries AS ({JOURNAL_ENTRIES})
                 SELECT account, version, 0 FROM entries GROUP BY account, version HAVING COUNT(*) > 1
                  ORDER BY account, version LIMIT {limit}"
            ),
        ),
        (
            |account, version, journal_version| Violation::VersionBehindJournal {
                account,
                version,
                journal_version,
            },
            format!(
                "WITH entries AS ({JOURNAL_ENTRIES}),
                      latest AS (SELECT account, MAX(version) AS version FROM entries GROUP BY account)
                 SELECT b.user_id, b.version, l.version
                   FROM balances b JOIN latest l ON l.account = b.user_id
                  WHERE b.version < l.version
                  ORDER BY b.user_id LIMIT {limit}"
            ),
        ),
    ]
}

/// The columns of a transactions row, common to both stores once times are converted.
#[derive(Debug)]
struct RawTransaction {
    id: Uuid,
    kind: String,
    status: String,
    from: i64,
    to: i64,
    amount: i64,
    from_version: Option<i64>,
    from_balance_after: Option<i64>,
    to_version: Option<i64>,
    to_balance_after: Option<i64>,
    refund_version: Option<i64>,
    refund_balance_after: Option<i64>,
    failure_reason: Option<String>,
    initiator: Option<i64>,
    idempotency_key: Option<String>,
    created_at: DateTime<Utc>,
    completed_at: DateTime<Utc>,
    held_amount: Option<i64>,
    expires_at: Option<DateTime<Utc>>,
    parent_id: Option<Uuid>,
    batch_id: Option<Uuid>,
    leg: Option<i64>,
}

const TRANSACTION_COLUMNS: &str = "id, type, status, from_user_id, to_user_id, amount, \
    from_version, from_balance_after, to_version, to_balance_after, refund_version, refund_balance_after, \
    failure_reason, initiator_id, idempotency_key, created_at, completed_at, held_amount, expires_at, \
    parent_id, batch_id, leg";

/// A balances row as read, with the account's open holds.
#[derive(Debug)]
struct RawAccount {
    balance: i64,
    held: i64,
    status: String,
    version: i64,
    overdraft_limit: i64,
    max_balance: Option<i64>,
    daily_debit_cap: Option<i64>,
    debit_day: i64,
    debited_on_day: i64,
    holds: Vec<RawTransaction>,
}

/// The balances columns both stores read.
type AccountRow = (i64, i64, String, i64, i64, Option<i64>, Option<i64>, i64, i64);

/// Where a read of several accounts puts each row's account id: after the columns of
/// an [`AccountRow`].
const ACCOUNT_ROW_ID: usize = 9;

impl RawAccount {
    fn from_row(row: AccountRow, holds: Vec<RawTransaction>) -> Self {
        let (balance, held, status, version, overdraft_limit, max_balance, daily_debit_cap, debit_day, debited_on_day) =
            row;
        RawAccount {
            balance,
            held,
            status,
            version,
            overdraft_limit,
            max_balance,
            daily_debit_cap,
            debit_day,
            debited_on_day,
            holds,
        }
    }

    fn into_state(self, id: AccountId) -> anyhow::Result<AccountState> {
        let holds = self
            .holds
            .into_iter()
            .map(|raw| raw.into_record().map(|record| (record.id, record)))
            .collect::<anyhow::Result<std::collections::BTreeMap<_, _>>>()?;
        let open: i64 = holds.values().map(|hold| hold.amount.minor()).sum();
        anyhow::ensure!(
            open == self.held,
            "account {id} holds {} but its open holds sum to {open}",
            self.held
        );
        let rules = AccountRules {
            overdraft_limit: self.overdraft_limit,
            max_balance: self.max_balance,
            daily_debit_cap: self.daily_debit_cap,
        };
        let mut state = AccountState::new(id).with_rules_and_holds(rules, self.held, holds);
        state.balance = self.balance;
        state.status = AccountStatus::parse(&self.status)
            .with_context(|| format!("account {id} has unknown status {:?}", self.status))?;
        state.version = u64::try_from(self.version).context("negative account version")?;
        state.usage = DailyUsage {
            day: self.debit_day,
            debited: self.debited_on_day,
        };
        Ok(state)
    }
}

fn position(version: Option<i64>, balance_after: Option<i64>) -> anyhow::Result<Option<JournalPosition>> {
    match (version, balance_after) {
        (Some(version), Some(balance_after)) => Ok(Some(JournalPosition {
            version: u64::try_from(version).context("negative journal version")?,
            balance_after,
        })),
        (None, None) => Ok(None),
        _ => bail!("journal version and balance after must be both present or both absent"),
    }
}

impl RawTransaction {
    fn into_record(self) -> anyhow::Result<TransactionRecord> {
        Ok(TransactionRecord {
            id: self.id,
            kind: TransactionKind::parse(&self.kind).with_context(|| format!("unknown type {:?}", self.kind))?,
            status: TransactionStatus::parse(&self.status)
                .with_context(|| format!("unknown status {:?}", self.status))?,
            from: AccountId::new(self.from)?,
            to: AccountId::new(self.to)?,
            amount: Amount::from_minor(self.amount)?,
            debit: match (self.from_version, self.from_balance_after) {
                (Some(_), None) => None,
                (version, balance_after) => position(version, balance_after)?,
            },
            refused_version: match (self.from_version, self.from_balance_after) {
                (Some(version), None) => Some(u64::try_from(version).context("negative refusal version")?),
                _ => None,
            },
            credit: position(self.to_version, self.to_balance_after)?,
            refund: position(self.refund_version, self.refund_balance_after)?,
            failure_reason: self
                .failure_reason
                .map(|code| Refusal::parse(&code).with_context(|| format!("unknown failure reason {code:?}")))
                .transpose()?,
            initiator: self.initiator,
            idempotency_key: self.idempotency_key,
            created_at: self.created_at,
            completed_at: self.completed_at,
            held_amount: self.held_amount.map(Amount::from_minor).transpose()?,
            expires_at: self.expires_at,
            parent_id: self.parent_id,
            batch_id: self.batch_id,
            leg: self.leg.map(u32::try_from).transpose().context("negative leg")?,
        })
    }
}

fn version_i64(version: u64) -> i64 {
    i64::try_from(version).expect("account versions stay far below i64::MAX")
}
