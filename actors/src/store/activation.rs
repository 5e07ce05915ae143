//! Account rows read for activation, many accounts in one query.
//!
//! Right after a start (or after idle actors were passivated) nearly every transfer
//! meets an actor that must first read its account's row, and a query per account made
//! the store's per-query work the bound of such a load. Reads asked for while one is
//! under way wait for it to finish and then go together in the next one, as a group
//! commit gathers writes. A read starts after every request it answers was made, so
//! each sees whatever was committed before its activation asked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::AccountRow;
use crate::money::AccountId;

/// The most accounts one read asks for; more wait for the next.
const READ_ACCOUNTS_MAX: usize = 512;

/// An account's row, `None` when there is no such account; the error of the read
/// shared by everyone it was for.
type RowAnswer = Result<Option<AccountRow>, Arc<anyhow::Error>>;

type RowReply = oneshot::Sender<RowAnswer>;

/// Activations waiting for their row, and whether a reader is at work.
#[derive(Debug, Default)]
pub(super) struct Activations {
    queue: Mutex<Queue>,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<(AccountId, RowReply)>,
    reading: bool,
}

impl Activations {
    /// Queue `id`; returns the receiver of its row and whether the caller must start a
    /// reader (none is at work).
    pub(super) fn ask(&self, id: AccountId) -> (oneshot::Receiver<RowAnswer>, bool) {
        let (reply, row) = oneshot::channel();
        let mut queue = self.queue.lock().unwrap();
        queue.waiting.push((id, reply));
        let start = !queue.reading;
        queue.reading = true;
        (row, start)
    }

    /// Read rows with `read` until nobody waits. Stops reading (and answers nobody,
    /// so the waiters see their read dropped) if it is itself dropped.
    pub(super) async fn serve<F, Fut>(self: Arc<Self>, read: F)
    where
        F: Fn(Vec<i64>) -> Fut,
        Fut: Future<Output = anyhow::Result<Vec<(i64, AccountRow)>>>,
    {
        let mut reader = Reader {
            activations: self,
            done: false,
        };
        loop {
            let batch: Vec<(AccountId, RowReply)> = {
                let mut queue = reader.activations.queue.lock().unwrap();
                if queue.waiting.is_empty() {
                    queue.reading = false;
                    reader.done = true;
                    return;
                }
                let take = queue.waiting.len().min(READ_ACCOUNTS_MAX);
                queue.waiting.drain(..take).collect()
            };
            let ids: Vec<i64> = batch.iter().map(|(id, _)| id.get()).collect();
            match read(ids).await {
                Ok(rows) => {
                    // The same account may be asked for twice (an actor retiring as
                    // another starts): each asker gets the row.
                    let rows: HashMap<i64, AccountRow> = rows.into_iter().collect();
                    for (id, reply) in batch {
                        let _ = reply.send(Ok(rows.get(&id.get()).cloned()));
                    }
                }
                Err(error) => {
                    let error = Arc::new(error);
                    for (_, reply) in batch {
                        let _ = reply.send(Err(error.clone()));
                    }
                }
            }
        }
    }
}

/// A reader at work. If its task is dropped before it is done (its runtime stopping),
/// whoever waits sees the read dropped, and the next caller starts another reader.
struct Reader {
    activations: Arc<Activations>,
    done: bool,
}

impl Drop for Reader {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut queue = self.activations.queue.lock().unwrap();
        queue.reading = false;
        queue.waiting.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A store of accounts 1 to 99, each holding 100 × its id, that records every read
    /// and takes `pause` over each.
    fn store(reads: Arc<Mutex<Vec<Vec<i64>>>>, pause: Duration) -> impl Fn(Vec<i64>) -> BoxedRead {
        move |ids| {
            let reads = reads.clone();
            Box::pin(async move {
                reads.lock().unwrap().push(ids.clone());
                tokio::time::sleep(pause).await;
                Ok(ids
                    .into_iter()
                    .filter(|id| (1..100).contains(id))
                    .map(|id| (id, (id * 100, 0, "active".to_string(), 1, 0, None, None, 0, 0)))
                    .collect())
            })
        }
    }

    type BoxedRead = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<Vec<(i64, AccountRow)>>> + Send>>;

    fn account(id: i64) -> AccountId {
        AccountId::new(id).unwrap()
    }

    #[tokio::test]
    async fn activations_asked_during_a_read_go_together_in_the_next() {
        let activations = Arc::new(Activations::default());
        let reads = Arc::new(Mutex::new(Vec::new()));
        let (first, start) = activations.ask(account(1));
        assert!(start);
        let reader = tokio::spawn(
            activations
                .clone()
                .serve(store(reads.clone(), Duration::from_millis(50))),
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut later = Vec::new();
        for id in [2, 3, 2, 500] {
            let (row, start) = activations.ask(account(id));
            assert!(!start, "a reader is at work");
            later.push(row);
        }
        assert_eq!(first.await.unwrap().unwrap().unwrap().0, 100);
        let mut balances = Vec::new();
        for row in later {
            balances.push(row.await.unwrap().unwrap().map(|row| row.0));
        }
        assert_eq!(balances, [Some(200), Some(300), Some(200), None]);
        reader.await.unwrap();
        assert_eq!(*reads.lock().unwrap(), [vec![1], vec![2, 3, 2, 500]]);
        // Done and idle: the next one asking starts a reader again.
        assert!(activations.ask(account(4)).1);
    }

    #[tokio::test]
    async fn a_reader_dropped_mid_read_leaves_the_next_asker_to_start_another() {
        let activations = Arc::new(Activations::default());
        let reads = Arc::new(Mutex::new(Vec::new()));
        let (row, _) = activations.ask(account(1));
        let reader = tokio::spawn(activations.clone().serve(store(reads, Duration::from_secs(3600))));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (waiting, start) = activations.ask(account(2));
        assert!(!start);
        reader.abort();
        assert!(reader.await.unwrap_err().is_cancelled());
        assert!(row.await.is_err(), "the read in flight was dropped");
        assert!(waiting.await.is_err(), "the waiter was let go");
        assert!(activations.ask(account(3)).1, "a new reader is needed");
    }
}
