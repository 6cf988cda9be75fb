//! Group commit: a thread makes writes durable for everyone waiting. Callers that arrive
//! while a sync runs share the next one, so N concurrent writers cost about one fsync, not N.
//! A failed sync is fatal: every later request fails too, because after a failed fsync the
//! kernel may have dropped the dirty pages and a retry could report success for lost data.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use openraft::storage::IOFlushed;

use crate::types::TypeConfig;

enum Waiter {
    Raft(IOFlushed<TypeConfig>),
    Channel(tokio::sync::oneshot::Sender<io::Result<()>>),
}

impl Waiter {
    fn complete(self, result: &Result<(), String>) {
        let r = result.clone().map_err(io::Error::other);
        match self {
            Waiter::Raft(cb) => cb.io_completed(r),
            Waiter::Channel(tx) => {
                let _ = tx.send(r);
            }
        }
    }
}

/// Histogram: seconds per sync, label `file`: the `fdatasync` of the log segment (`wal`), or
/// sled's flush plus its `fdatasync` (`db`). The
/// disk's health: etcd operators watch the same figure (`wal_fsync_duration_seconds`).
pub const SYNC_DURATION: &str = "ordkv_storage_sync_duration_seconds";
/// Counter: requests made durable, label `file`. Divided by the syncs (the histogram's count),
/// it is how many writers one sync serves (group commit).
pub const SYNC_WAITERS: &str = "ordkv_storage_sync_waiters_total";

/// Handle to the flusher thread. Cloning shares the thread.
#[derive(Clone)]
pub(crate) struct Durability {
    // Declared before `_thread`: a handle's sender is gone before it may join the thread.
    tx: mpsc::Sender<Waiter>,
    failed: Arc<AtomicBool>,
    _thread: Arc<Flusher>,
}

/// Joins the flusher thread when the last handle goes, so that what its `sync` holds (the
/// store's files and their locks) is released by then, not some time after.
struct Flusher(Option<std::thread::JoinHandle<()>>);

impl Drop for Flusher {
    fn drop(&mut self) {
        // Every sender is gone (see `Durability`): the thread's `recv` fails and it ends.
        if let Some(t) = self.0.take()
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }
}

impl Durability {
    /// Starts a flusher thread that makes writes durable with `sync`. Every flusher of a
    /// store shares `failed`: after one failure, all refuse. `file` labels its metrics.
    pub(crate) fn start(
        name: &str,
        file: &'static str,
        failed: Arc<AtomicBool>,
        sync: impl Fn() -> Result<(), String> + Send + 'static,
    ) -> io::Result<Durability> {
        let (tx, rx) = mpsc::channel::<Waiter>();
        let flag = failed.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // Ends when every sender (every store handle) is dropped.
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let result = if flag.load(Ordering::SeqCst) {
                        Err("an earlier fsync failed; this node stopped accepting writes".into())
                    } else {
                        let started = Instant::now();
                        let r = sync();
                        metrics::histogram!(SYNC_DURATION, "file" => file)
                            .record(started.elapsed().as_secs_f64());
                        metrics::counter!(SYNC_WAITERS, "file" => file)
                            .increment(batch.len() as u64);
                        if let Err(e) = &r {
                            flag.store(true, Ordering::SeqCst);
                            tracing::error!(error = %e, "storage flush failed; the node stops accepting writes");
                        }
                        r
                    };
                    tracing::trace!(waiters = batch.len(), "group commit");
                    for w in batch {
                        w.complete(&result);
                    }
                }
            })?;
        Ok(Durability {
            tx,
            failed,
            _thread: Arc::new(Flusher(Some(thread))),
        })
    }

    /// Calls `cb` once everything written so far is on disk.
    pub(crate) fn flush_then(&self, cb: IOFlushed<TypeConfig>) {
        if let Err(mpsc::SendError(w)) = self.tx.send(Waiter::Raft(cb)) {
            w.complete(&Err("the flusher thread is gone".into()));
        }
    }

    /// Returns once everything written so far is on disk.
    pub(crate) async fn flush(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx
            .send(Waiter::Channel(tx))
            .map_err(|_| io::Error::other("the flusher thread is gone"))?;
        rx.await
            .map_err(|_| io::Error::other("the flusher thread is gone"))?
    }

    /// Whether a flush failed (the node must stop).
    pub(crate) fn has_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    #[tokio::test]
    async fn a_failed_sync_fails_every_later_request_and_is_never_retried() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let failed = Arc::new(AtomicBool::new(false));
        let d = Durability::start("test-sync", "test", failed.clone(), move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Err("EIO".into())
        })
        .unwrap();
        let first = d.flush().await.unwrap_err().to_string();
        assert!(first.contains("EIO"), "{first}");
        assert!(d.has_failed() && failed.load(Ordering::SeqCst));
        let later = d.flush().await.unwrap_err().to_string();
        assert!(later.contains("earlier fsync failed"), "{later}");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "a failed sync is not retried"
        );
    }

    #[tokio::test]
    async fn concurrent_waiters_share_syncs() {
        // The only test here that reads metrics; its label keeps other tests' syncs apart.
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        metrics::set_global_recorder(recorder).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let d = Durability::start(
            "test-sync",
            "group-test",
            Arc::new(AtomicBool::new(false)),
            move || {
                counted.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(20));
                Ok(())
            },
        )
        .unwrap();
        let waiters: Vec<_> = (0..32).map(|_| d.flush()).collect();
        for r in futures::future::join_all(waiters).await {
            r.unwrap();
        }
        let syncs = calls.load(Ordering::SeqCst);
        assert!(syncs <= 8, "32 waiters took {syncs} syncs: no group commit");
        // Recorded before the waiters are told, so complete now.
        let text = metrics.render();
        let sample = |series: &str| {
            text.lines().find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .parse::<f64>()
                    .ok()
            })
        };
        let label = r#"{file="group-test"}"#;
        assert_eq!(
            sample(&format!("{SYNC_WAITERS}{label}")),
            Some(32.0),
            "{text}"
        );
        assert_eq!(
            sample(&format!("{SYNC_DURATION}_count{label}")),
            Some(syncs as f64),
            "{text}"
        );
    }
}
