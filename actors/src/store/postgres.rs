//! The PostgreSQL store: one statement per batch, set-based over UNNESTed arrays.
//!
//! A batch is a single statement whose data-modifying CTEs insert the transactions,
//! update one balance row per account and, when the batch has any, insert the audit rows:
//! as one statement it is one implicit transaction and one round trip, so a group commit
//! costs one fsync.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::FromRow;
use sqlx::error::ErrorKind;
use sqlx::postgres::{PgArguments, PgPool, PgPoolOptions, Postgres};
use uuid::Uuid;

use super::held::HeldConnection;
use super::history::{Param, Statement};
use super::{
    ACCOUNT_ROW_ID, AccountRow, Batch, NewUser, RawJournalEntry, RawTransaction, RawUser, RefreshToken, RefreshUse,
    TRANSACTION_COLUMNS, USER_COLUMNS, UserChanges, UserWriteError, Violation, user_write_error, verify_queries,
    version_i64,
};
use crate::money::{AccountId, Amount};
use crate::record::{AuditEntry, TransactionRecord};

type AuditRow = (
    Uuid,
    String,
    String,
    String,
    Option<i64>,
    serde_json::Value,
    Option<String>,
    chrono::DateTime<chrono::Utc>,
);

type UserRow = (
    i64,
    String,
    String,
    String,
    String,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    i64,
);

type JournalRow = (Uuid, String, i64, i64, i64, i64, DateTime<Utc>);

#[derive(Clone, Debug)]
pub(super) struct PgStore {
    pub(super) pool: PgPool,
    /// The persister's connection (see [`HeldConnection`]); `None` on the shared store.
    held: Option<HeldConnection<Postgres>>,
}

/// The transactions columns a batch writes, in the order [`bind_records`] binds them.
const WRITTEN_COLUMNS: &str = "id, type, status, from_user_id, to_user_id, amount, \
    from_version, from_balance_after, to_version, to_balance_after, refund_version, refund_balance_after, \
    failure_reason, initiator_id, idempotency_key, created_at, completed_at, held_amount, expires_at, \
    parent_id, batch_id, leg";

/// `UNNEST` of the 22 arrays [`bind_records`] binds, from parameter `$first` on.
fn unnest_records(first: usize) -> String {
    const TYPES: [&str; 22] = [
        "uuid",
        "text",
        "text",
        "int8",
        "int8",
        "int8",
        "int8",
        "int8",
        "int8",
        "int8",
        "int8",
        "int8",
        "text",
        "int8",
        "text",
        "timestamptz",
        "timestamptz",
        "int8",
        "timestamptz",
        "uuid",
        "uuid",
        "int4",
    ];
    let arrays: Vec<String> = TYPES
        .iter()
        .enumerate()
        .map(|(offset, kind)| format!("${}::{kind}[]", first + offset))
        .collect();
    format!("UNNEST({})", arrays.join(", "))
}

/// How a batch statement treats rows that already exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Rewrite {
    /// Plain inserts: a row that already exists fails the statement. Every first
    /// attempt, which is nearly every batch: `ON CONFLICT` makes PostgreSQL probe the
    /// unique index before every row and insert it speculatively, work a plain insert
    /// does not do.
    No,
    /// Rows already written are left alone: the batch is written again after an attempt
    /// whose outcome was not known (the commit may have happened before the connection
    /// broke). Writing a batch again is harmless: a written row only changes when a
    /// hold settles, and balance rows only move to a later version.
    Yes,
}

/// What a batch holds besides new transactions and balance rows; each part the batch
/// lacks is left out of its statement, so PostgreSQL neither binds its arrays nor sets
/// up the insert (opening the table and its indexes, preparing its constraints) for no
/// rows, a fixed cost paid by every group commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Parts {
    /// Audit rows (status and rule changes).
    audit: bool,
    /// Holds written as pending by an earlier batch and settled since.
    settling: bool,
}

