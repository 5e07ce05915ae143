//! The persister's connection, held from one batch to the next.
//!
//! Taking a connection from a sqlx pool for every batch costs two extra round trips (the
//! pool pings a connection when it is taken and again when it is given back): most of a
//! small batch's time on PostgreSQL, and two more hops to SQLite's worker thread. The
//! persister writes one batch at a time, so it keeps one connection instead. A lease
//! that is not explicitly kept (the write failed, or was abandoned half-way) closes its
//! connection: it may be broken or in an unknown state, and the next batch connects
//! afresh.

use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};
use tokio::sync::{Mutex, MutexGuard};

pub(super) struct HeldConnection<DB: Database> {
    slot: Arc<Mutex<Option<PoolConnection<DB>>>>,
}

impl<DB: Database> Clone for HeldConnection<DB> {
    fn clone(&self) -> Self {
        HeldConnection {
            slot: self.slot.clone(),
        }
    }
}

impl<DB: Database> Default for HeldConnection<DB> {
    fn default() -> Self {
        HeldConnection {
            slot: Arc::new(Mutex::new(None)),
        }
    }
}

impl<DB: Database> std::fmt::Debug for HeldConnection<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HeldConnection")
    }
}

impl<DB: Database> HeldConnection<DB> {
    /// The held connection, or a new one from `pool` when none is held.
    pub(super) async fn lease(&self, pool: &Pool<DB>) -> Result<Lease<'_, DB>, sqlx::Error> {
        let mut slot = self.slot.lock().await;
        let connection = match slot.take() {
            Some(connection) => connection,
            None => pool.acquire().await?,
        };
        Ok(Lease {
            slot,
            connection: Some(connection),
        })
    }
}

pub(super) struct Lease<'a, DB: Database> {
    slot: MutexGuard<'a, Option<PoolConnection<DB>>>,
    connection: Option<PoolConnection<DB>>,
}

impl<DB: Database> Lease<'_, DB> {
    pub(super) fn connection(&mut self) -> &mut DB::Connection {
        self.connection
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }

    /// The write succeeded: hold the connection for the next one.
    pub(super) fn keep(mut self) {
        *self.slot = self.connection.take();
    }
}

impl<DB: Database> Drop for Lease<'_, DB> {
    fn drop(&mut self) {
        if let Some(connection) = &mut self.connection {
            connection.close_on_drop();
        }
    }
}
