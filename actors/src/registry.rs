//! The registry: which account actors are alive, and the only way to reach them.
//!
//! A `DashMap<AccountId, AccountHandle>` maps ids to live actors. Activation happens
//! inside the map's entry lock, so two callers racing to activate one account get the
//! same actor; the actor loads its state after it is registered. Actors leave the map
//! themselves (passivation, failed load), and only the entry they were registered under
//! (`generation`), so a newer actor of the same account is never removed by mistake.
//!
//! Every message is counted against the actor's mailbox capacity before it is sent:
//! a full mailbox is an immediate "overloaded" answer, never an unbounded queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

use actix::dev::ToEnvelope;
use actix::prelude::*;
use dashmap::DashMap;

use crate::actor::{AccountActor, Sweep};
use crate::money::AccountId;
use crate::shared::Shared;

/// How many times a message is re-sent when the actor it went to stopped before
/// handling it (passivation or a failed load racing with the send).
const SEND_ATTEMPTS_MAX: usize = 4;

/// What a live actor and its registry entry both see: the mailbox depth and when the
/// actor last handled a message (for the idle sweep, which reads it without disturbing
/// the actor).
#[derive(Debug)]
pub(crate) struct ActorCell {
    pub id: AccountId,
    /// Told apart from earlier and later actors of the same account.
    pub generation: u64,
    /// Messages sent and not yet handled.
    pub depth: AtomicUsize,
    /// When the actor last handled a message, in milliseconds since the epoch.
    pub last_active_ms: AtomicI64,
    /// The second (since the epoch) `this_second` counts the messages of.
    window_s: AtomicI64,
    /// Messages handled in second `window_s`, and in the second before it.
    this_second: AtomicU64,
    last_second: AtomicU64,
}

impl ActorCell {
    pub fn new(id: AccountId, generation: u64, now_ms: i64) -> Self {
        ActorCell {
            id,
            generation,
            depth: AtomicUsize::new(0),
            last_active_ms: AtomicI64::new(now_ms),
            window_s: AtomicI64::new(now_ms.div_euclid(1000)),
            this_second: AtomicU64::new(0),
            last_second: AtomicU64::new(0),
        }
    }

    /// Count a message handled at `now_ms`. Only the actor calls it (one message at a
    /// time), so plain loads and stores suffice; readers may see a second's count a
    /// message behind.
    pub fn count_message(&self, now_ms: i64) {
        let second = now_ms.div_euclid(1000);
        let window = self.window_s.load(Ordering::Relaxed);
        if second == window {
            let count = self.this_second.load(Ordering::Relaxed);
            self.this_second.store(count + 1, Ordering::Relaxed);
            return;
        }
        let previous = if second == window + 1 {
            self.this_second.load(Ordering::Relaxed)
        } else {
            0
        };
        self.last_second.store(previous, Ordering::Relaxed);
        self.this_second.store(1, Ordering::Relaxed);
        self.window_s.store(second, Ordering::Relaxed);
    }

    /// Messages handled in the last whole second before `now_ms`.
    pub fn messages_per_second(&self, now_ms: i64) -> u64 {
        let second = now_ms.div_euclid(1000);
        match second - self.window_s.load(Ordering::Relaxed) {
            0 => self.last_second.load(Ordering::Relaxed),
            1 => self.this_second.load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Nothing queued and no message handled after `cutoff_ms`.
    pub fn is_idle_since(&self, cutoff_ms: i64) -> bool {
        self.last_active_ms.load(Ordering::Relaxed) <= cutoff_ms && self.depth.load(Ordering::Acquire) == 0
    }
}

/// A live actor and its cell.
#[derive(Clone, Debug)]
pub(crate) struct AccountHandle {
    pub addr: Addr<AccountActor>,
    pub cell: Arc<ActorCell>,
}

/// Why a message did not reach an actor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SendError {
    /// The mailbox is full.
    Overloaded,
    /// The actor kept stopping before handling the message.
    Unavailable,
}

/// A live actor as the admins' view lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BusyActor {
    pub account: AccountId,
    /// Messages waiting in its mailbox.
    pub mailbox_depth: usize,
    /// Messages it handled in the last whole second.
    pub messages_per_second: u64,
}