/// One group commit as one statement (so one transaction): new transactions, balance
/// rows and, when `parts` says so, audit rows and settled holds. The inserts are
/// data-modifying CTEs, which PostgreSQL runs to completion whether or not anything
/// reads them, so they return nothing. Parameters: the transactions' 22 arrays from
/// `$1`, the balances' 11 from `$23`, then the audit rows' 8 and the settled holds' 22
/// when present, in that order (as [`PgStore::run_batch`] binds them).
fn write_batch_statement(parts: Parts, rewrite: Rewrite) -> String {
    let on_conflict = match rewrite {
        Rewrite::No => "",
        Rewrite::Yes => "\n    ON CONFLICT (id) DO NOTHING",
    };
    let mut next = 34;
    let mut ctes = Vec::new();
    if parts.audit {
        let arrays: Vec<String> = ["uuid", "text", "text", "text", "int8", "jsonb", "text", "timestamptz"]
            .iter()
            .enumerate()
            .map(|(offset, kind)| format!("${}::{kind}[]", next + offset))
            .collect();
        next += arrays.len();
        ctes.push(format!(
            "new_audit AS (
    INSERT INTO audit_logs (id, entity_type, entity_id, action, actor_user_id, details, request_id, created_at)
    SELECT * FROM UNNEST({}){on_conflict}
)",
            arrays.join(", ")
        ));
    }
    if parts.settling {
        // An upsert only for these few rows (see `Rewrite::No`).
        ctes.push(format!(
            "settled_holds AS (
    INSERT INTO transactions ({WRITTEN_COLUMNS})
    SELECT * FROM {}
    ON CONFLICT (id) DO UPDATE
       SET status = EXCLUDED.status, amount = EXCLUDED.amount,
           from_version = EXCLUDED.from_version, from_balance_after = EXCLUDED.from_balance_after,
           to_version = EXCLUDED.to_version, to_balance_after = EXCLUDED.to_balance_after,
           refund_version = EXCLUDED.refund_version, refund_balance_after = EXCLUDED.refund_balance_after,
           failure_reason = EXCLUDED.failure_reason, completed_at = EXCLUDED.completed_at
     WHERE transactions.status = 'pending'
)",
            unnest_records(next)
        ));
    }
    let others: String = ctes.iter().map(|cte| format!(", {cte}")).collect();
    format!(
        "WITH new_transactions AS (
    INSERT INTO transactions ({WRITTEN_COLUMNS})
    SELECT * FROM {new}{on_conflict}
){others}
UPDATE balances AS b
   SET amount = u.amount, held = u.held, status = u.status, version = u.version,
       last_updated_at = u.updated_at, overdraft_limit = u.overdraft_limit,
       max_balance = u.max_balance, daily_debit_cap = u.daily_debit_cap,
       debit_day = u.debit_day, debited_on_day = u.debited_on_day
  FROM UNNEST($23::int8[], $24::int8[], $25::int8[], $26::text[], $27::int8[], $28::timestamptz[],
              $29::int8[], $30::int8[], $31::int8[], $32::int8[], $33::int8[])
       AS u(user_id, amount, held, status, version, updated_at, overdraft_limit, max_balance,
            daily_debit_cap, debit_day, debited_on_day)
 WHERE b.user_id = u.user_id AND b.version < u.version",
        new = unnest_records(1),
    )
}

/// The eight batch statements, by the parts a batch holds and how rows that exist are
/// met.
static WRITE_BATCH: std::sync::LazyLock<HashMap<(Parts, Rewrite), String>> = std::sync::LazyLock::new(|| {
    let mut statements = HashMap::new();
    for rewrite in [Rewrite::No, Rewrite::Yes] {
        for audit in [false, true] {
            for settling in [false, true] {
                let parts = Parts { audit, settling };
                statements.insert((parts, rewrite), write_batch_statement(parts, rewrite));
            }
        }
    }
    statements
});

fn batch_statement(parts: Parts, rewrite: Rewrite) -> &'static str {
    &WRITE_BATCH[&(parts, rewrite)]
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, PgArguments>;

