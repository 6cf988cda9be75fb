//! Linearizable reads share read indexes. Asking the leader for a read index costs a round of
//! heartbeats to a quorum (plus a peer RPC on a follower); under many concurrent readers that
//! round, not the read, is the cost. So readers queue, and one fetch serves everyone queued
//! when it *started*: a fetch already in flight may predate a write the reader saw
//! acknowledged, so late arrivals wait for the next one (etcd batches its ReadIndex the same
//! way).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{LinearizableReadError as L, RaftError};
use tokio::sync::oneshot;

use crate::error::{Error, Result, node_stopped};
use crate::replica::Replica;

/// Pause before asking the leader for a read index again after it could not give one.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

#[derive(Default)]
pub(crate) struct ReadBatcher {
    state: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    /// Whether a fetch task is running (it drains `waiting` until empty).
    fetching: bool,
    waiting: Vec<oneshot::Sender<Result<u64>>>,
}

impl ReadBatcher {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The result of a `fetch` that started after this call, shared with every caller
    /// queued when it started.
    pub(crate) async fn join<F, Fut>(self: &Arc<Self>, fetch: F) -> Result<u64>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<u64>> + Send,
    {
        let (tx, rx) = oneshot::channel();
        let start_fetching = {
            let mut q = self.queue();
            q.waiting.push(tx);
            !std::mem::replace(&mut q.fetching, true)
        };
        if start_fetching {
            let batcher = self.clone();
            tokio::spawn(async move {
                let mut guard = FetchTaskGuard(Some(batcher.clone()));
                loop {
                    let batch = {
                        let mut q = batcher.queue();
                        if q.waiting.is_empty() {
                            q.fetching = false;
                            guard.0 = None;
                            return;
                        }
                        std::mem::take(&mut q.waiting)
                    };
                    let result = fetch().await;
                    for waiter in batch {
                        let _ = waiter.send(result.clone());
                    }
                }
            });
        }
        rx.await
            .map_err(|_| Error::Unavailable("the node is shutting down".into()))?
    }
}

/// Ends a fetch task that did not return normally (a panic in `fetch`): the next reader
/// starts a new task instead of queueing behind one that is gone, and the queued readers get
/// an error rather than waiting forever.
struct FetchTaskGuard(Option<Arc<ReadBatcher>>);

impl Drop for FetchTaskGuard {
    fn drop(&mut self) {
        if let Some(batcher) = self.0.take() {
            let mut q = batcher.queue();
            q.fetching = false;
            q.waiting.clear();
        }
    }
}

/// Linearizable reads on this member: read indexes from the leader, shared by readers.
#[derive(Clone)]
pub(crate) struct Reads {
    replica: Replica,
    batcher: Arc<ReadBatcher>,
    /// How long a read may wait for a leader and for its read index to be applied.
    request_wait: Duration,
}

impl Reads {
    pub(crate) fn new(replica: Replica, request_wait: Duration) -> Reads {
        Reads {
            replica,
            batcher: Default::default(),
            request_wait,
        }
    }

    /// Waits until reads here reflect every write acknowledged before this call: a read
    /// index from the leader (asked over the peer port when this node follows), shared with
    /// concurrent readers, then the local apply catching up to it.
    pub(crate) async fn linearize(&self) -> Result<()> {
        let reads = self.clone();
        let index = self
            .batcher
            .join(move || {
                let reads = reads.clone();
                async move { reads.read_index().await }
            })
            .await?;
        self.replica
            .raft
            .wait(Some(self.request_wait.max(Duration::from_millis(100))))
            .applied_index_at_least(Some(index), "read index applied")
            .await
            .map(|_| ())
            .map_err(|_| {
                Error::Unavailable(format!(
                    "this member has not applied the leader's read index {index} in time; it is catching up"
                ))
            })
    }

