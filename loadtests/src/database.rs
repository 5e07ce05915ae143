//! Bulk reads of the store that [`tally_actors::Store`] has no call for, because only a
//! load tester needs them: every load-test user's id (and token version), and every
//! balance row at once.
//! Plain SQL that both PostgreSQL and SQLite accept, on the store's own pool.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use tally_actors::Store;

/// Users `{prefix}0` … `{prefix}{count - 1}` as `(id, token version)`, in index order.
/// Fails naming the first one missing (run `setup` first).
pub async fn users(store: &Store, prefix: &str, count: usize) -> anyhow::Result<Vec<(i64, i64)>> {
    const SQL: &str = "SELECT id, username, token_version FROM users WHERE deleted_at IS NULL";
    let rows: Vec<(i64, String, i64)> = if let Some(pool) = store.postgres_pool() {
        sqlx::query_as(SQL).fetch_all(pool).await
    } else if let Some(pool) = store.sqlite_pool() {
        sqlx::query_as(SQL).fetch_all(pool).await
    } else {
        bail!("the store has neither a PostgreSQL nor an SQLite pool")
    }
    .context("reading the users")?;
    let mut ids = vec![None; count];
    for (id, username, version) in rows {
        if let Some(index) = username
            .strip_prefix(prefix)
            .and_then(|rest| rest.parse::<usize>().ok())
            && index < count
            && username == format!("{prefix}{index}")
        {
            ids[index] = Some((id, version));
        }
    }
    ids.iter()
        .enumerate()
        .map(|(index, id)| id.with_context(|| format!("user {prefix}{index} does not exist: run `setup` first")))
        .collect()
}

/// Every balance row: account → amount in minor units (the external account 0 included).
pub async fn balances(store: &Store) -> anyhow::Result<BTreeMap<i64, i64>> {
    const SQL: &str = "SELECT user_id, amount FROM balances";
    let rows: Vec<(i64, i64)> = if let Some(pool) = store.postgres_pool() {
        sqlx::query_as(SQL).fetch_all(pool).await
    } else if let Some(pool) = store.sqlite_pool() {
        sqlx::query_as(SQL).fetch_all(pool).await
    } else {
        bail!("the store has neither a PostgreSQL nor an SQLite pool")
    }
    .context("reading the balances")?;
    Ok(rows.into_iter().collect())
}