/// Bind the 22 columns of `records` as arrays, in the order of [`WRITTEN_COLUMNS`].
fn bind_records<'q>(query: PgQuery<'q>, records: &[TransactionRecord]) -> PgQuery<'q> {
    let column =
        |f: &dyn Fn(&TransactionRecord) -> Option<i64>| -> Vec<Option<i64>> { records.iter().map(f).collect() };
    query
        .bind(records.iter().map(|t| t.id).collect::<Vec<Uuid>>())
        .bind(records.iter().map(|t| t.kind.as_str()).collect::<Vec<_>>())
        .bind(records.iter().map(|t| t.status.as_str()).collect::<Vec<_>>())
        .bind(records.iter().map(|t| t.from.get()).collect::<Vec<_>>())
        .bind(records.iter().map(|t| t.to.get()).collect::<Vec<_>>())
        .bind(records.iter().map(|t| t.amount.minor()).collect::<Vec<_>>())
        .bind(column(&|t| {
            t.debit.map(|p| p.version).or(t.refused_version).map(version_i64)
        }))
        .bind(column(&|t| t.debit.map(|p| p.balance_after)))
        .bind(column(&|t| t.credit.map(|p| version_i64(p.version))))
        .bind(column(&|t| t.credit.map(|p| p.balance_after)))
        .bind(column(&|t| t.refund.map(|p| version_i64(p.version))))
        .bind(column(&|t| t.refund.map(|p| p.balance_after)))
        .bind(
            records
                .iter()
                .map(|t| t.failure_reason.map(|r| r.code()))
                .collect::<Vec<_>>(),
        )
        .bind(column(&|t| t.initiator))
        .bind(records.iter().map(|t| t.idempotency_key.clone()).collect::<Vec<_>>())
        .bind(records.iter().map(|t| t.created_at).collect::<Vec<_>>())
        .bind(records.iter().map(|t| t.completed_at).collect::<Vec<_>>())
        .bind(column(&|t| t.held_amount.map(Amount::minor)))
        .bind(records.iter().map(|t| t.expires_at).collect::<Vec<_>>())
        .bind(records.iter().map(|t| t.parent_id).collect::<Vec<_>>())
        .bind(records.iter().map(|t| t.batch_id).collect::<Vec<_>>())
        .bind(records.iter().map(|t| t.leg.map(|leg| leg as i32)).collect::<Vec<_>>())
}

/// Bind the eight columns of `entries` as arrays, in the order of the audit_logs inserts.
fn bind_audit<'q>(query: PgQuery<'q>, entries: &'q [AuditEntry]) -> PgQuery<'q> {
    let audit = AuditColumns::of(entries);
    query
        .bind(audit.ids)
        .bind(audit.entity_types)
        .bind(audit.entity_ids)
        .bind(audit.actions)
        .bind(audit.actor_user_ids)
        .bind(audit.details)
        .bind(audit.request_ids)
        .bind(audit.created_ats)
}

/// A user, its account and its audit row: one statement, so one transaction. The
/// account and audit inserts read the new id from the users insert.
const CREATE_USER: &str = "
WITH new_user AS (
    INSERT INTO users (username, email, password_hash, role, created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $5)
    RETURNING id, username, email, password_hash, role, created_at, updated_at, deleted_at, token_version
), new_account AS (
    INSERT INTO balances (user_id, last_updated_at) SELECT id, created_at FROM new_user
), new_audit AS (
    INSERT INTO audit_logs (id, entity_type, entity_id, action, actor_user_id, details, request_id, created_at)
    SELECT $6, $7, id::text, $8, $9, $10, $11, $12 FROM new_user
)
SELECT * FROM new_user";

/// Many users at once: the new ones get their accounts and audit rows; existing names
/// are skipped.
const CREATE_USERS: &str = "
WITH input AS (
    SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::uuid[])
        AS i(username, email, password_hash, role, audit_id)
), new_users AS (
    INSERT INTO users (username, email, password_hash, role, created_at, updated_at)
    SELECT username, email, password_hash, role, $6, $6 FROM input
    ON CONFLICT DO NOTHING
    RETURNING id, username, role, created_at
), new_accounts AS (
    INSERT INTO balances (user_id, last_updated_at) SELECT id, created_at FROM new_users
), new_audit AS (
    INSERT INTO audit_logs (id, entity_type, entity_id, action, actor_user_id, details, request_id, created_at)
    SELECT i.audit_id, 'user', u.id::text, 'registered', $7,
           jsonb_build_object('username', u.username, 'role', u.role, 'bulk', true), NULL, u.created_at
      FROM new_users u JOIN input i ON i.username = u.username
)
SELECT COUNT(*) FROM new_users";

