//! Reading an account's past back: its history (the transactions it took part in) and
//! its journal (its balance changes), both newest first and both paged by keyset.
//!
//! The transactions rows are the journal (see [`crate::record`]), indexed per side:
//! `transactions_from_journal (from_user_id, from_version)`,
//! `transactions_to_journal (to_user_id, to_version)` and
//! `transactions_refund_journal (from_user_id, refund_version)`. Every query here is a
//! UNION ALL of one branch per index, each walking its index backwards and stopping at
//! the page size, then merged; an unfiltered page costs O(page size) however long the
//! account's past is. The SQL is built once here for both stores, which differ only in
//! how parameters are written and bound.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{TRANSACTION_COLUMNS, page_size};
use crate::money::AccountId;
use crate::record::{TransactionKind, TransactionRecord, TransactionStatus};

/// Which of an account's transactions to list, newest first.
///
/// Only the account and the cursor narrow the index scans; the other filters are
/// checked on the rows the scans meet, so a page with a rare filter may read many rows
/// (filters the engine's invariants rule out for a side skip that side entirely).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryQuery {
    pub account: AccountId,
    pub kind: Option<TransactionKind>,
    pub status: Option<TransactionStatus>,
    /// Created at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Created strictly before this time.
    pub until: Option<DateTime<Utc>>,
    /// The other party of the transaction.
    pub counterparty: Option<AccountId>,
    /// Only rows strictly older than this one: the cursor of the previous page's last row.
    pub before: Option<HistoryCursor>,
    /// At most this many rows (clamped to [`PAGE_SIZE_MAX`](super::PAGE_SIZE_MAX)).
    pub limit: i64,
}

impl HistoryQuery {
    /// The first `limit` rows of the account's history, unfiltered.
    pub fn new(account: AccountId, limit: i64) -> Self {
        HistoryQuery {
            account,
            kind: None,
            status: None,
            since: None,
            until: None,
            counterparty: None,
            before: None,
            limit,
        }
    }
}

/// A place in an account's history: the order is (position, id), both descending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryCursor {
    pub position: u64,
    pub id: Uuid,
}

/// One transaction in an account's history.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HistoryItem {
    /// The account's version at this transaction: the debit's (or, for a refused debit,
    /// the version it was refused at) when the account is the source, the credit's when
    /// it is the target. A refused debit shares its position with the entry before it;
    /// the id breaks the tie, and UUIDv7 ids keep such rows in the order they happened.
    pub position: u64,
    pub transaction: TransactionRecord,
}

impl HistoryItem {
    /// The cursor that continues the history after this row.
    pub fn cursor(&self) -> HistoryCursor {
        HistoryCursor {
            position: self.position,
            id: self.transaction.id,
        }
    }
}

/// One change of an account's balance.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JournalEntry {
    pub transaction_id: Uuid,
    pub kind: TransactionKind,
    /// The account's version right after this change; versions of one account's
    /// entries are distinct.
    pub version: u64,
    /// Negative for a debit, positive for a credit or a refund.
    pub delta: i64,
    pub balance_after: i64,
    /// The other party of the transaction.
    pub counterparty: AccountId,
    /// When the transaction was created. A refund carries its transaction's time, so a
    /// rolled-back transfer's debit and refund are never seen apart by time.
    pub created_at: DateTime<Utc>,
}

/// How a store writes parameters: `$1` (PostgreSQL) or `?1` (SQLite).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dialect {
    Postgres,
    Sqlite,
}

/// A parameter of a statement built here; each store binds it in its own column types
/// (SQLite keeps ids as text and times as microseconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Param {
    Integer(i64),
    Text(&'static str),
    Time(DateTime<Utc>),
    Id(Uuid),
}

/// SQL text with its parameters, in placeholder order.
#[derive(Debug)]
pub(super) struct Statement {
    pub(super) sql: String,
    pub(super) params: Vec<Param>,
}

#[derive(Debug)]
struct Parameters {
    dialect: Dialect,
    params: Vec<Param>,
}

impl Parameters {
    fn new(dialect: Dialect) -> Self {
        Parameters {
            dialect,
            params: Vec::new(),
        }
    }

    /// Add a parameter and return its placeholder, to be written wherever it is used.
    fn add(&mut self, param: Param) -> String {
        self.params.push(param);
        let number = self.params.len();
        match self.dialect {
            Dialect::Postgres => format!("${number}"),
            Dialect::Sqlite => format!("?{number}"),
        }
    }
}

/// A version as the stores keep it; versions beyond `i64::MAX` cannot exist, so a
/// bound past them is the same as no bound.
fn version_bound(version: u64) -> i64 {
    i64::try_from(version).unwrap_or(i64::MAX)
}

/// Which side of a transactions row an account is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Source,
    Target,
}

