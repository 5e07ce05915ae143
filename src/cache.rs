//! The read cache: transaction histories, journals, balances at a time and transactions
//! by id. Current balances come from the account actors and are never cached.
//!
//! Every key of an account's reads carries the account's *generation*, which the
//! engine's durable listener bumps after each commit that touched the account and
//! before that commit is acknowledged. A client therefore never reads a history older
//! than its own acknowledged write: by the time it hears back, its reads use a new key.
//! Generations live in this process, and keys also carry an epoch drawn at start, so a
//! restart (or another instance) never reads entries written under a stale generation.
//!
//! With Redis, entries live there (TTL `TALLY_CACHE_TTL_SECONDS`); without it, in a
//! bounded in-process cache; while Redis is down, the cache is bypassed.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use redis::AsyncCommands;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tally_actors::AccountId;

use crate::redis_link::RedisLink;

/// The kinds of cached reads (a metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    History,
    Transaction,
    BalanceHistory,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::History => "history",
            Kind::Transaction => "transaction",
            Kind::BalanceHistory => "balance_history",
        }
    }
}

enum Backend {
    Redis(RedisLink),
    Local(moka::sync::Cache<String, Arc<str>>),
}

pub struct ReadCache {
    /// Key prefix: the deployment's Redis namespace.
    namespace: String,
    backend: Backend,
    ttl: Duration,
    /// Drawn at start: keys of earlier processes never match.
    epoch: String,
    generations: DashMap<AccountId, u64>,
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("ttl", &self.ttl)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// Cache latencies: tens of microseconds (in process) to the Redis call limit.
const CACHE_BUCKETS_SECONDS: &[f64] = &[
    0.000_01, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.1,
];

impl ReadCache {
    /// A cache in Redis when `redis` is given, else in process with at most
    /// `local_entries_max` entries.
    pub fn new(
        redis: Option<RedisLink>,
        ttl: Duration,
        local_entries_max: u64,
        registry: &Registry,
    ) -> anyhow::Result<ReadCache> {
        let requests = IntCounterVec::new(
            Opts::new(
                "tally_cache_requests_total",
                "Cache lookups by cache and result (hit, miss, error, bypass)",
            ),
            &["cache", "result"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new("tally_cache_operation_duration_seconds", "Cache operation latency")
                .buckets(CACHE_BUCKETS_SECONDS.to_vec()),
            &["operation"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        for kind in [Kind::History, Kind::Transaction, Kind::BalanceHistory] {
            for result in ["hit", "miss", "error", "bypass"] {
                requests.with_label_values(&[kind.as_str(), result]);
            }
        }
        let backend = match redis {
            Some(link) => Backend::Redis(link),
            None => Backend::Local(
                moka::sync::Cache::builder()
                    .max_capacity(local_entries_max)
                    .time_to_live(ttl)
                    .build(),
            ),
        };
        let namespace = match &backend {
            Backend::Redis(link) => link.key("cache"),
            Backend::Local(_) => "cache".to_string(),
        };
        Ok(ReadCache {
            namespace,
            backend,
            ttl,
            epoch: format!("{:016x}", rand::random::<u64>()),
            generations: DashMap::new(),
            requests,
            duration,
        })
    }

    /// Called after a commit touched `accounts`, before it is acknowledged.
    pub fn invalidate(&self, accounts: &[AccountId]) {
        for account in accounts {
            *self.generations.entry(*account).or_insert(0) += 1;
        }
    }

    /// The key of `account`'s read described by `query` (any value whose `Debug` form
    /// names the whole query), at the account's current generation.
    pub fn account_key(&self, kind: Kind, account: AccountId, query: &impl std::fmt::Debug) -> String {
        let generation = self.generations.get(&account).map_or(0, |generation| *generation);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        format!("{query:?}").hash(&mut hasher);
        format!(
            "{}:{}:{}:{}:{generation}:{:016x}",
            self.namespace,
            self.epoch,
            kind.as_str(),
            account,
            hasher.finish()
        )
    }

    /// The key of an immutable value (a transaction by id).
    pub fn key(&self, kind: Kind, id: &str) -> String {
        format!("{}:{}:{}:{id}", self.namespace, self.epoch, kind.as_str())
    }

    pub async fn get<T: DeserializeOwned>(&self, kind: Kind, key: &str) -> Option<T> {
        let started = Instant::now();
        let found: Result<Option<String>, ()> = match &self.backend {
            Backend::Local(cache) => Ok(cache.get(key).map(|text| text.to_string())),
            Backend::Redis(link) => {
                let was_up = link.is_up();
                let key = key.to_string();
                match link
                    .call(|mut connection| async move { connection.get::<_, Option<String>>(key).await })
                    .await
                {
                    Some(found) => Ok(found),
                    None if was_up => Err(()),
                    None => {
                        self.count(kind, "bypass");
                        return None;
                    }
                }
            }
        };
        self.duration
            .with_label_values(&["get"])
            .observe(started.elapsed().as_secs_f64());
        match found {
            Ok(Some(text)) => match serde_json::from_str(&text) {
                Ok(value) => {
                    self.count(kind, "hit");
                    Some(value)
                }
                Err(_) => {
                    self.count(kind, "error");
                    None
                }
            },
            Ok(None) => {
                self.count(kind, "miss");
                None
            }
            Err(()) => {
                self.count(kind, "error");
                None
            }
        }
    }

    /// Store `value` under `key`, in the background: a reply never waits for it.
    pub fn put<T: Serialize>(&self, key: String, value: &T) {
        let Ok(text) = serde_json::to_string(value) else {
            return;
        };
        match &self.backend {
            Backend::Local(cache) => cache.insert(key, Arc::from(text)),
            Backend::Redis(link) => {
                let link = link.clone();
                let seconds = self.ttl.as_secs().max(1);
                let timing = self.duration.with_label_values(&["set"]);
                actix_web::rt::spawn(async move {
                    let started = Instant::now();
                    let _: Option<()> = link
                        .call(|mut connection| async move { connection.set_ex(key, text, seconds).await })
                        .await;
                    timing.observe(started.elapsed().as_secs_f64());
                });
            }
        }
    }

    fn count(&self, kind: Kind, result: &str) {
        self.requests.with_label_values(&[kind.as_str(), result]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn a_commit_moves_the_account_to_new_keys() {
        let cache = ReadCache::new(None, Duration::from_secs(60), 100, &Registry::new()).unwrap();
        let alice = AccountId::new(1).unwrap();
        let bob = AccountId::new(2).unwrap();
        let key = cache.account_key(Kind::History, alice, &"page 1");
        cache.put(key.clone(), &vec![1, 2, 3]);
        assert_eq!(cache.get::<Vec<i32>>(Kind::History, &key).await, Some(vec![1, 2, 3]));
        let bobs = cache.account_key(Kind::History, bob, &"page 1");
        cache.invalidate(&[alice]);
        let fresh = cache.account_key(Kind::History, alice, &"page 1");
        assert_ne!(fresh, key, "a new generation");
        assert_eq!(cache.get::<Vec<i32>>(Kind::History, &fresh).await, None);
        assert_eq!(
            cache.account_key(Kind::History, bob, &"page 1"),
            bobs,
            "other accounts keep their keys"
        );
        assert_ne!(
            cache.account_key(Kind::History, alice, &"page 2"),
            fresh,
            "queries have keys of their own"
        );
    }
}