/// Only the given fields change (a NULL parameter keeps the column); the audit rows are
/// written only when a user was updated.
const UPDATE_USER: &str = "
WITH updated AS (
    UPDATE users
       SET username = COALESCE($2, username), email = COALESCE($3, email),
           password_hash = COALESCE($4, password_hash), role = COALESCE($5, role),
           updated_at = $6, token_version = token_version + CASE WHEN $15 THEN 1 ELSE 0 END
     WHERE id = $1 AND deleted_at IS NULL
    RETURNING id, username, email, password_hash, role, created_at, updated_at, deleted_at, token_version
), new_audit AS (
    INSERT INTO audit_logs (id, entity_type, entity_id, action, actor_user_id, details, request_id, created_at)
    SELECT * FROM UNNEST($7::uuid[], $8::text[], $9::text[], $10::text[], $11::int8[], $12::jsonb[],
                         $13::text[], $14::timestamptz[])
     WHERE EXISTS (SELECT 1 FROM updated)
    ON CONFLICT (id) DO NOTHING
)
SELECT * FROM updated";

/// The soft delete, the revocation of the user's refresh tokens and the audit row, all
/// conditional on the user being there and not deleted yet.
const DELETE_USER: &str = "
WITH deleted AS (
    UPDATE users SET deleted_at = $2, updated_at = $2, token_version = token_version + 1
     WHERE id = $1 AND deleted_at IS NULL
    RETURNING id, username, email, password_hash, role, created_at, updated_at, deleted_at, token_version
), revoked AS (
    UPDATE refresh_tokens SET revoked_at = $2
     WHERE user_id IN (SELECT id FROM deleted) AND revoked_at IS NULL
), new_audit AS (
    INSERT INTO audit_logs (id, entity_type, entity_id, action, actor_user_id, details, request_id, created_at)
    SELECT $3, $4, $5, $6, $7, $8, $9, $10 FROM deleted
    ON CONFLICT (id) DO NOTHING
)
SELECT * FROM deleted";

const INSERT_AUDIT: &str = "
INSERT INTO audit_logs (id, entity_type, entity_id, action, actor_user_id, details, request_id, created_at)
SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::jsonb[],
                     $7::text[], $8::timestamptz[])
ON CONFLICT (id) DO NOTHING";

/// Spends the token only if it is still valid. Under concurrent uses the row lock
/// serializes the updates and each re-checks the condition on the row as the previous
/// one left it, so exactly one matches.
const SPEND_REFRESH_TOKEN: &str = "
UPDATE refresh_tokens SET used_at = $2
 WHERE id = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $2
RETURNING user_id, family";

