//! What the engine's parts share: configuration, store, clock, metrics, the registry of
//! actors, the durable versions, the persister and the idempotency table. Held in one
//! `Arc` by the engine handle, every coordinator task and every account actor.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use actix::dev::ToEnvelope;
use actix::prelude::*;
use tokio::sync::Notify;

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
