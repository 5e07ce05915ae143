//! Acknowledgements of durability, woken once per waiting thread and batch.
//!
//! Every strict write waits for the group commit that makes it durable. Waking each
//! waiter from the persister thread costs a system call per write (a task woken from
//! outside its runtime makes that runtime's thread leave its poll), and each wake lets
//! that thread preempt the persister before it has acknowledged the rest of the batch.
//! So the waiters of one thread form a [`Group`]: the persister marks every write of a
//! batch durable, hands the group the batch's settled waiters, then wakes one of them,
//! and that waiter, run on its own thread, wakes the others. Those wakes are local to
//! the thread's runtime and cost no system call.
//!
//! A group holds only waiters already settled and not yet woken: whoever leaves it — a
//! waiter that completes, or one dropped — takes them all and wakes them, so the duty to
//! wake never ends with a waiter that is gone, and leaving costs nothing for the writes
//! still pending (relaxed durability keeps tens of thousands of them waiting per thread).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

const PENDING: u8 = 0;
const DURABLE: u8 = 1;
/// The write will never be durable (the persister stopped without writing it).
const DROPPED: u8 = 2;

/// One write's acknowledgement: its state and the waker of the task waiting on it.
#[derive(Debug, Default)]
struct Slot {
    state: AtomicU8,
    waker: Mutex<Option<Waker>>,
    /// The waiter has left its group (set under the group's lock): the slot is not
    /// handed to the group, where no one would be left to take it.
    gone: AtomicBool,
}