impl PgStore {
    pub(super) async fn connect(url: &str, max_connections: u32, acquire_timeout: Duration) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect(url)
            .await
            .with_context(|| format!("connecting to PostgreSQL at {}", redact(url)))?;
        Ok(PgStore { pool, held: None })
    }

    pub(super) fn connect_lazy(url: &str, max_connections: u32, acquire_timeout: Duration) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect_lazy(url)
            .with_context(|| format!("parsing the PostgreSQL URL {}", redact(url)))?;
        Ok(PgStore { pool, held: None })
    }

    /// A store for the persister alone: one connection, held between batches.
    pub(super) fn connect_writer(url: &str, acquire_timeout: Duration) -> anyhow::Result<Self> {
        let store = Self::connect_lazy(url, 1, acquire_timeout)?;
        Ok(PgStore {
            held: Some(HeldConnection::default()),
            ..store
        })
    }

    pub(super) async fn migrate(&self) -> anyhow::Result<()> {
        sqlx::migrate!("../migrations/postgres").run(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn create_accounts(&self, ids: &[AccountId]) -> anyhow::Result<u64> {
        let ids: Vec<i64> = ids.iter().map(|id| id.get()).collect();
        let result = sqlx::query(
            "INSERT INTO balances (user_id) SELECT * FROM UNNEST($1::int8[]) ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(ids)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// The rows of those of `ids` that exist, each after its account's id (the last
    /// column, so that the others decode as an [`AccountRow`]).
    pub(super) async fn account_rows(&self, ids: &[i64]) -> anyhow::Result<Vec<(i64, AccountRow)>> {
        let rows = sqlx::query(
            "SELECT amount, held, status, version, overdraft_limit, max_balance, daily_debit_cap, debit_day, \
                    debited_on_day, user_id FROM balances WHERE user_id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((sqlx::Row::try_get(row, ACCOUNT_ROW_ID)?, sqlx::FromRow::from_row(row)?)))
            .collect()
    }

    pub(super) async fn open_holds(&self, id: AccountId) -> anyhow::Result<Vec<RawTransaction>> {
        let sql =
            format!("SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE from_user_id = $1 AND status = 'pending'");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.get())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(raw_transaction)
            .collect()
    }

    pub(super) async fn write_batch(&self, batch: &Batch) -> anyhow::Result<()> {
        let mut written = self.run_batch(batch, Rewrite::No).await;
        if let Err(error) = &written
            && let Some(index) = violated_unique_index(error)
        {
            // Some rows are there already: an earlier attempt committed after all.
            tracing::info!(index, "a batch written again after an attempt of unknown outcome");
            written = self.run_batch(batch, Rewrite::Yes).await;
        }
        written.context("writing a batch to PostgreSQL")
    }

    async fn run_batch(&self, batch: &Batch, rewrite: Rewrite) -> Result<(), sqlx::Error> {
        let balances = &batch.balances;
        let parts = Parts {
            audit: !batch.audit.is_empty(),
            settling: !batch.settled_holds.is_empty(),
        };
        let mut query = bind_records(
            sqlx::query(sqlx::AssertSqlSafe(batch_statement(parts, rewrite))),
            &batch.transactions,
        )
        .bind(balances.iter().map(|b| b.account.get()).collect::<Vec<_>>())
        .bind(balances.iter().map(|b| b.balance).collect::<Vec<_>>())
        .bind(balances.iter().map(|b| b.held).collect::<Vec<_>>())
        .bind(balances.iter().map(|b| b.status.as_str()).collect::<Vec<_>>())
        .bind(balances.iter().map(|b| version_i64(b.version)).collect::<Vec<_>>())
        .bind(balances.iter().map(|b| b.at).collect::<Vec<_>>())
        .bind(balances.iter().map(|b| b.rules.overdraft_limit).collect::<Vec<_>>())
        .bind(balances.iter().map(|b| b.rules.max_balance).collect::<Vec<_>>())
        .bind(balances.iter().map(|b| b.rules.daily_debit_cap).collect::<Vec<_>>())
        .bind(balances.iter().map(|b| b.usage.day).collect::<Vec<_>>())
        .bind(balances.iter().map(|b| b.usage.debited).collect::<Vec<_>>());
        if parts.audit {
            query = bind_audit(query, &batch.audit);
        }
        if parts.settling {
            query = bind_records(query, &batch.settled_holds);
        }
        let Some(held) = &self.held else {
            query.execute(&self.pool).await?;
            return Ok(());
        };
        let mut lease = held.lease(&self.pool).await?;
        query.execute(lease.connection()).await?;
        lease.keep();
        Ok(())
    }

    pub(super) async fn transaction(&self, id: Uuid) -> anyhow::Result<Option<RawTransaction>> {
        let sql = format!("SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
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
             WHERE initiator_id = $1 AND idempotency_key = $2"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(initiator)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| raw_transaction(&row)).transpose()
    }

    pub(super) async fn batch_legs(&self, batch: Uuid) -> anyhow::Result<Vec<RawTransaction>> {
        let sql = format!("SELECT {TRANSACTION_COLUMNS} FROM transactions WHERE batch_id = $1 ORDER BY leg");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(batch)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(raw_transaction).collect()
    }

    pub(super) async fn reversed_total(&self, original: Uuid) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COALESCE(SUM(amount), 0)::int8 FROM transactions WHERE parent_id = $1 AND status = 'completed'",
        )
        .bind(original)
        .fetch_one(&self.pool)
        .await?)
    }

    pub(super) async fn expiring_holds(&self) -> anyhow::Result<Vec<(DateTime<Utc>, Uuid, i64)>> {
        Ok(sqlx::query_as(
            "SELECT expires_at, id, from_user_id FROM transactions \
             WHERE status = 'pending' AND expires_at IS NOT NULL ORDER BY expires_at",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The one number a `SELECT COUNT(*) …` statement answers.
    pub(super) async fn count(&self, sql: &'static str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(sql).fetch_one(&self.pool).await?)
    }

    pub(super) async fn audit_entries(&self, entity_type: &str, entity_id: &str) -> anyhow::Result<Vec<AuditEntry>> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT id, entity_type, entity_id, action, actor_user_id, details, request_id, created_at \
             FROM audit_logs WHERE entity_type = $1 AND entity_id = $2 ORDER BY created_at, id",
        )
        .bind(entity_type)
        .bind(entity_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| AuditEntry {
                id: row.0,
                entity_type: row.1,
                entity_id: row.2,
                action: row.3,
                actor_user_id: row.4,
                details: row.5,
                request_id: row.6,
                created_at: row.7,
            })
            .collect())
    }

    pub(super) async fn balance_sum(&self) -> anyhow::Result<(i128, i64)> {
        let (sum, count): (String, i64) =
            sqlx::query_as("SELECT COALESCE(SUM(amount), 0)::text, COUNT(*) FROM balances")
                .fetch_one(&self.pool)
                .await?;
        Ok((sum.parse().context("parsing the balance sum")?, count))
    }

    pub(super) async fn verify(&self, limit: i64) -> anyhow::Result<Vec<Violation>> {
        let mut violations = Vec::new();
        for (make, sql) in verify_queries(limit) {
            // Sums are numeric in PostgreSQL; cast the third column for a uniform decode.
            let sql = format!("SELECT a, b, c::int8 FROM ({sql}) AS v(a, b, c)");
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
        let row: UserRow = sqlx::query_as(CREATE_USER)
            .bind(&user.username)
            .bind(&user.email)
            .bind(&user.password_hash)
            .bind(user.role.as_str())
            .bind(now)
            .bind(audit.id)
            .bind(&audit.entity_type)
            .bind(&audit.action)
            .bind(audit.actor_user_id)
            .bind(&audit.details)
            .bind(&audit.request_id)
            .bind(audit.created_at)
            .fetch_one(&self.pool)
            .await
            .map_err(|error| write_error(error, "creating a user"))?;
        Ok(raw_user(row))
    }

    pub(super) async fn create_users(
        &self,
        users: &[NewUser],
        audit_ids: &[Uuid],
        actor: Option<i64>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Vec<(String, i64)>> {
        let usernames: Vec<&str> = users.iter().map(|user| user.username.as_str()).collect();
        sqlx::query(CREATE_USERS)
            .bind(&usernames)
            .bind(users.iter().map(|user| user.email.as_str()).collect::<Vec<_>>())
            .bind(users.iter().map(|user| user.password_hash.as_str()).collect::<Vec<_>>())
            .bind(users.iter().map(|user| user.role.as_str()).collect::<Vec<_>>())
            .bind(audit_ids)
            .bind(now)
            .bind(actor)
            .execute(&self.pool)
            .await
            .context("creating users")?;
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT u.id, i.username FROM UNNEST($1::text[]) WITH ORDINALITY AS i(username, position) \
             JOIN users u ON lower(u.username) = lower(i.username) ORDER BY i.position",
        )
        .bind(&usernames)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id, username)| (username, id)).collect())
    }

    pub(super) async fn user(&self, id: i64) -> anyhow::Result<Option<RawUser>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        let row: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(raw_user))
    }

    pub(super) async fn user_by_username(&self, username: &str) -> anyhow::Result<Option<RawUser>> {
        // lower(username) is what the unique index holds, so this is an index lookup.
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE lower(username) = lower($1) AND deleted_at IS NULL");
        let row: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(raw_user))
    }

    pub(super) async fn users(&self, after_id: i64, limit: i64) -> anyhow::Result<Vec<RawUser>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id > $1 AND deleted_at IS NULL ORDER BY id LIMIT $2");
        let rows: Vec<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(after_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(raw_user).collect())
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
        let query = sqlx::query(UPDATE_USER)
            .bind(id)
            .bind(&changes.username)
            .bind(&changes.email)
            .bind(&changes.password_hash)
            .bind(changes.role.map(|role| role.as_str()))
            .bind(now);
        let row: Option<UserRow> = bind_audit(query, audit)
            .bind(changes.bump_token_version)
            .fetch_optional(&self.pool)
            .await
            .and_then(|row| row.as_ref().map(UserRow::from_row).transpose())
            .map_err(|error| write_error(error, "updating a user"))?;
        Ok(row.map(raw_user))
    }

    pub(super) async fn delete_user(
        &self,
        id: i64,
        audit: &AuditEntry,
        now: DateTime<Utc>,
    ) -> Result<Option<RawUser>, UserWriteError> {
        let row: Option<UserRow> = sqlx::query_as(DELETE_USER)
            .bind(id)
            .bind(now)
            .bind(audit.id)
            .bind(&audit.entity_type)
            .bind(&audit.entity_id)
            .bind(&audit.action)
            .bind(audit.actor_user_id)
            .bind(&audit.details)
            .bind(&audit.request_id)
            .bind(audit.created_at)
            .fetch_optional(&self.pool)
            .await
            .map_err(|error| write_error(error, "deleting a user"))?;
        Ok(row.map(raw_user))
    }

    pub(super) async fn append_audit(&self, entries: &[AuditEntry]) -> anyhow::Result<()> {
        bind_audit(sqlx::query(INSERT_AUDIT), entries)
            .execute(&self.pool)
            .await
            .context("inserting audit rows")?;
        Ok(())
    }

    pub(super) async fn insert_refresh_token(&self, token: &RefreshToken) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO refresh_tokens (id, user_id, family, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token.id)
        .bind(token.user_id)
        .bind(token.family)
        .bind(token.expires_at)
        .bind(token.created_at)
        .execute(&self.pool)
        .await
        .context("inserting a refresh token")?;
        Ok(())
    }

    pub(super) async fn use_refresh_token(&self, id: Uuid, now: DateTime<Utc>) -> anyhow::Result<RefreshUse> {
        let spent: Option<(i64, Uuid)> = sqlx::query_as(SPEND_REFRESH_TOKEN)
            .bind(id)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .context("spending a refresh token")?;
        if let Some((user_id, family)) = spent {
            return Ok(RefreshUse::Fresh { user_id, family });
        }
        // Used and revoked are final states, so this reads a state no later use can
        // change back.
        let found: Option<(i64, Uuid, bool)> = sqlx::query_as(
            "SELECT user_id, family, used_at IS NOT NULL OR revoked_at IS NOT NULL \
             FROM refresh_tokens WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .context("looking up a refresh token")?;
        Ok(match found {
            Some((user_id, family, true)) => RefreshUse::Reused { user_id, family },
            _ => RefreshUse::Unknown,
        })
    }

    pub(super) async fn revoke_refresh_family(&self, family: Uuid, now: DateTime<Utc>) -> anyhow::Result<u64> {
        let result = sqlx::query("UPDATE refresh_tokens SET revoked_at = $2 WHERE family = $1 AND revoked_at IS NULL")
            .bind(family)
            .bind(now)
            .execute(&self.pool)
            .await
            .context("revoking a refresh token family")?;
        Ok(result.rows_affected())
    }

    pub(super) async fn revoke_user_refresh_tokens(&self, user_id: i64, now: DateTime<Utc>) -> anyhow::Result<u64> {
        let result = sqlx::query("UPDATE refresh_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL")
            .bind(user_id)
            .bind(now)
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
        Ok(rows
            .into_iter()
            .map(
                |(transaction_id, kind, version, delta, balance_after, counterparty, created_at)| RawJournalEntry {
                    transaction_id,
                    kind,
                    version,
                    delta,
                    balance_after,
                    counterparty,
                    created_at,
                },
            )
            .collect())
    }
}

