//! What the engine's parts share: configuration, store, clock, metrics, the registry of
//! actors, the durable versions, the persister and the idempotency table. Held in one
//! `Arc` by the engine handle, every coordinator task and every account actor.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix::dev::ToEnvelope;
use actix::prelude::*;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use tokio::sync::{Notify, OwnedMutexGuard};
use uuid::Uuid;

use crate::actor::AccountActor;
use crate::clock::Clock;
use crate::config::EngineConfig;
use crate::idempotency::Idempotency;
use crate::metrics::EngineMetrics;
use crate::money::AccountId;
use crate::persister::{DurableVersions, Persister};
use crate::registry::{Registry, SendError};
use crate::store::Store;

#[derive(Debug)]
pub(crate) struct Shared {
    pub config: EngineConfig,
    /// The read pool: activations, idempotency lookups.
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub metrics: EngineMetrics,
    pub registry: Registry,
    pub durable: Arc<DurableVersions>,
    pub persister: Persister,
    pub durable_listener: crate::persister::ListenerSlot,
    pub idempotency: Idempotency,
    /// Operations on one transaction (settling a hold, reversing a transaction) run one
    /// at a time, each until durable.
    pub locks: KeyedLocks,
    /// Open holds placed since the engine started, by id, with their source account
    /// (older ones are found in the store).
    pub open_holds: DashMap<Uuid, AccountId>,
    /// Open holds with an expiry, soonest first: (expiry, hold, source account).
    pub expiries: Mutex<BTreeSet<(DateTime<Utc>, Uuid, AccountId)>>,
    /// Set when shutting down: no new operation starts.
    pub closing: AtomicBool,
    /// Operations started and not finished; shutdown waits for zero.
    pub in_flight: AtomicUsize,
    pub drained: Notify,
}

impl Shared {
    pub async fn ask<M>(self: &Arc<Self>, id: AccountId, message: M, must_deliver: bool) -> Result<M::Result, SendError>
    where
        M: Message + Clone + Send + 'static,
        M::Result: Send,
        AccountActor: Handler<M>,
        <AccountActor as Actor>::Context: ToEnvelope<AccountActor, M>,
    {
        self.registry.ask(self, id, message, must_deliver).await
    }

    /// An actor that has handled no message since this time (milliseconds since the
    /// epoch) has been idle for the passivation time.
    pub fn idle_cutoff_ms(&self) -> i64 {
        let idle = i64::try_from(self.config.passivation_idle.as_millis()).unwrap_or(i64::MAX);
        self.clock.now().timestamp_millis().saturating_sub(idle)
    }

    /// Count an operation in; `None` once shutting down.
    pub fn enter(self: &Arc<Self>) -> Option<InFlightGuard> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        if self.closing.load(Ordering::Acquire) {
            self.leave();
            return None;
        }
        Some(InFlightGuard { shared: self.clone() })
    }

    fn leave(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.drained.notify_waiters();
        }
    }
}

/// One operation in flight; dropping it counts it out.
#[derive(Debug)]
pub(crate) struct InFlightGuard {
    shared: Arc<Shared>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.shared.leave();
    }
}

/// One async lock per key, created on demand and dropped when nobody holds or waits
/// for it.
#[derive(Debug, Default)]
pub(crate) struct KeyedLocks {
    locks: DashMap<Uuid, Arc<tokio::sync::Mutex<()>>>,
}

impl Shared {
    /// Wait for and take the lock of `key`.
    pub async fn lock_key(self: &Arc<Self>, key: Uuid) -> KeyGuard {
        // Cloned under the map's shard lock, so a lock being released cannot be removed
        // while someone is about to wait on it.
        let lock = self.locks.locks.entry(key).or_default().clone();
        let guard = lock.lock_owned().await;
        KeyGuard {
            shared: self.clone(),
            key,
            guard: Some(guard),
        }
    }
}

/// A held key lock; released on drop.
#[derive(Debug)]
pub(crate) struct KeyGuard {
    shared: Arc<Shared>,
    key: Uuid,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.shared
            .locks
            .locks
            .remove_if(&self.key, |_, lock| Arc::strong_count(lock) == 1);
    }
}

/// Run `tick` every `interval` (the first at once) until it breaks, the engine is
/// dropped or it starts shutting down. The task holds the engine only while it ticks.
pub(crate) fn every(
    shared: &Arc<Shared>,
    interval: std::time::Duration,
    mut tick: impl FnMut(&Arc<Shared>) -> std::ops::ControlFlow<()> + Send + 'static,
) {
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(shared) = weak.upgrade() else {
                return;
            };
            if shared.closing.load(Ordering::Acquire) || tick(&shared).is_break() {
                return;
            }
        }
    });
}