impl Side {
    fn account_column(self) -> &'static str {
        match self {
            Side::Source => "from_user_id",
            Side::Target => "to_user_id",
        }
    }

    fn counterparty_column(self) -> &'static str {
        match self {
            Side::Source => "to_user_id",
            Side::Target => "from_user_id",
        }
    }

    /// The column holding the account's position: for the source its debit version,
    /// or the version a refused debit was refused at or a hold was placed at; for the
    /// target its credit version, set only when the credit happened.
    fn position_column(self) -> &'static str {
        match self {
            Side::Source => "from_version",
            Side::Target => "to_version",
        }
    }

    fn alias(self) -> &'static str {
        match self {
            Side::Source => "as_source",
            Side::Target => "as_target",
        }
    }

    /// Whether the account can appear on this side of a transaction of `kind`: the
    /// external account is only ever the source of credits and the target of debits,
    /// a user account never the other way round (the engine refuses such requests).
    fn allows(self, account: AccountId, kind: TransactionKind) -> bool {
        if kind == TransactionKind::Reversal {
            // A reversal runs its original backwards: of a credit, it has the external
            // account as target; of a debit, as source.
            return true;
        }
        let external_kind = match self {
            Side::Source => TransactionKind::Credit,
            Side::Target => TransactionKind::Debit,
        };
        (kind == external_kind) == account.is_external()
    }
}

/// The statement for one page of history; `None` when the filters rule out every row.
pub(super) fn history_statement(query: &HistoryQuery, dialect: Dialect) -> Option<Statement> {
    let limit = page_size(query.limit);
    if limit == 0 || query.counterparty == Some(query.account) {
        return None;
    }
    let sides: Vec<Side> = [Side::Source, Side::Target]
        .into_iter()
        .filter(|side| query.kind.is_none_or(|kind| side.allows(query.account, kind)))
        // Only a completed transaction or a posted hold credited its target: a failed,
        // rolled-back, pending or voided one moved nothing there, so it is in the
        // source's history alone.
        .filter(|side| {
            *side == Side::Source
                || query
                    .status
                    .is_none_or(|status| matches!(status, TransactionStatus::Completed | TransactionStatus::Posted))
        })
        .collect();
    if sides.is_empty() {
        return None;
    }

    let mut params = Parameters::new(dialect);
    let account = params.add(Param::Integer(query.account.get()));
    let limit = params.add(Param::Integer(limit));
    let cursor = query.before.map(|cursor| {
        (
            params.add(Param::Integer(version_bound(cursor.position))),
            params.add(Param::Id(cursor.id)),
        )
    });
    let kind = query.kind.map(|kind| params.add(Param::Text(kind.as_str())));
    let status = query.status.map(|status| params.add(Param::Text(status.as_str())));
    let since = query.since.map(|since| params.add(Param::Time(since)));
    let until = query.until.map(|until| params.add(Param::Time(until)));
    let counterparty = query
        .counterparty
        .map(|counterparty| params.add(Param::Integer(counterparty.get())));

    let branches: Vec<String> = sides
        .iter()
        .map(|&side| {
            let position = side.position_column();
            let mut conditions = vec![
                format!("{} = {account}", side.account_column()),
                format!("{position} IS NOT NULL"),
            ];
            if let Some((cursor_position, cursor_id)) = &cursor {
                // The first condition bounds the index range; the second finishes the
                // strict (position, id) comparison.
                conditions.push(format!("{position} <= {cursor_position}"));
                conditions.push(format!("({position} < {cursor_position} OR id < {cursor_id})"));
            }
            if let Some(kind) = &kind {
                conditions.push(format!("type = {kind}"));
            }
            if let Some(status) = &status {
                conditions.push(format!("status = {status}"));
            }
            if let Some(since) = &since {
                conditions.push(format!("created_at >= {since}"));
            }
            if let Some(until) = &until {
                conditions.push(format!("created_at < {until}"));
            }
            if let Some(counterparty) = &counterparty {
                conditions.push(format!("{} = {counterparty}", side.counterparty_column()));
            }
            format!(
                "SELECT * FROM (SELECT {TRANSACTION_COLUMNS}, {position} AS position FROM transactions \
                 WHERE {} ORDER BY {position} DESC, id DESC LIMIT {limit}) AS {}",
                conditions.join(" AND "),
                side.alias()
            )
        })
        .collect();
    Some(Statement {
        sql: format!(
            "SELECT * FROM ({}) AS history ORDER BY position DESC, id DESC LIMIT {limit}",
            branches.join(" UNION ALL ")
        ),
        params: params.params,
    })
}

/// Where a journal read stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum JournalBound {
    /// Entries with a version below this one (all of them for `None`).
    Before(Option<u64>),
    /// Entries whose transaction was created at or before this time.
    At(DateTime<Utc>),
}