fn raw_transaction(row: &sqlx::postgres::PgRow) -> anyhow::Result<RawTransaction> {
    use sqlx::Row;
    Ok(RawTransaction {
        id: row.try_get("id")?,
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
        created_at: row.try_get("created_at")?,
        completed_at: row.try_get("completed_at")?,
        held_amount: row.try_get("held_amount")?,
        expires_at: row.try_get("expires_at")?,
        parent_id: row.try_get("parent_id")?,
        batch_id: row.try_get("batch_id")?,
        leg: row.try_get::<Option<i32>, _>("leg")?.map(i64::from),
    })
}

/// The unique index a failed write violated, as PostgreSQL names it.
fn violated_unique_index(error: &sqlx::Error) -> Option<&str> {
    match error {
        sqlx::Error::Database(database) if database.kind() == ErrorKind::UniqueViolation => database.constraint(),
        _ => None,
    }
}

fn write_error(error: sqlx::Error, doing: &'static str) -> UserWriteError {
    let index = violated_unique_index(&error).map(str::to_owned);
    user_write_error(error, index.as_deref(), doing)
}

fn raw_user(row: UserRow) -> RawUser {
    let (id, username, email, password_hash, role, created_at, updated_at, deleted_at, token_version) = row;
    RawUser {
        id,
        username,
        email,
        password_hash,
        role,
        created_at,
        updated_at,
        deleted_at,
        token_version,
    }
}

