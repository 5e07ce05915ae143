//! Idempotency keys: a retried request returns the first outcome and never applies twice.
//!
//! A key is scoped to the user who sent it. While a keyed request is in flight, its key
//! sits in an in-memory table; a concurrent retry waits for that outcome instead of
//! running again. Once the outcome is durable the entry goes, and the store (where the
//! key is persisted with the transaction) answers later retries — also after a restart.
//! The entry is removed only after durability, so there is no moment at which neither
//! the table nor the store knows a key that has been applied.

use std::sync::Arc;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::watch;

use crate::error::EngineError;
use crate::record::TransactionRecord;
use crate::store::Store;

/// How many times a waiter starts over when the request it waited for ended without a
/// durable outcome (refused before anything moved, or the engine stopped).
const CLAIM_ATTEMPTS_MAX: usize = 4;

/// The longest idempotency key accepted; keys are stored and indexed.
pub const IDEMPOTENCY_KEY_LENGTH_MAX: usize = 255;

/// What a keyed request asks for, hashed; a key reused with a different request is
/// refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint(pub u64);

impl Fingerprint {
    pub fn of(value: &impl std::hash::Hash) -> Fingerprint {
        use std::hash::Hasher;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        value.hash(&mut hasher);
        Fingerprint(hasher.finish())
    }
}

type Key = (i64, String);

#[derive(Debug)]
struct InFlight {
    fingerprint: Fingerprint,
    outcome: watch::Sender<Option<TransactionRecord>>,
}

#[derive(Debug, Default)]
pub(crate) struct Idempotency {
    in_flight: DashMap<Key, Arc<InFlight>>,
}

/// The first request with a key: it runs, then publishes its outcome through
/// [`Owner::finish`]. Dropped without finishing, it releases the key so a waiting retry
/// runs instead.
#[derive(Debug)]
pub(crate) struct Owner<'a> {
    table: &'a Idempotency,
    key: Key,
    entry: Arc<InFlight>,
}

impl Owner<'_> {
    /// Publish the durable outcome to waiting retries and release the key.
    pub fn finish(self, record: &TransactionRecord) {
        self.entry.outcome.send_replace(Some(record.clone()));
    }
}

impl Drop for Owner<'_> {
    fn drop(&mut self) {
        let entry = &self.entry;
        self.table
            .in_flight
            .remove_if(&self.key, |_, current| Arc::ptr_eq(current, entry));
    }
}

pub(crate) enum Claim<'a> {
    /// Run the request.
    Owner(Owner<'a>),
    /// The key was used before for this request: here is its outcome.
    Replay(Box<TransactionRecord>),
}

impl Idempotency {
    /// Claim `key` for a request with `fingerprint`. `matches_stored` tells whether a
    /// transaction stored under the key (before a restart) was made by the same request.
    pub async fn claim(
        &self,
        store: &Store,
        initiator: i64,
        key: &str,
        fingerprint: Fingerprint,
        matches_stored: impl Fn(&TransactionRecord) -> bool,
    ) -> Result<Claim<'_>, EngineError> {
        let table_key: Key = (initiator, key.to_owned());
        for _ in 0..CLAIM_ATTEMPTS_MAX {
            let mut waiter = match self.in_flight.entry(table_key.clone()) {
                Entry::Occupied(occupied) => {
                    if occupied.get().fingerprint != fingerprint {
                        return Err(EngineError::IdempotencyConflict);
                    }
                    occupied.get().outcome.subscribe()
                }
                Entry::Vacant(vacant) => {
                    let entry = Arc::new(InFlight {
                        fingerprint,
                        outcome: watch::channel(None).0,
                    });
                    vacant.insert(entry.clone());
                    let owner = Owner {
                        table: self,
                        key: table_key.clone(),
                        entry,
                    };
                    // Not in flight: it may have run before (before a restart, or long
                    // enough ago to have left the table).
                    let earlier = store.find_by_idempotency_key(initiator, key).await.map_err(|error| {
                        tracing::warn!(error = format!("{error:#}"), "cannot look up an idempotency key");
                        EngineError::Unavailable("the store is unreachable; the idempotency key cannot be checked")
                    })?;
                    return match earlier {
                        None => Ok(Claim::Owner(owner)),
                        Some(record) if matches_stored(&record) => {
                            owner.finish(&record);
                            Ok(Claim::Replay(Box::new(record)))
                        }
                        Some(_) => Err(EngineError::IdempotencyConflict),
                    };
                }
            };
            let outcome = waiter
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|seen| seen.clone());
            if let Some(record) = outcome {
                return Ok(Claim::Replay(Box::new(record)));
            }
        }
        Err(EngineError::Unavailable(
            "a request with the same idempotency key keeps failing",
        ))
    }
}