/// One kind of journal entry, read through its own index.
#[derive(Clone, Copy, Debug)]
struct JournalBranch {
    name: &'static str,
    account_column: &'static str,
    version: &'static str,
    balance_after: &'static str,
    delta: &'static str,
    counterparty: &'static str,
    /// Which rows of the index are entries. It names no column the index does not
    /// imply, so the planner's row estimates (and so its choice of a backward index
    /// walk) are not skewed by conditions it would wrongly take as independent.
    is_entry: &'static str,
}

const JOURNAL_BRANCHES: [JournalBranch; 3] = [
    JournalBranch {
        name: "debits",
        account_column: "from_user_id",
        version: "from_version",
        balance_after: "from_balance_after",
        delta: "-amount",
        counterparty: "to_user_id",
        // A refused debit has the version it was refused at but no balance after: it
        // moved nothing, so it is no entry.
        is_entry: "from_version IS NOT NULL AND from_balance_after IS NOT NULL",
    },
    JournalBranch {
        name: "credits",
        account_column: "to_user_id",
        version: "to_version",
        balance_after: "to_balance_after",
        delta: "amount",
        counterparty: "from_user_id",
        is_entry: "to_version IS NOT NULL",
    },
    JournalBranch {
        name: "refunds",
        account_column: "from_user_id",
        version: "refund_version",
        balance_after: "refund_balance_after",
        delta: "amount",
        counterparty: "to_user_id",
        // The refund index's own predicate, spelled out so the planner can use it.
        is_entry: "refund_version IS NOT NULL",
    },
];

/// A [`JournalBound`] once its parameter has a placeholder.
#[derive(Debug)]
enum JournalBoundPlaceholder {
    VersionBelow(String),
    CreatedAtMost(String),
}

/// The statement for the account's journal entries within `bound`, newest first, at
/// most `limit` of them (the caller clamps it).
pub(super) fn journal_statement(account: AccountId, bound: JournalBound, limit: i64, dialect: Dialect) -> Statement {
    let mut params = Parameters::new(dialect);
    let account = params.add(Param::Integer(account.get()));
    let limit = params.add(Param::Integer(limit));
    let bound = match bound {
        JournalBound::Before(None) => None,
        JournalBound::Before(Some(version)) => Some(JournalBoundPlaceholder::VersionBelow(
            params.add(Param::Integer(version_bound(version))),
        )),
        JournalBound::At(at) => Some(JournalBoundPlaceholder::CreatedAtMost(params.add(Param::Time(at)))),
    };
    let branches = JOURNAL_BRANCHES.map(|branch| {
        let JournalBranch {
            name,
            account_column,
            version,
            balance_after,
            delta,
            counterparty,
            is_entry,
        } = branch;
        let mut conditions = format!("{account_column} = {account} AND {is_entry}");
        match &bound {
            Some(JournalBoundPlaceholder::VersionBelow(before)) => {
                conditions.push_str(&format!(" AND {version} < {before}"));
            }
            Some(JournalBoundPlaceholder::CreatedAtMost(at)) => {
                conditions.push_str(&format!(" AND created_at <= {at}"));
            }
            None => {}
        }
        format!(
            "SELECT * FROM (SELECT id, type, {version} AS version, {delta} AS delta, \
             {balance_after} AS balance_after, {counterparty} AS counterparty, created_at \
             FROM transactions WHERE {conditions} ORDER BY {version} DESC LIMIT {limit}) AS {name}"
        )
    });
    Statement {
        sql: format!(
            "SELECT * FROM ({}) AS journal ORDER BY version DESC LIMIT {limit}",
            branches.join(" UNION ALL ")
        ),
        params: params.params,
    }
}

/// The O(page) claim, checked where it is made: every branch of the history and
/// journal statements walks its own index, in the order the page needs, on both stores.
#[cfg(all(test, feature = "test-support"))]
mod plan_tests {
    use super::*;
    use crate::store::{Store, postgres, sqlite};
    use crate::testing::{Backend, TestDb};

    /// Enough rows, with account 1 on both sides and with refunds, that reading its
    /// whole journal or the whole table would cost PostgreSQL's planner clearly more
    /// than walking an index for a page.
    const FILL_POSTGRES: &str = "
        INSERT INTO transactions (id, type, status, from_user_id, to_user_id, amount,
                                  from_version, from_balance_after, to_version, to_balance_after,
                                  refund_version, refund_balance_after, created_at, completed_at)
        SELECT gen_random_uuid(), 'transfer', CASE WHEN refunded THEN 'rolled_back' ELSE 'completed' END,
               g % 4, (g + 1) % 4, 1, g, 0,
               CASE WHEN refunded THEN NULL ELSE g END, CASE WHEN refunded THEN NULL ELSE 0 END,
               CASE WHEN refunded THEN g + 1 END, CASE WHEN refunded THEN 0 END,
               now(), now()
          FROM generate_series(1, 40000) AS g, LATERAL (SELECT g % 7 = 0 AS refunded) AS r";