/// Audit entries as one array per column, for UNNEST.
struct AuditColumns<'a> {
    ids: Vec<Uuid>,
    entity_types: Vec<&'a str>,
    entity_ids: Vec<&'a str>,
    actions: Vec<&'a str>,
    actor_user_ids: Vec<Option<i64>>,
    details: Vec<&'a serde_json::Value>,
    request_ids: Vec<Option<&'a str>>,
    created_ats: Vec<DateTime<Utc>>,
}

impl<'a> AuditColumns<'a> {
    fn of(entries: &'a [AuditEntry]) -> Self {
        AuditColumns {
            ids: entries.iter().map(|entry| entry.id).collect(),
            entity_types: entries.iter().map(|entry| entry.entity_type.as_str()).collect(),
            entity_ids: entries.iter().map(|entry| entry.entity_id.as_str()).collect(),
            actions: entries.iter().map(|entry| entry.action.as_str()).collect(),
            actor_user_ids: entries.iter().map(|entry| entry.actor_user_id).collect(),
            details: entries.iter().map(|entry| &entry.details).collect(),
            request_ids: entries.iter().map(|entry| entry.request_id.as_deref()).collect(),
            created_ats: entries.iter().map(|entry| entry.created_at).collect(),
        }
    }
}

/// The parameters of a statement built at run time, in PostgreSQL's types.
pub(super) fn arguments(params: Vec<Param>) -> anyhow::Result<PgArguments> {
    use sqlx::Arguments;
    let mut arguments = PgArguments::default();
    for param in params {
        match param {
            Param::Integer(value) => arguments.add(value),
            Param::Text(value) => arguments.add(value),
            Param::Time(value) => arguments.add(value),
            Param::Id(value) => arguments.add(value),
        }
        .map_err(|error| anyhow::anyhow!("binding a parameter: {error}"))?;
    }
    Ok(arguments)
}

