//! The SQLite store, the embedded default: a WAL-mode file with full fsync on commit.
//!
//! SQLite has no arrays to UNNEST, so a batch is passed as JSON and expanded with
//! `jsonb_each`: still one statement per table per batch, all in one transaction. Each
//! row comes out of `jsonb_each` in SQLite's binary JSON, which the row's twenty-odd
//! `value->>n` read without parsing text again (with `json_each`, each read parsed the
//! row's text). Times are stored as integer microseconds since the Unix epoch.

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::error::ErrorKind;
use sqlx::sqlite::{
    Sqlite, SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use uuid::Uuid;

use super::held::HeldConnection;
use super::history::{Param, Statement};
use super::{
    ACCOUNT_ROW_ID, AccountRow, Batch, NewUser, RawJournalEntry, RawTransaction, RawUser, RefreshToken, RefreshUse,
    TRANSACTION_COLUMNS, USER_COLUMNS, UserChanges, UserWriteError, Violation, user_write_error, verify_queries,
    version_i64,
};
use crate::money::{AccountId, Amount};
use crate::record::AuditEntry;

type AuditRow = (String, String, String, String, Option<i64>, String, Option<String>, i64);

type UserRow = (i64, String, String, String, String, i64, i64, Option<i64>, i64);

type JournalRow = (String, String, i64, i64, i64, i64, i64);

#[derive(Clone, Debug)]
pub(super) struct SqliteStore {
    pub(super) pool: SqlitePool,
    /// The persister's connection (see [`HeldConnection`]); `None` on the shared store.
    held: Option<HeldConnection<Sqlite>>,
}

const INSERT_TRANSACTIONS: &str = "
INSERT INTO transactions (id, type, status, from_user_id, to_user_id, amount,
                          from_version, from_balance_after, to_version, to_balance_after,
                          refund_version, refund_balance_after, failure_reason,
                          initiator_id, idempotency_key, created_at, completed_at,
                          held_amount, expires_at, parent_id, batch_id, leg)
SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6, value->>7,
       value->>8, value->>9, value->>10, value->>11, value->>12, value->>13, value->>14,
       value->>15, value->>16, value->>17, value->>18, value->>19, value->>20, value->>21
  FROM jsonb_each(?1) WHERE true
-- A hold is written again when it is posted or voided; any other row never changes.
ON CONFLICT (id) DO UPDATE
   SET status = excluded.status, amount = excluded.amount,
       from_version = excluded.from_version, from_balance_after = excluded.from_balance_after,
       to_version = excluded.to_version, to_balance_after = excluded.to_balance_after,
       refund_version = excluded.refund_version, refund_balance_after = excluded.refund_balance_after,
       failure_reason = excluded.failure_reason, completed_at = excluded.completed_at
 WHERE transactions.status = 'pending' AND excluded.status <> 'pending'";

const UPDATE_BALANCES: &str = "
UPDATE balances
   SET amount = u.amount, held = u.held, status = u.status, version = u.version,
       last_updated_at = u.updated_at, overdraft_limit = u.overdraft_limit, max_balance = u.max_balance,
       daily_debit_cap = u.daily_debit_cap, debit_day = u.debit_day, debited_on_day = u.debited_on_day
  FROM (SELECT value->>0 AS user_id, value->>1 AS amount, value->>2 AS held, value->>3 AS status,
               value->>4 AS version, value->>5 AS updated_at, value->>6 AS overdraft_limit,
               value->>7 AS max_balance, value->>8 AS daily_debit_cap, value->>9 AS debit_day,
               value->>10 AS debited_on_day
          FROM jsonb_each(?1)) AS u
 WHERE balances.user_id = u.user_id AND balances.version < u.version";

const INSERT_AUDIT: &str = "
INSERT INTO audit_logs (id, entity_type, entity_id, action, actor_user_id, details, request_id, created_at)
SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6, value->>7
  FROM jsonb_each(?1) WHERE true
ON CONFLICT (id) DO NOTHING";

/// A whole group commit in one call: begin, the three writes (transactions from `?1`,
/// balances from `?2`, audit rows from `?3`, each a JSON array, empty when the batch has
/// none) and commit. Every call is a round trip to the connection's worker thread, and
/// waking a thread is much of a small batch's time, so one call instead of four or
/// five. A statement that fails leaves the transaction open: the connection it ran on
/// is then closed, not reused, which rolls the transaction back.
static WRITE_BATCH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let with_parameter = |sql: &str, number: u8| sql.replace("?1", &format!("?{number}"));
    format!(
        "BEGIN;{INSERT_TRANSACTIONS};{};{};COMMIT;",
        with_parameter(UPDATE_BALANCES, 2),
        with_parameter(INSERT_AUDIT, 3)
    )
});