impl Slot {
    fn wake(&self) {
        let waker = self.waker.lock().expect("ack waker lock").take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The waiters of one thread whose writes are settled and who have not been woken yet.
#[derive(Debug, Default)]
struct Group {
    settled: Mutex<Vec<Arc<Slot>>>,
}

impl Group {
    /// `slot`'s waiter leaves: wake every other settled waiter of the group.
    fn leave(&self, slot: &Arc<Slot>) {
        let settled = {
            let mut settled = self.settled.lock().expect("ack group lock");
            slot.gone.store(true, Ordering::Relaxed);
            std::mem::take(&mut *settled)
        };
        // Woken outside the lock: a waiter woken here may run on another core at once
        // and leave the group itself.
        for other in settled {
            if !Arc::ptr_eq(&other, slot) {
                other.wake();
            }
        }
    }

    /// Hand the group settled waiters and wake one of them, which wakes the rest when it
    /// runs (or when it is dropped).
    fn settle(&self, slots: Vec<Arc<Slot>>) {
        let mut settled = self.settled.lock().expect("ack group lock");
        settled.extend(slots.into_iter().filter(|slot| !slot.gone.load(Ordering::Relaxed)));
        // Under the lock, so the waiter cannot leave between being chosen and woken
        // (and once woken, it wakes the others whether it completes or is dropped).
        if let Some(slot) = settled.first() {
            slot.wake();
        }
    }
}

thread_local! {
    static GROUP: Arc<Group> = Arc::default();
}

/// A new acknowledgement: the persister keeps the sender, the caller awaits the
/// [`Durable`], which belongs to the group of the calling thread.
pub(crate) fn channel() -> (AckSender, Durable) {
    let slot = Arc::new(Slot::default());
    let group = GROUP.with(Arc::clone);
    (
        AckSender {
            slot: slot.clone(),
            group: group.clone(),
            sent: false,
        },
        Durable {
            slot,
            group,
            done: false,
        },
    )
}

/// The persister's side of one acknowledgement. Dropped unsent, it tells the waiter the
/// write will never be durable.
#[derive(Debug)]
pub(crate) struct AckSender {
    slot: Arc<Slot>,
    group: Arc<Group>,
    sent: bool,
}

impl Drop for AckSender {
    fn drop(&mut self) {
        if !self.sent {
            self.slot.state.store(DROPPED, Ordering::Release);
            self.slot.wake();
        }
    }
}

/// Acknowledge every write of a committed batch: all are marked durable first, then
/// each thread's group gets its settled waiters and one of them is woken.
pub(crate) fn acknowledge(senders: impl IntoIterator<Item = AckSender>) {
    let mut groups: Vec<(Arc<Group>, Vec<Arc<Slot>>)> = Vec::new();
    for mut sender in senders {
        sender.sent = true;
        sender.slot.state.store(DURABLE, Ordering::Release);
        let slot = sender.slot.clone();
        match groups.iter_mut().find(|(group, _)| Arc::ptr_eq(group, &sender.group)) {
            Some((_, slots)) => slots.push(slot),
            None => groups.push((sender.group.clone(), vec![slot])),
        }
    }
    for (group, slots) in groups {
        group.settle(slots);
    }
}

/// The write will never be durable: the persister stopped before writing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NeverDurable;

/// Resolves once the write is durable, or with [`NeverDurable`].
#[derive(Debug)]
#[must_use = "a durability acknowledgement does nothing unless awaited"]
pub(crate) struct Durable {
    slot: Arc<Slot>,
    group: Arc<Group>,
    done: bool,
}

impl Future for Durable {
    type Output = Result<(), NeverDurable>;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        {
            let mut waker = self.slot.waker.lock().expect("ack waker lock");
            match waker.as_mut() {
                Some(waker) => waker.clone_from(context.waker()),
                None => *waker = Some(context.waker().clone()),
            }
        }
        // Checked after the waker is in place: a state set before this is seen here, one
        // set after it finds the waker.
        let state = self.slot.state.load(Ordering::Acquire);
        if state == PENDING {
            return Poll::Pending;
        }
        self.done = true;
        self.group.leave(&self.slot);
        Poll::Ready(if state == DURABLE { Ok(()) } else { Err(NeverDurable) })
    }
}

impl Drop for Durable {
    fn drop(&mut self) {
        if !self.done {
            self.group.leave(&self.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;

    /// Counts its wakes.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(durable: &mut Durable, counter: &Arc<Counter>) -> Poll<Result<(), NeverDurable>> {
        let waker = Waker::from(counter.clone());
        Pin::new(durable).poll(&mut Context::from_waker(&waker))
    }

    fn wakes(counter: &Counter) -> usize {
        counter.0.load(Ordering::SeqCst)
    }

    /// `count` writes of this thread, each waited on, then acknowledged as one batch.
    fn acknowledged_while_waiting(count: usize) -> (Vec<Durable>, Vec<Arc<Counter>>) {
        let (senders, mut waiters): (Vec<_>, Vec<_>) = (0..count).map(|_| channel()).unzip();
        let counters: Vec<Arc<Counter>> = (0..count).map(|_| Arc::default()).collect();
        for (waiter, counter) in waiters.iter_mut().zip(&counters) {
            assert_eq!(poll(waiter, counter), Poll::Pending);
        }
        acknowledge(senders);
        (waiters, counters)
    }

    #[test]
    fn a_batch_wakes_one_waiter_per_thread_and_that_one_wakes_the_rest() {
        let (mut waiters, counters) = acknowledged_while_waiting(3);
        let woken: Vec<usize> = counters.iter().map(|counter| wakes(counter)).collect();
        assert_eq!(
            woken.iter().sum::<usize>(),
            1,
            "one wake for the thread's group: {woken:?}"
        );
        let first = woken.iter().position(|&n| n == 1).expect("one was woken");
        assert_eq!(poll(&mut waiters[first], &counters[first]), Poll::Ready(Ok(())));
        for (index, counter) in counters.iter().enumerate() {
            assert_eq!(wakes(counter), 1, "waiter {index} woken once");
        }
        for (waiter, counter) in waiters.iter_mut().zip(&counters) {
            assert_eq!(poll(waiter, counter), Poll::Ready(Ok(())));
        }
        GROUP.with(|group| assert!(group.settled.lock().unwrap().is_empty(), "every waiter was woken"));
    }

    #[test]
    fn a_waiter_dropped_after_it_was_chosen_hands_the_wakes_on() {
        let (mut waiters, counters) = acknowledged_while_waiting(2);
        let chosen = (0..2)
            .find(|&index| wakes(&counters[index]) == 1)
            .expect("one was woken");
        let other = 1 - chosen;
        assert_eq!(wakes(&counters[other]), 0);
        drop(waiters.remove(chosen));
        assert_eq!(wakes(&counters[other]), 1, "the dropped waiter woke the other");
        assert_eq!(poll(&mut waiters[0], &counters[other]), Poll::Ready(Ok(())));
    }

    #[test]
    fn a_waiter_gone_before_its_write_is_acknowledged_is_never_the_one_chosen() {
        let (gone_sender, gone) = channel();
        let (live_sender, mut live) = channel();
        let counter = Arc::<Counter>::default();
        assert_eq!(poll(&mut live, &counter), Poll::Pending);
        drop(gone);
        acknowledge([gone_sender, live_sender]);
        assert_eq!(wakes(&counter), 1, "the live waiter is woken, not the gone one");
        assert_eq!(poll(&mut live, &counter), Poll::Ready(Ok(())));
    }

    #[test]
    fn pending_writes_are_not_held_by_the_group() {
        let (_senders, mut waiters): (Vec<_>, Vec<_>) = (0..1000).map(|_| channel()).unzip();
        let counter = Arc::<Counter>::default();
        for waiter in &mut waiters {
            assert_eq!(poll(waiter, &counter), Poll::Pending);
        }
        GROUP.with(|group| assert!(group.settled.lock().unwrap().is_empty()));
        waiters.truncate(1);
        assert_eq!(wakes(&counter), 0, "leaving wakes no pending waiter");
    }

    #[test]
    fn only_settled_waiters_are_woken() {
        let (first_sender, mut first) = channel();
        let (_second_sender, mut second) = channel();
        let (one, two) = (Arc::<Counter>::default(), Arc::<Counter>::default());
        assert_eq!(poll(&mut first, &one), Poll::Pending);
        assert_eq!(poll(&mut second, &two), Poll::Pending);
        acknowledge([first_sender]);
        assert_eq!(wakes(&one), 1);
        assert_eq!(poll(&mut first, &one), Poll::Ready(Ok(())));
        assert_eq!(wakes(&two), 0, "the second write is not durable yet");
        assert_eq!(poll(&mut second, &two), Poll::Pending);
    }

    #[test]
    fn a_sender_dropped_unsent_resolves_its_waiter_as_never_durable() {
        let (sender, mut waiter) = channel();
        let counter = Arc::<Counter>::default();
        assert_eq!(poll(&mut waiter, &counter), Poll::Pending);
        drop(sender);
        assert_eq!(wakes(&counter), 1);
        assert_eq!(poll(&mut waiter, &counter), Poll::Ready(Err(NeverDurable)));
    }

    #[test]
    fn a_write_acknowledged_before_its_first_poll_is_ready_at_once() {
        let (sender, mut waiter) = channel();
        acknowledge([sender]);
        assert_eq!(poll(&mut waiter, &Arc::default()), Poll::Ready(Ok(())));
    }

    /// Waiters on several runtimes, a persister thread acknowledging them in batches of
    /// every size (dropping some unsent, as a stopping persister would), and waiters that
    /// give up early: every waiter still there ends with its write's true outcome.
    #[test]
    fn hammered_from_many_threads_no_wake_is_lost() {
        const THREADS: usize = 4;
        const WAITERS: usize = 500;
        let (to_persister, from_waiters) = std::sync::mpsc::channel::<(usize, AckSender)>();
        let persister = std::thread::spawn(move || {
            let mut outcomes = std::collections::HashMap::new();
            let mut batch = Vec::new();
            let mut step = 0usize;
            while let Ok(first) = from_waiters.recv() {
                batch.push(first);
                batch.extend(from_waiters.try_iter().take(step % 40));
                step += 1;
                let (kept, dropped): (Vec<_>, Vec<_>) = batch.drain(..).partition(|(id, _)| !id.is_multiple_of(7));
                for (id, _) in &kept {
                    outcomes.insert(*id, Ok(()));
                }
                for (id, sender) in dropped {
                    outcomes.insert(id, Err(NeverDurable));
                    drop(sender);
                }
                acknowledge(kept.into_iter().map(|(_, sender)| sender));
            }
            outcomes
        });
        let waiters: Vec<_> = (0..THREADS)
            .map(|thread| {
                let to_persister = to_persister.clone();
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    runtime.block_on(async move {
                        let tasks: Vec<_> = (0..WAITERS)
                            .map(|index| {
                                let id = thread * WAITERS + index;
                                let (sender, durable) = channel();
                                to_persister.send((id, sender)).expect("persister there");
                                tokio::spawn(async move {
                                    tokio::task::yield_now().await;
                                    if id.is_multiple_of(5) {
                                        // Gives up at once: dropped, pending or not.
                                        let _ = tokio::time::timeout(std::time::Duration::ZERO, durable).await;
                                        None
                                    } else {
                                        Some((id, durable.await))
                                    }
                                })
                            })
                            .collect();
                        let mut results = Vec::new();
                        for task in tasks {
                            results.extend(task.await.expect("waiter task"));
                        }
                        results
                    })
                })
            })
            .collect();
        drop(to_persister);
        let (done, timed_out) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let results: Vec<_> = waiters
                .into_iter()
                .flat_map(|waiter| waiter.join().expect("waiter thread"))
                .collect();
            let _ = done.send(results);
        });
        let results = timed_out
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("every waiter finished: no wake was lost");
        let outcomes = persister.join().expect("persister thread");
        assert_eq!(results.len(), THREADS * WAITERS - THREADS * WAITERS / 5);
        for (id, outcome) in results {
            assert_eq!(outcome, outcomes[&id], "waiter {id}");
        }
    }

    #[test]
    fn waiters_on_other_threads_are_woken_by_their_own_group() {
        let (sender, waiter) = std::thread::spawn(channel).join().expect("thread");
        let (local_sender, mut local) = channel();
        let (remote_counter, local_counter) = (Arc::<Counter>::default(), Arc::<Counter>::default());
        let mut waiter = waiter;
        assert_eq!(poll(&mut waiter, &remote_counter), Poll::Pending);
        assert_eq!(poll(&mut local, &local_counter), Poll::Pending);
        acknowledge([sender, local_sender]);
        assert_eq!(wakes(&remote_counter), 1, "the other thread's group got its wake");
        assert_eq!(wakes(&local_counter), 1, "and this thread's group its own");
    }
}