/// The URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `$n` placeholders of `sql`, sorted and deduplicated.
    fn placeholders(sql: &str) -> Vec<usize> {
        let mut found: Vec<usize> = sql
            .split('$')
            .skip(1)
            .filter_map(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            })
            .collect();
        found.sort_unstable();
        found.dedup();
        found
    }

    #[test]
    fn every_batch_statement_numbers_its_parameters_in_the_order_they_are_bound() {
        for rewrite in [Rewrite::No, Rewrite::Yes] {
            for audit in [false, true] {
                for settling in [false, true] {
                    let parts = Parts { audit, settling };
                    let sql = batch_statement(parts, rewrite);
                    let bound = 33 + if audit { 8 } else { 0 } + if settling { 22 } else { 0 };
                    assert_eq!(
                        placeholders(sql),
                        (1..=bound).collect::<Vec<_>>(),
                        "{parts:?} {rewrite:?}"
                    );
                    assert_eq!(sql.contains("INSERT INTO audit_logs"), audit, "{parts:?}");
                    assert_eq!(sql.contains("settled_holds"), settling, "{parts:?}");
                    assert_eq!(sql.contains("ON CONFLICT (id) DO NOTHING"), rewrite == Rewrite::Yes);
                    if settling {
                        let settled = &sql[sql.find("settled_holds").unwrap()..];
                        let first = if audit { 42 } else { 34 };
                        assert!(settled.contains(&format!("UNNEST(${first}::uuid[]")), "{sql}");
                    }
                }
            }
        }
    }
}