/// Spends the token only if it is still valid. SQLite runs one write at a time, so of
/// concurrent uses exactly one finds the token unspent.
const SPEND_REFRESH_TOKEN: &str = "
UPDATE refresh_tokens SET used_at = ?2
 WHERE id = ?1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > ?2
RETURNING user_id, family";

/// The page size of a database file Tally creates (SQLite's default is 4 KiB; a file
/// made before keeps its own). Every page a commit changes is appended to the
/// write-ahead log whole, and a uniform load changes a few scattered pages per transfer
/// (two balance rows, two journal index entries): with half the page, each such change
/// appends half as much. Under a uniform load a commit of ~35 transfers took 3.2–3.3 ms
/// instead of 3.75–3.85 (BENCHMARKS.md, "Smaller SQLite pages").
const PAGE_SIZE: u32 = 2048;

/// How long a statement waits for a lock another connection holds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a truncating checkpoint waits for the writer and for readers of the log.
const TRUNCATE_WAIT: Duration = Duration::from_millis(250);

/// How long statements on `connection` wait for a lock another connection holds.
async fn set_busy_timeout(connection: &mut sqlx::SqliteConnection, wait: Duration) -> Result<(), sqlx::Error> {
    let pragma = format!("PRAGMA busy_timeout = {}", wait.as_millis());
    sqlx::query(sqlx::AssertSqlSafe(pragma)).execute(connection).await?;
    Ok(())
}

pub(crate) fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn from_micros(micros: i64) -> anyhow::Result<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros).context("timestamp out of range")
}

impl SqliteStore {
    pub(super) async fn connect(url: &str, max_connections: u32, acquire_timeout: Duration) -> anyhow::Result<Self> {
        let store = Self::connect_lazy(url, max_connections, acquire_timeout)?;
        store.ping().await.context("opening the SQLite database")?;
        Ok(store)
    }