    fn statements(dialect: Dialect) -> Vec<(&'static str, Statement, Vec<&'static str>)> {
        let account = AccountId::new(1).unwrap();
        let both = vec!["transactions_from_journal", "transactions_to_journal"];
        let all = vec![
            "transactions_from_journal",
            "transactions_to_journal",
            "transactions_refund_journal",
        ];
        let filtered = HistoryQuery {
            kind: Some(TransactionKind::Transfer),
            status: Some(TransactionStatus::Completed),
            since: Some(Utc::now() - chrono::TimeDelta::days(1)),
            until: Some(Utc::now()),
            counterparty: Some(AccountId::new(2).unwrap()),
            before: Some(HistoryCursor {
                position: 30_000,
                id: Uuid::max(),
            }),
            ..HistoryQuery::new(account, 100)
        };
        vec![
            (
                "a first page of history",
                history_statement(&HistoryQuery::new(account, 100), dialect).unwrap(),
                both.clone(),
            ),
            (
                "a filtered later page of history",
                history_statement(&filtered, dialect).unwrap(),
                both,
            ),
            (
                "a first page of the journal",
                journal_statement(account, JournalBound::Before(None), 100, dialect),
                all.clone(),
            ),
            (
                "a later page of the journal",
                journal_statement(account, JournalBound::Before(Some(30_000)), 100, dialect),
                all.clone(),
            ),
            (
                "a balance at a time",
                journal_statement(account, JournalBound::At(Utc::now()), 1, dialect),
                all,
            ),
        ]
    }

    #[tokio::test]
    async fn every_branch_walks_its_index_backwards_on_postgres() {
        let db = TestDb::create(Backend::Postgres).await;
        let store = Store::connect(&db.url, 1).await.unwrap();
        let pool = store.postgres_pool().unwrap();
        sqlx::query(FILL_POSTGRES).execute(pool).await.unwrap();
        sqlx::query("ANALYZE transactions").execute(pool).await.unwrap();

        for (what, statement, indexes) in statements(Dialect::Postgres) {
            let sql = format!("EXPLAIN {}", statement.sql);
            let plan: Vec<(String,)> =
                sqlx::query_as_with(sqlx::AssertSqlSafe(sql), postgres::arguments(statement.params).unwrap())
                    .fetch_all(pool)
                    .await
                    .unwrap();
            let plan: Vec<String> = plan.into_iter().map(|(line,)| line).collect();
            let plan = plan.join("\n");
            for index in indexes {
                // With selective filters the planner may rightly fetch the few matching
                // rows through the index and sort them; unfiltered, only a backward walk
                // keeps a page O(page).
                let walk = if what.contains("filtered") {
                    index.to_string()
                } else {
                    format!("Index Scan Backward using {index} ")
                };
                assert!(plan.contains(&walk), "{what}: no {walk} in\n{plan}");
            }
            assert!(!plan.contains("Seq Scan"), "{what}:\n{plan}");
        }
    }

    #[tokio::test]
    async fn every_branch_searches_its_index_in_order_on_sqlite() {
        let db = TestDb::create(Backend::Sqlite).await;
        let store = Store::connect(&db.url, 1).await.unwrap();
        let pool = store.sqlite_pool().unwrap();

        for (what, statement, indexes) in statements(Dialect::Sqlite) {
            let sql = format!("EXPLAIN QUERY PLAN {}", statement.sql);
            let plan: Vec<(i64, i64, i64, String)> =
                sqlx::query_as_with(sqlx::AssertSqlSafe(sql), sqlite::arguments(statement.params).unwrap())
                    .fetch_all(pool)
                    .await
                    .unwrap();
            let text: Vec<&str> = plan.iter().map(|row| row.3.as_str()).collect();
            let text = text.join("\n");
            for index in indexes {
                assert!(
                    text.contains(&format!("SEARCH transactions USING INDEX {index} ")),
                    "{what}: no search of {index} in\n{text}"
                );
            }
            assert!(!text.contains("SCAN transactions"), "{what}:\n{text}");
            // Inside a branch the index gives the order: no sort of the branch's rows
            // (the merge of the branches may sort, at most a page per branch).
            let branches: Vec<i64> = plan
                .iter()
                .filter(|row| row.3.starts_with("CO-ROUTINE"))
                .map(|row| row.0)
                .collect();
            assert!(!branches.is_empty(), "{what}:\n{text}");
            for (_, parent, _, detail) in &plan {
                assert!(
                    !(branches.contains(parent) && detail.contains("TEMP B-TREE")),
                    "{what}: a branch sorts its rows:\n{text}"
                );
            }
        }
    }
}
