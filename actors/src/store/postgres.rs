//! The PostgreSQL store: one statement per batch, set-based over UNNESTed arrays.
//!
//! A batch is a single statement whose data-modifying CTEs insert the transactions,
//! update one balance row per account and insert the audit rows; as one statement it is
//! one implicit transaction and one round trip, so a group commit costs one fsync.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgPool, PgPoolOptions};
use uuid::Uuid;

use super::{Batch, RawTransaction, TRANSACTION_COLUMNS, Violation, verify_queries, version_i64};
use crate::money::AccountId;
use crate::record::AuditEntry;

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

#[derive(Clone, Debug)]
pub(super) struct PgStore {
    pub(super) pool: PgPool,
}

const WRITE_BATCH: &str = "
WITH new_transactions AS (
    INSERT INTO transactions (id, type, status, from_user_id, to_user_id, amount,
                              from_version, from_balance_after, to_version, to_balance_after,
                              refund_version, refund_balance_after, failure_reason,
                              initiator_id, idempotency_key, created_at, completed_at)
    SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[],
                         $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[],
                         $13::text[], $14::int8[], $15::text[], $16::timestamptz[], $17::timestamptz[])
    ON CONFLICT (id) DO NOTHING
    RETURNING 1
), updated_balances AS (
    UPDATE balances AS b
       SET amount = u.amount, held = u.held, status = u.status, version = u.version,
           last_updated_at = u.updated_at
      FROM UNNEST($18::int8[], $19::int8[], $20::int8[], $21::text[], $22::int8[], $23::timestamptz[])
           AS u(user_id, amount, held, status, version, updated_at)
     WHERE b.user_id = u.user_id AND b.version < u.version
    RETURNING 1
), new_audit AS (
    INSERT INTO audit_logs (id, entity_type, entity_id, action, actor_user_id, details, request_id, created_at)
    SELECT * FROM UNNEST($24::uuid[], $25::text[], $26::text[], $27::text[], $28::int8[], $29::jsonb[],
                         $30::text[], $31::timestamptz[])
    ON CONFLICT (id) DO NOTHING
    RETURNING 1
)
SELECT (SELECT COUNT(*) FROM new_transactions) + (SELECT COUNT(*) FROM updated_balances)
     + (SELECT COUNT(*) FROM new_audit)";

impl PgStore {
    pub(super) async fn connect(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect(url)
            .await
            .with_context(|| format!("connecting to PostgreSQL at {}", redact(url)))?;
        Ok(PgStore { pool })
    }

    pub(super) fn connect_lazy(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect_lazy(url)
            .with_context(|| format!("parsing the PostgreSQL URL {}", redact(url)))?;
        Ok(PgStore { pool })
    }

    pub(super) async fn migrate(&self) -> anyhow::Result<()> {
        sqlx::migrate!("../migrations/postgres")
            .run(&self.pool)
            .await?;
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

    pub(super) async fn load_account(
        &self,
        id: AccountId,
    ) -> anyhow::Result<Option<(i64, i64, String, i64)>> {
        Ok(
            sqlx::query_as("SELECT amount, held, status, version FROM balances WHERE user_id = $1")
                .bind(id.get())
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub(super) async fn write_batch(&self, batch: &Batch) -> anyhow::Result<()> {
        let transactions = &batch.transactions;
        let column =
            |f: &dyn Fn(&crate::record::TransactionRecord) -> Option<i64>| -> Vec<Option<i64>> {
                transactions.iter().map(f).collect()
            };
        let audit = &batch.audit;
        sqlx::query(WRITE_BATCH)
            .bind(transactions.iter().map(|t| t.id).collect::<Vec<Uuid>>())
            .bind(
                transactions
                    .iter()
                    .map(|t| t.kind.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                transactions
                    .iter()
                    .map(|t| t.status.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                transactions
                    .iter()
                    .map(|t| t.from.get())
                    .collect::<Vec<_>>(),
            )
            .bind(transactions.iter().map(|t| t.to.get()).collect::<Vec<_>>())
            .bind(
                transactions
                    .iter()
                    .map(|t| t.amount.minor())
                    .collect::<Vec<_>>(),
            )
            .bind(column(&|t| {
                t.debit
                    .map(|p| p.version)
                    .or(t.refused_version)
                    .map(version_i64)
            }))
            .bind(column(&|t| t.debit.map(|p| p.balance_after)))
            .bind(column(&|t| t.credit.map(|p| version_i64(p.version))))
            .bind(column(&|t| t.credit.map(|p| p.balance_after)))
            .bind(column(&|t| t.refund.map(|p| version_i64(p.version))))
            .bind(column(&|t| t.refund.map(|p| p.balance_after)))
            .bind(
                transactions
                    .iter()
                    .map(|t| t.failure_reason.map(|r| r.code()))
                    .collect::<Vec<_>>(),
            )
            .bind(column(&|t| t.initiator))
            .bind(
                transactions
                    .iter()
                    .map(|t| t.idempotency_key.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(
                transactions
                    .iter()
                    .map(|t| t.created_at)
                    .collect::<Vec<_>>(),
            )
            .bind(
                transactions
                    .iter()
                    .map(|t| t.completed_at)
                    .collect::<Vec<_>>(),
            )
            .bind(
                batch
                    .balances
                    .iter()
                    .map(|b| b.account.get())
                    .collect::<Vec<_>>(),
            )
            .bind(batch.balances.iter().map(|b| b.balance).collect::<Vec<_>>())
            .bind(batch.balances.iter().map(|b| b.held).collect::<Vec<_>>())
            .bind(
                batch
                    .balances
                    .iter()
                    .map(|b| b.status.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                batch
                    .balances
                    .iter()
                    .map(|b| version_i64(b.version))
                    .collect::<Vec<_>>(),
            )
            .bind(batch.balances.iter().map(|b| b.at).collect::<Vec<_>>())
            .bind(audit.iter().map(|a| a.id).collect::<Vec<_>>())
            .bind(
                audit
                    .iter()
                    .map(|a| a.entity_type.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                audit
                    .iter()
                    .map(|a| a.entity_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(audit.iter().map(|a| a.action.as_str()).collect::<Vec<_>>())
            .bind(audit.iter().map(|a| a.actor_user_id).collect::<Vec<_>>())
            .bind(audit.iter().map(|a| a.details.clone()).collect::<Vec<_>>())
            .bind(
                audit
                    .iter()
                    .map(|a| a.request_id.as_deref())
                    .collect::<Vec<_>>(),
            )
            .bind(audit.iter().map(|a| a.created_at).collect::<Vec<_>>())
            .execute(&self.pool)
            .await
            .context("writing a batch to PostgreSQL")?;
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

    pub(super) async fn transaction_count(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM transactions")
            .fetch_one(&self.pool)
            .await?)
    }

    pub(super) async fn audit_entries(
        &self,
        entity_type: &str,
        entity_id: &str,
    ) -> anyhow::Result<Vec<AuditEntry>> {
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
            let rows: Vec<(i64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .fetch_all(&self.pool)
                .await?;
            violations.extend(rows.into_iter().map(|(a, b, c)| make(a, b, c)));
        }
        Ok(violations)
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
    })
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