#[derive(Debug)]
pub(crate) struct Registry {
    actors: DashMap<AccountId, AccountHandle>,
    arbiters: Vec<ArbiterHandle>,
    generation: AtomicU64,
    mailbox_capacity: usize,
}

impl Registry {
    pub fn new(arbiters: Vec<ArbiterHandle>, mailbox_capacity: usize) -> Self {
        assert!(!arbiters.is_empty(), "actors need at least one arbiter");
        Registry {
            actors: DashMap::new(),
            arbiters,
            generation: AtomicU64::new(1),
            mailbox_capacity,
        }
    }

    pub fn active(&self) -> usize {
        self.actors.len()
    }

    /// The live actor of `id`, activated if there is none.
    fn handle(&self, id: AccountId, shared: &Arc<Shared>) -> AccountHandle {
        if let Some(handle) = self.actors.get(&id) {
            return handle.clone();
        }
        self.actors
            .entry(id)
            .or_insert_with(|| {
                let generation = self.generation.fetch_add(1, Ordering::Relaxed);
                let cell = Arc::new(ActorCell::new(id, generation, shared.clock.now().timestamp_millis()));
                let arbiter = &self.arbiters[(id.get() as u64 % self.arbiters.len() as u64) as usize];
                let actor = AccountActor::new(cell.clone(), shared.clone());
                // Our own depth counter bounds the mailbox; actix's capacity only needs
                // room for everything that counter admits plus must-deliver messages.
                let capacity = self.mailbox_capacity.saturating_mul(2).max(16);
                let addr = AccountActor::start_in_arbiter(arbiter, move |ctx| {
                    ctx.set_mailbox_capacity(capacity);
                    actor
                });
                AccountHandle { addr, cell }
            })
            .clone()
    }

    /// Remove the entry of `cell`'s account if it still belongs to that actor.
    pub fn forget(&self, cell: &ActorCell) {
        self.actors
            .remove_if(&cell.id, |_, handle| handle.cell.generation == cell.generation);
    }

    /// Send `message` to `id`'s actor and wait for its reply. With `must_deliver`, the
    /// mailbox capacity is not enforced: refunds and credits of a transfer whose debit
    /// already happened must not be refused (their number is bounded by the persister's
    /// queue, which admitted the transfer).
    pub async fn ask<M>(
        &self,
        shared: &Arc<Shared>,
        id: AccountId,
        message: M,
        must_deliver: bool,
    ) -> Result<M::Result, SendError>
    where
        M: Message + Clone + Send + 'static,
        M::Result: Send,
        AccountActor: Handler<M>,
        <AccountActor as Actor>::Context: ToEnvelope<AccountActor, M>,
    {
        for _ in 0..SEND_ATTEMPTS_MAX {
            let handle = self.handle(id, shared);
            let depth = handle.cell.depth.fetch_add(1, Ordering::AcqRel);
            if !must_deliver && depth >= self.mailbox_capacity {
                handle.cell.depth.fetch_sub(1, Ordering::AcqRel);
                shared.metrics.actor_overloaded.inc();
                return Err(SendError::Overloaded);
            }
            match handle.addr.send(message.clone()).await {
                Ok(reply) => return Ok(reply),
                Err(_) => {
                    // The actor stopped before handling the message, so it was not
                    // applied (handlers reply synchronously); try a fresh actor.
                    self.forget_if_dead(&handle);
                }
            }
        }
        Err(SendError::Unavailable)
    }