    /// One read index, from this node when it leads, else from the leader.
    async fn read_index(&self) -> Result<u64> {
        let deadline = tokio::time::Instant::now() + self.request_wait;
        loop {
            match self
                .replica
                .raft
                .get_read_linearizer(openraft::ReadPolicy::ReadIndex)
                .await
            {
                Ok(linearizer) => return Ok(linearizer.read_log_id().index()),
                Err(RaftError::APIError(L::ForwardToLeader(_))) => {}
                Err(RaftError::APIError(L::QuorumNotEnough(_))) => {
                    return Err(Error::Unavailable(
                        "this leader does not reach a quorum of voters (it may have been deposed); \
                         retry, on another member if this one stays unavailable"
                            .into(),
                    ));
                }
                Err(RaftError::Fatal(f)) => return Err(node_stopped(f)),
            }
            if let Some((leader_id, leader)) = self.replica.leader() {
                // A read index is safe to ask for again. Asking can fail for a moment, e.g.
                // on the first call over a connection that a healed partition broke, or
                // while the leader changes; the read waits that out within its deadline.
                match self.replica.peer.read_index(leader_id, &leader).await {
                    Err(
                        e @ (Error::Unavailable(_)
                        | Error::OutcomeUnknown(_)
                        | Error::NotLeader { .. }),
                    ) if tokio::time::Instant::now() + RETRY_PAUSE < deadline => {
                        tracing::debug!(leader = %leader.name, error = %e, "read index not given; asking again");
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    }
                    // A lost answer to a read is just a failed read.
                    Err(Error::OutcomeUnknown(m)) => return Err(Error::Unavailable(m)),
                    result => return result,
                }
            }
            self.replica.wait_for_leader(self.request_wait).await?;
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Unavailable("no leader to read through".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// A follower's linearizable read outlasts a leader that refuses to give it a read index
    /// for a moment (as on the first call over a connection a healed partition broke): the
    /// read asks again within its deadline instead of failing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_read_waits_out_a_leader_that_refuses_it_for_a_moment() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = crate::testing::three_nodes(dir.path()).await;
        let leader = nodes.iter().position(|n| n.status().is_leader).unwrap();
        let follower = (leader + 1) % 3;
        nodes[leader].kv().put_value("k", "v").await.unwrap();

        // Shorter than the election timeout: the follower keeps its leader.
        let follower_name = format!("kv-{follower}");
        nodes[leader].set_partitioned_from(std::slice::from_ref(&follower_name));
        let read = tokio::spawn({
            let kv = nodes[follower].kv();
            async move { kv.get_value("k").await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        if read.is_finished() {
            let ended = read.await.unwrap();
            panic!("the read ended while the leader refused it: {ended:?}");
        }
        nodes[leader].set_partitioned_from(&[]);
        let got = read.await.unwrap().unwrap();
        assert_eq!(got.as_deref(), Some(&b"v"[..]));
        for n in nodes {
            n.shutdown().await.unwrap();
        }
    }

    /// Every reader gets the result of a fetch that started after it asked, and concurrent
    /// readers share fetches.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_share_fetches_that_started_after_them() {
        let batcher = Arc::new(ReadBatcher::default());
        let started = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..200u64)
            .map(|i| {
                let (batcher, started) = (batcher.clone(), started.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_micros(i * 150)).await;
                    let before = started.load(Ordering::SeqCst);
                    let fetch_started = started.clone();
                    let got = batcher
                        .join(move || {
                            // The fetch's number: how many fetches started up to this one.
                            let n = fetch_started.fetch_add(1, Ordering::SeqCst) + 1;
                            async move {
                                tokio::time::sleep(Duration::from_millis(2)).await;
                                Ok(n)
                            }
                        })
                        .await
                        .unwrap();
                    (before, got)
                })
            })
            .collect();
        for r in readers {
            let (before, got) = r.await.unwrap();
            assert!(
                got > before,
                "served by fetch {got}, which started before the read (fetches started then: {before})"
            );
        }
        let fetches = started.load(Ordering::SeqCst);
        assert!(
            fetches < 100,
            "{fetches} fetches for 200 readers: reads were not shared"
        );
    }

    #[tokio::test]
    async fn an_error_reaches_every_reader_of_that_fetch() {
        let batcher = Arc::new(ReadBatcher::default());
        let got = batcher
            .join(|| async { Err(Error::Unavailable("no leader".into())) })
            .await;
        assert!(matches!(got, Err(Error::Unavailable(m)) if m == "no leader"));
        // The batcher keeps working after a failed fetch.
        assert_eq!(batcher.join(|| async { Ok(7) }).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_panicking_fetch_does_not_wedge_later_readers() {
        let batcher = Arc::new(ReadBatcher::default());
        let got = batcher
            .join(|| async {
                panic!("fetch failed");
                #[allow(unreachable_code)]
                Ok(0)
            })
            .await;
        assert!(got.is_err(), "the reader of the failed fetch gets an error");
        let next = tokio::time::timeout(Duration::from_secs(5), batcher.join(|| async { Ok(7) }))
            .await
            .expect("a later reader gets its own fetch");
        assert_eq!(next.unwrap(), 7);
    }
}