    pub(super) fn connect_lazy(url: &str, max_connections: u32, acquire_timeout: Duration) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("parsing SQLite URL {url:?}"))?
            .create_if_missing(true)
            .page_size(PAGE_SIZE)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: every commit is fsynced, so an acknowledged write survives a power cut,
            // not only a crash of the process.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let path = options.get_filename();
        if let Some(directory) = path.parent()
            && !directory.as_os_str().is_empty()
        {
            std::fs::create_dir_all(directory)
                .with_context(|| format!("creating the data directory {}", directory.display()))?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect_lazy_with(options);
        Ok(SqliteStore { pool, held: None })
    }

    /// A store for the persister alone: one connection, held between batches.
    ///
    /// Its commits never copy the write-ahead log back into the database file (SQLite's
    /// automatic checkpoint, every 1,000 pages, ran on every few batches and held each up
    /// for the copy and its fsync): the engine checkpoints from another connection
    /// instead ([`SqliteStore::checkpoint`]).
    ///
    /// Its temporary storage is memory. A batch's statements change many rows each, and
    /// before a statement that can fail halfway changes a page SQLite copies the page to
    /// a statement journal (to undo that statement alone), a temporary file by default:
    /// written, for a uniform batch, for nearly every page the batch changes. In memory,
    /// a loaded writer's commits took 2.8–3.2 ms instead of 3.2–3.6 (BENCHMARKS.md,
    /// "Smaller SQLite pages"). The journal of one statement holds at most the pages it
    /// changes.
    pub(super) fn connect_writer(url: &str, acquire_timeout: Duration) -> anyhow::Result<Self> {
        let store = Self::connect_lazy(url, 1, acquire_timeout)?;
        let options = store
            .pool
            .connect_options()
            .as_ref()
            .clone()
            .pragma("wal_autocheckpoint", "0")
            .pragma("temp_store", "memory");
        store.pool.set_connect_options(options);
        Ok(SqliteStore {
            held: Some(HeldConnection::default()),
            ..store
        })
    }

    /// Copy what the write-ahead log holds into the database file, as far as readers
    /// allow, without waiting for the writer or holding it up; then, once the log holds
    /// `wal_pages_max` pages, empty it.
    ///
    /// A passive checkpoint never empties the log under a steady load: SQLite starts
    /// writing the log from its beginning again only when a checkpoint has copied every
    /// page in it, and by the time one finishes the persister has appended more. The log
    /// then grows by every page every batch writes (over a gigabyte in 15 seconds at full
    /// load on a 2-core machine), and a restart reads all of it. So past the limit a
    /// truncating checkpoint takes the writer's lock: it copies what the passive ones
    /// have not and cuts the file to nothing, the persister's next commit waiting
    /// meanwhile. It waits for readers only briefly ([`TRUNCATE_WAIT`]); when one still
    /// reads from the log, it gives up and the next round tries again. Copying every page
    /// costs a loaded writer about a fifth of its throughput against a log left to grow,
    /// which only defers that copy.
    pub(super) async fn checkpoint(&self, wal_pages_max: u32) -> anyhow::Result<()> {
        let mut connection = self.pool.acquire().await?;
        let (_, log_pages, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&mut *connection)
            .await?;
        if log_pages < i64::from(wal_pages_max) {
            return Ok(());
        }
        set_busy_timeout(&mut connection, TRUNCATE_WAIT).await?;
        let truncated = sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&mut *connection)
            .await;
        if set_busy_timeout(&mut connection, BUSY_TIMEOUT).await.is_err() {
            // Not back in the pool with the short wait.
            connection.close_on_drop();
        }
        let (blocked, _, _) = truncated?;
        tracing::debug!(
            log_pages,
            emptied = blocked == 0,
            "SQLite write-ahead log past its limit"
        );
        Ok(())
    }

    pub(super) async fn migrate(&self) -> anyhow::Result<()> {
        sqlx::migrate!("../migrations/sqlite").run(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn create_accounts(&self, ids: &[AccountId]) -> anyhow::Result<u64> {
        let ids: Vec<i64> = ids.iter().map(|id| id.get()).collect();
        let result = sqlx::query(
            "INSERT INTO balances (user_id, last_updated_at) SELECT value, ?2 FROM json_each(?1) WHERE true \
             ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(serde_json::to_string(&ids)?)
        .bind(micros(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// The rows of those of `ids` that exist, each after its account's id (the last
    /// column, so that the others decode as an [`AccountRow`]).
    pub(super) async fn account_rows(&self, ids: &[i64]) -> anyhow::Result<Vec<(i64, AccountRow)>> {
        let rows = sqlx::query(
            "SELECT amount, held, status, version, overdraft_limit, max_balance, daily_debit_cap, debit_day, \
                    debited_on_day, user_id FROM balances WHERE user_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(serde_json::to_string(ids)?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((sqlx::Row::try_get(row, ACCOUNT_ROW_ID)?, sqlx::FromRow::from_row(row)?)))
            .collect()
    }

    pub(super) async fn open_holds(&self, id: AccountId) -> anyhow::Result<Vec<RawTransaction>> {
        let sql =
            format!("SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE from_user_id = ?1 AND status = 'pending'");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.get())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(raw_transaction)
            .collect()
    }

    pub(super) async fn write_batch(&self, batch: &Batch) -> anyhow::Result<()> {
        // New rows and settled holds alike: the upsert below inserts the former and
        // updates the latter (SQLite's upsert costs next to nothing over an insert).
        let transactions: Vec<_> = batch
            .transactions
            .iter()
            .chain(&batch.settled_holds)
            .map(|t| {
                json!([
                    t.id.to_string(),
                    t.kind.as_str(),
                    t.status.as_str(),
                    t.from.get(),
                    t.to.get(),
                    t.amount.minor(),
                    t.debit.map(|p| p.version).or(t.refused_version).map(version_i64),
                    t.debit.map(|p| p.balance_after),
                    t.credit.map(|p| version_i64(p.version)),
                    t.credit.map(|p| p.balance_after),
                    t.refund.map(|p| version_i64(p.version)),
                    t.refund.map(|p| p.balance_after),
                    t.failure_reason.map(|r| r.code()),
                    t.initiator,
                    t.idempotency_key,
                    micros(t.created_at),
                    micros(t.completed_at),
                    t.held_amount.map(Amount::minor),
                    t.expires_at.map(micros),
                    t.parent_id.map(|id| id.to_string()),
                    t.batch_id.map(|id| id.to_string()),
                    t.leg,
                ])
            })
            .collect();
        let balances: Vec<_> = batch
            .balances
            .iter()
            .map(|b| {
                json!([
                    b.account.get(),
                    b.balance,
                    b.held,
                    b.status.as_str(),
                    version_i64(b.version),
                    micros(b.at),
                    b.rules.overdraft_limit,
                    b.rules.max_balance,
                    b.rules.daily_debit_cap,
                    b.usage.day,
                    b.usage.debited,
                ])
            })
            .collect();
        let query = sqlx::query(sqlx::AssertSqlSafe(WRITE_BATCH.as_str()))
            .bind(serde_json::Value::Array(transactions).to_string())
            .bind(serde_json::Value::Array(balances).to_string())
            .bind(audit_json(&batch.audit));
        match &self.held {
            Some(held) => {
                let mut lease = held.lease(&self.pool).await?;
                query
                    .execute(lease.connection())
                    .await
                    .context("writing a batch to SQLite")?;
                lease.keep();
            }
            None => {
                let mut connection = self.pool.acquire().await?;
                if let Err(error) = query.execute(&mut *connection).await {
                    connection.close_on_drop();
                    return Err(anyhow::Error::new(error).context("writing a batch to SQLite"));
                }
            }
        }
        Ok(())
    }

    pub(super) async fn transaction(&self, id: Uuid) -> anyhow::Result<Option<RawTransaction>> {
        let sql = format!("SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE id = ?1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| raw_transaction(&row)).transpose()
    }

    pub(super) async fn find_by_idempotency_key(
        &self,
        initiator: i64,
        key: &str,
    ) -> anyhow::Result<Option<RawTransaction>> {
        let sql = format!(
            "SELECT {TRANSACTION_COLUMNS} FROM transactions \
             WHERE initiator_id = ?1 AND idempotency_key = ?2"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(initiator)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| raw_transaction(&row)).transpose()
    }

    pub(super) async fn batch_legs(&self, batch: Uuid) -> anyhow::Result<Vec<RawTransaction>> {
        let sql = format!("SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE batch_id = ?1 ORDER BY leg");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(batch.to_string())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(raw_transaction).collect()
    }

    pub(super) async fn reversed_total(&self, original: Uuid) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COALESCE(SUM(amount), 0) FROM transactions WHERE parent_id = ?1 AND status = 'completed'",
        )
        .bind(original.to_string())
        .fetch_one(&self.pool)
        .await?)
    }

    pub(super) async fn expiring_holds(&self) -> anyhow::Result<Vec<(DateTime<Utc>, Uuid, i64)>> {
        let rows: Vec<(i64, String, i64)> = sqlx::query_as(
            "SELECT expires_at, id, from_user_id FROM transactions \
             WHERE status = 'pending' AND expires_at IS NOT NULL ORDER BY expires_at",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(at, id, account)| Ok((from_micros(at)?, Uuid::parse_str(&id).context("hold id")?, account)))
            .collect()
    }

    /// The one number a `SELECT COUNT(*) …` statement answers.
    pub(super) async fn count(&self, sql: &'static str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(sql).fetch_one(&self.pool).await?)
    }

    pub(super) async fn audit_entries(&self, entity_type: &str, entity_id: &str) -> anyhow::Result<Vec<AuditEntry>> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT id, entity_type, entity_id, action, actor_user_id, details, request_id, created_at \
             FROM audit_logs WHERE entity_type = ?1 AND entity_id = ?2 ORDER BY created_at, id",
        )
        .bind(entity_type)
        .bind(entity_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(AuditEntry {
                    id: Uuid::parse_str(&row.0).context("audit id")?,
                    entity_type: row.1,
                    entity_id: row.2,
                    action: row.3,
                    actor_user_id: row.4,
                    details: serde_json::from_str(&row.5).context("audit details")?,
                    request_id: row.6,
                    created_at: from_micros(row.7)?,
                })
            })
            .collect()
    }

    pub(super) async fn balance_sum(&self) -> anyhow::Result<(i128, i64)> {
        // TOTAL would go through a float; SUM stays exact (and errors on overflow).
        let (sum, count): (i64, i64) = sqlx::query_as("SELECT COALESCE(SUM(amount), 0), COUNT(*) FROM balances")
            .fetch_one(&self.pool)
            .await?;
        Ok((i128::from(sum), count))
    }

    pub(super) async fn verify(&self, limit: i64) -> anyhow::Result<Vec<Violation>> {
        let mut violations = Vec::new();
        for (make, sql) in verify_queries(limit) {
            let rows: Vec<(i64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?;
            violations.extend(rows.into_iter().map(|(a, b, c)| make(a, b, c)));
        }
        Ok(violations)
    }

    pub(super) async fn create_user(
        &self,
        user: &NewUser,
        audit: &AuditEntry,
        now: DateTime<Utc>,
    ) -> Result<RawUser, UserWriteError> {
        let doing = "creating a user";
        let fail = |error| write_error(error, doing);
        let mut transaction = self.pool.begin().await.map_err(fail)?;
        let sql = format!(
            "INSERT INTO users (username, email, password_hash, role, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?5) RETURNING {USER_COLUMNS}"
        );
        let row: UserRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(&user.username)
            .bind(&user.email)
            .bind(&user.password_hash)
            .bind(user.role.as_str())
            .bind(micros(now))
            .fetch_one(&mut *transaction)
            .await
            .map_err(fail)?;
        let user = raw_user(row).map_err(UserWriteError::Store)?;
        sqlx::query("INSERT INTO balances (user_id, last_updated_at) VALUES (?1, ?2)")
            .bind(user.id)
            .bind(micros(now))
            .execute(&mut *transaction)
            .await
            .map_err(fail)?;
        let audit = AuditEntry {
            entity_id: user.id.to_string(),
            ..audit.clone()
        };
        sqlx::query(INSERT_AUDIT)
            .bind(audit_json(std::slice::from_ref(&audit)))
            .execute(&mut *transaction)
            .await
            .map_err(fail)?;
        transaction.commit().await.map_err(fail)?;
        Ok(user)
    }

    pub(super) async fn create_users(
        &self,
        users: &[NewUser],
        audit_ids: &[Uuid],
        actor: Option<i64>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Vec<(String, i64)>> {
        let input: Vec<_> = users
            .iter()
            .zip(audit_ids)
            .map(|(user, audit_id)| {
                json!([
                    user.username,
                    user.email,
                    user.password_hash,
                    user.role.as_str(),
                    audit_id.to_string()
                ])
            })
            .collect();
        let input = serde_json::Value::Array(input).to_string();
        let mut transaction = self.pool.begin().await?;
        // The audit rows first, while "new" is still "has no account yet" for the
        // users inserted just before.
        sqlx::query(
            "INSERT OR IGNORE INTO users (username, email, password_hash, role, created_at, updated_at) \
             SELECT value->>0, value->>1, value->>2, value->>3, ?2, ?2 FROM json_each(?1)",
        )
        .bind(&input)
        .bind(micros(now))
        .execute(&mut *transaction)
        .await
        .context("creating users")?;
        sqlx::query(
            "INSERT INTO audit_logs (id, entity_type, entity_id, action, actor_user_id, details, request_id, created_at) \
             SELECT j.value->>4, 'user', CAST(u.id AS TEXT), 'registered', ?2, \
                    json_object('username', u.username, 'role', u.role, 'bulk', json('true')), NULL, ?3 \
               FROM json_each(?1) AS j JOIN users u ON lower(u.username) = lower(j.value->>0) \
              WHERE NOT EXISTS (SELECT 1 FROM balances b WHERE b.user_id = u.id)",
        )
        .bind(&input)
        .bind(actor)
        .bind(micros(now))
        .execute(&mut *transaction)
        .await
        .context("auditing new users")?;
        sqlx::query(
            "INSERT INTO balances (user_id, last_updated_at) \
             SELECT u.id, ?2 FROM json_each(?1) AS j JOIN users u ON lower(u.username) = lower(j.value->>0) \
              WHERE NOT EXISTS (SELECT 1 FROM balances b WHERE b.user_id = u.id)",
        )
        .bind(&input)
        .bind(micros(now))
        .execute(&mut *transaction)
        .await
        .context("creating accounts")?;
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT u.id, j.value->>0 FROM json_each(?1) AS j JOIN users u ON lower(u.username) = lower(j.value->>0) \
              ORDER BY j.key",
        )
        .bind(&input)
        .fetch_all(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(rows.into_iter().map(|(id, username)| (username, id)).collect())
    }

    pub(super) async fn user(&self, id: i64) -> anyhow::Result<Option<RawUser>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1");
        let row: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(raw_user).transpose()
    }

    pub(super) async fn user_by_username(&self, username: &str) -> anyhow::Result<Option<RawUser>> {
        // lower(username) is what the unique index holds, so this is an index lookup.
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE lower(username) = lower(?1) AND deleted_at IS NULL");
        let row: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        row.map(raw_user).transpose()
    }

    pub(super) async fn users(&self, after_id: i64, limit: i64) -> anyhow::Result<Vec<RawUser>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id > ?1 AND deleted_at IS NULL ORDER BY id LIMIT ?2");
        let rows: Vec<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(after_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(raw_user).collect()
    }

    pub(super) async fn user_count(&self) -> anyhow::Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE deleted_at IS NULL")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub(super) async fn update_user(
        &self,
        id: i64,
        changes: &UserChanges,
        audit: &[AuditEntry],
        now: DateTime<Utc>,
    ) -> Result<Option<RawUser>, UserWriteError> {
        let doing = "updating a user";
        let fail = |error| write_error(error, doing);
        let mut transaction = self.pool.begin().await.map_err(fail)?;
        // Only the given fields change: a NULL parameter keeps the column.
        let sql = format!(
            "UPDATE users SET username = COALESCE(?2, username), email = COALESCE(?3, email), \
                    password_hash = COALESCE(?4, password_hash), role = COALESCE(?5, role), \
                    updated_at = ?6, token_version = token_version + ?7 \
              WHERE id = ?1 AND deleted_at IS NULL RETURNING {USER_COLUMNS}"
        );
        let row: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(&changes.username)
            .bind(&changes.email)
            .bind(&changes.password_hash)
            .bind(changes.role.map(|role| role.as_str()))
            .bind(micros(now))
            .bind(i64::from(changes.bump_token_version))
            .fetch_optional(&mut *transaction)
            .await
            .map_err(fail)?;
        let Some(row) = row else {
            return Ok(None);
        };
        if !audit.is_empty() {
            sqlx::query(INSERT_AUDIT)
                .bind(audit_json(audit))
                .execute(&mut *transaction)
                .await
                .map_err(fail)?;
        }
        transaction.commit().await.map_err(fail)?;
        raw_user(row).map(Some).map_err(UserWriteError::Store)
    }

    pub(super) async fn delete_user(
        &self,
        id: i64,
        audit: &AuditEntry,
        now: DateTime<Utc>,
    ) -> Result<Option<RawUser>, UserWriteError> {
        let doing = "deleting a user";
        let fail = |error| write_error(error, doing);
        let mut transaction = self.pool.begin().await.map_err(fail)?;
        let sql = format!(
            "UPDATE users SET deleted_at = ?2, updated_at = ?2, token_version = token_version + 1 \
              WHERE id = ?1 AND deleted_at IS NULL RETURNING {USER_COLUMNS}"
        );
        let row: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(micros(now))
            .fetch_optional(&mut *transaction)
            .await
            .map_err(fail)?;
        let Some(row) = row else {
            return Ok(None);
        };
        sqlx::query("UPDATE refresh_tokens SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL")
            .bind(id)
            .bind(micros(now))
            .execute(&mut *transaction)
            .await
            .map_err(fail)?;
        sqlx::query(INSERT_AUDIT)
            .bind(audit_json(std::slice::from_ref(audit)))
            .execute(&mut *transaction)
            .await
            .map_err(fail)?;
        transaction.commit().await.map_err(fail)?;
        raw_user(row).map(Some).map_err(UserWriteError::Store)
    }

    pub(super) async fn append_audit(&self, entries: &[AuditEntry]) -> anyhow::Result<()> {
        sqlx::query(INSERT_AUDIT)
            .bind(audit_json(entries))
            .execute(&self.pool)
            .await
            .context("inserting audit rows")?;
        Ok(())
    }

    pub(super) async fn insert_refresh_token(&self, token: &RefreshToken) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO refresh_tokens (id, user_id, family, expires_at, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(token.id.to_string())
        .bind(token.user_id)
        .bind(token.family.to_string())
        .bind(micros(token.expires_at))
        .bind(micros(token.created_at))
        .execute(&self.pool)
        .await
        .context("inserting a refresh token")?;
        Ok(())
    }

    pub(super) async fn use_refresh_token(&self, id: Uuid, now: DateTime<Utc>) -> anyhow::Result<RefreshUse> {
        let spent: Option<(i64, String)> = sqlx::query_as(SPEND_REFRESH_TOKEN)
            .bind(id.to_string())
            .bind(micros(now))
            .fetch_optional(&self.pool)
            .await
            .context("spending a refresh token")?;
        if let Some((user_id, family)) = spent {
            let family = Uuid::parse_str(&family).context("refresh token family")?;
            return Ok(RefreshUse::Fresh { user_id, family });
        }
        // Used and revoked are final states, so this reads a state no later use can
        // change back.
        let found: Option<(i64, String, bool)> = sqlx::query_as(
            "SELECT user_id, family, used_at IS NOT NULL OR revoked_at IS NOT NULL \
             FROM refresh_tokens WHERE id = ?1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .context("looking up a refresh token")?;
        Ok(match found {
            Some((user_id, family, true)) => RefreshUse::Reused {
                user_id,
                family: Uuid::parse_str(&family).context("refresh token family")?,
            },
            _ => RefreshUse::Unknown,
        })
    }

    pub(super) async fn revoke_refresh_family(&self, family: Uuid, now: DateTime<Utc>) -> anyhow::Result<u64> {
        let result = sqlx::query("UPDATE refresh_tokens SET revoked_at = ?2 WHERE family = ?1 AND revoked_at IS NULL")
            .bind(family.to_string())
            .bind(micros(now))
            .execute(&self.pool)
            .await
            .context("revoking a refresh token family")?;
        Ok(result.rows_affected())
    }

    pub(super) async fn revoke_user_refresh_tokens(&self, user_id: i64, now: DateTime<Utc>) -> anyhow::Result<u64> {
        let result = sqlx::query("UPDATE refresh_tokens SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL")
            .bind(user_id)
            .bind(micros(now))
            .execute(&self.pool)
            .await
            .context("revoking a user's refresh tokens")?;
        Ok(result.rows_affected())
    }

    pub(super) async fn history(&self, statement: Statement) -> anyhow::Result<Vec<(i64, RawTransaction)>> {
        use sqlx::Row;
        let rows = sqlx::query_with(sqlx::AssertSqlSafe(statement.sql), arguments(statement.params)?)
            .fetch_all(&self.pool)
            .await
            .context("reading an account's history")?;
        rows.iter()
            .map(|row| Ok((row.try_get("position")?, raw_transaction(row)?)))
            .collect()
    }

    pub(super) async fn journal(&self, statement: Statement) -> anyhow::Result<Vec<RawJournalEntry>> {
        let rows: Vec<JournalRow> =
            sqlx::query_as_with(sqlx::AssertSqlSafe(statement.sql), arguments(statement.params)?)
                .fetch_all(&self.pool)
                .await
                .context("reading an account's journal")?;
        rows.into_iter()
            .map(
                |(transaction_id, kind, version, delta, balance_after, counterparty, created_at)| {
                    Ok(RawJournalEntry {
                        transaction_id: Uuid::parse_str(&transaction_id).context("transaction id")?,
                        kind,
                        version,
                        delta,
                        balance_after,
                        counterparty,
                        created_at: from_micros(created_at)?,
                    })
                },
            )
            .collect()
    }
}

fn raw_transaction(row: &sqlx::sqlite::SqliteRow) -> anyhow::Result<RawTransaction> {
    use sqlx::Row;
    let id: String = row.try_get("id")?;
    Ok(RawTransaction {
        id: Uuid::parse_str(&id).context("transaction id")?,
        kind: row.try_get("type")?,
        status: row.try_get("status")?,
        from: row.try_get("from_user_id")?,
        to: row.try_get("to_user_id")?,
        amount: row.try_get("amount")?,
        from_version: row.try_get("from_version")?,
        from_balance_after: row.try_get("from_balance_after")?,
        to_version: row.try_get("to_version")?,
        to_balance_after: row.try_get("to_balance_after")?,
        refund_version: row.try_get("refund_version")?,
        refund_balance_after: row.try_get("refund_balance_after")?,
        failure_reason: row.try_get("failure_reason")?,
        initiator: row.try_get("initiator_id")?,
        idempotency_key: row.try_get("idempotency_key")?,
        created_at: from_micros(row.try_get("created_at")?)?,
        completed_at: from_micros(row.try_get("completed_at")?)?,
        held_amount: row.try_get("held_amount")?,
        expires_at: row
            .try_get::<Option<i64>, _>("expires_at")?
            .map(from_micros)
            .transpose()?,
        parent_id: uuid_column(row, "parent_id")?,
        batch_id: uuid_column(row, "batch_id")?,
        leg: row.try_get("leg")?,
    })
}

fn uuid_column(row: &sqlx::sqlite::SqliteRow, column: &str) -> anyhow::Result<Option<Uuid>> {
    use sqlx::Row;
    let text: Option<String> = row.try_get(column)?;
    text.map(|text| Uuid::parse_str(&text).with_context(|| format!("{column} is not a UUID")))
        .transpose()
}

/// The unique index a failed write violated. SQLite reports no constraint name apart
/// from its message, which for an index on an expression is exactly
/// `UNIQUE constraint failed: index '<name>'`; the users indexes are on expressions for
/// that reason (an index on plain columns is reported by its columns instead).
fn violated_unique_index(error: &sqlx::Error) -> Option<&str> {
    match error {
        sqlx::Error::Database(database) if database.kind() == ErrorKind::UniqueViolation => database
            .message()
            .strip_prefix("UNIQUE constraint failed: index '")?
            .strip_suffix('\''),
        _ => None,
    }
}

fn write_error(error: sqlx::Error, doing: &'static str) -> UserWriteError {
    let index = violated_unique_index(&error).map(str::to_owned);
    user_write_error(error, index.as_deref(), doing)
}

fn raw_user(row: UserRow) -> anyhow::Result<RawUser> {
    let (id, username, email, password_hash, role, created_at, updated_at, deleted_at, token_version) = row;
    Ok(RawUser {
        id,
        username,
        email,
        password_hash,
        role,
        created_at: from_micros(created_at)?,
        updated_at: from_micros(updated_at)?,
        deleted_at: deleted_at.map(from_micros).transpose()?,
        token_version,
    })
}

/// Audit entries as the JSON array [`INSERT_AUDIT`] expands.
fn audit_json(entries: &[AuditEntry]) -> String {
    let rows: Vec<_> = entries
        .iter()
        .map(|a| {
            json!([
                a.id.to_string(),
                a.entity_type,
                a.entity_id,
                a.action,
                a.actor_user_id,
                a.details.to_string(),
                a.request_id,
                micros(a.created_at)
            ])
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

/// The parameters of a statement built at run time, in SQLite's column types.
pub(super) fn arguments(params: Vec<Param>) -> anyhow::Result<SqliteArguments> {
    use sqlx::Arguments;
    let mut arguments = SqliteArguments::default();
    for param in params {
        match param {
            Param::Integer(value) => arguments.add(value),
            Param::Text(value) => arguments.add(value),
            Param::Time(value) => arguments.add(micros(value)),
            Param::Id(value) => arguments.add(value.to_string()),
        }
        .map_err(|error| anyhow::anyhow!("binding a parameter: {error}"))?;
    }
    Ok(arguments)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The persister's connection keeps its statement journals in memory; the shared
    /// store's connections keep SQLite's default (a file).
    #[tokio::test]
    async fn the_writer_keeps_temporary_storage_in_memory() {
        let directory = std::env::temp_dir().join(format!("tally_sqlite_{}", Uuid::now_v7().simple()));
        let url = format!("sqlite://{}/tally.db", directory.display());
        let timeout = Duration::from_secs(5);
        let temp_store = |store: SqliteStore| async move {
            let mut connection = store.pool.acquire().await.unwrap();
            let value: i64 = sqlx::query_scalar("PRAGMA temp_store")
                .fetch_one(&mut *connection)
                .await
                .unwrap();
            value
        };
        assert_eq!(temp_store(SqliteStore::connect_writer(&url, timeout).unwrap()).await, 2);
        assert_eq!(
            temp_store(SqliteStore::connect_lazy(&url, 1, timeout).unwrap()).await,
            0
        );
        std::fs::remove_dir_all(directory).unwrap();
    }
}