    /// Send `message` to every live actor without waiting for replies to arrive first;
    /// returns once all have handled it.
    pub async fn broadcast<M>(&self, message: M)
    where
        M: Message<Result = ()> + Clone + Send + 'static,
        AccountActor: Handler<M>,
        <AccountActor as Actor>::Context: ToEnvelope<AccountActor, M>,
    {
        let handles: Vec<AccountHandle> = self.actors.iter().map(|entry| entry.value().clone()).collect();
        let mut replies = Vec::with_capacity(handles.len());
        for handle in handles {
            handle.cell.depth.fetch_add(1, Ordering::AcqRel);
            replies.push(handle.addr.send(message.clone()));
        }
        for reply in replies {
            let _ = reply.await;
        }
    }

    /// Ask every actor idle since `cutoff_ms` to check whether it may passivate (the
    /// actor decides: its state must also be durable). The others are only read in the
    /// registry, never sent a message; returns how many were asked.
    pub fn sweep_idle(&self, cutoff_ms: i64) -> usize {
        let mut asked = 0;
        for entry in self.actors.iter() {
            let handle = entry.value();
            if !handle.cell.is_idle_since(cutoff_ms) {
                continue;
            }
            handle.cell.depth.fetch_add(1, Ordering::AcqRel);
            if handle.addr.try_send(Sweep).is_err() {
                handle.cell.depth.fetch_sub(1, Ordering::AcqRel);
            } else {
                asked += 1;
            }
        }
        asked
    }

    fn forget_if_dead(&self, handle: &AccountHandle) {
        if !handle.addr.connected() {
            self.forget(&handle.cell);
        }
    }

    /// The live actors with the deepest mailboxes, for operators.
    /// Messages waiting in all mailboxes.
    pub fn mailbox_depth(&self) -> usize {
        self.actors
            .iter()
            .map(|entry| entry.value().cell.depth.load(Ordering::Relaxed))
            .sum()
    }

    /// The `count` live actors with the deepest mailboxes (empty ones left out), and the
    /// `count` that handled the most messages in the last whole second before `now_ms`
    /// (idle ones left out).
    pub fn busiest(&self, count: usize, now_ms: i64) -> (Vec<BusyActor>, Vec<BusyActor>) {
        let all: Vec<BusyActor> = self
            .actors
            .iter()
            .map(|entry| BusyActor {
                account: *entry.key(),
                mailbox_depth: entry.value().cell.depth.load(Ordering::Relaxed),
                messages_per_second: entry.value().cell.messages_per_second(now_ms),
            })
            .filter(|actor| actor.mailbox_depth > 0 || actor.messages_per_second > 0)
            .collect();
        let top = |key: fn(&BusyActor) -> u64| {
            let mut ranked: Vec<BusyActor> = all.iter().copied().filter(|actor| key(actor) > 0).collect();
            ranked.sort_unstable_by(|a, b| key(b).cmp(&key(a)).then(a.account.cmp(&b.account)));
            ranked.truncate(count);
            ranked
        };
        (
            top(|actor| actor.mailbox_depth as u64),
            top(|actor| actor.messages_per_second),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_actors_rate_is_the_messages_of_the_last_whole_second() {
        let cell = ActorCell::new(AccountId::new(7).unwrap(), 1, 10_000);
        for at in [10_000, 10_200, 10_999] {
            cell.count_message(at);
        }
        assert_eq!(cell.messages_per_second(10_999), 0, "second 10 is not over yet");
        assert_eq!(cell.messages_per_second(11_000), 3);
        cell.count_message(11_500);
        assert_eq!(cell.messages_per_second(11_600), 3, "still second 10's count");
        assert_eq!(cell.messages_per_second(12_000), 1);
        assert_eq!(cell.messages_per_second(13_000), 0, "nothing in second 12");
        // A gap of several seconds: the second before the new one handled nothing.
        cell.count_message(20_100);
        assert_eq!(cell.messages_per_second(20_200), 0);
        assert_eq!(cell.messages_per_second(21_000), 1);
    }
}
