//! The in-process KV handle: validation, consistency, and the mapping from the state
//! machine's answers to API responses.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use futures::StreamExt;
use ordkv_store::EventBatch;
use ordkv_store::ReadError;
use tokio::sync::broadcast;

use crate::config::Limits;
use crate::error::{Error, Result};
use crate::lease::LeaseClock;
use crate::pb;
use crate::read_index::Reads;
use crate::replica::Replica;
use crate::revocable::Revocable;
use crate::validate;
use crate::writes::Writer;
use ordkv_proto::ops;

mod leases;

/// A cheap, cloneable handle to a node's key-value operations. Every clone refuses requests
/// once the node is shut down.
#[derive(Clone)]
pub struct Kv {
    core: Arc<Revocable<KvCore>>,
}

/// What a [`Kv`] works with, while the node runs.
pub(crate) struct KvCore {
    replica: Replica,
    writer: Writer,
    reads: Reads,
    limits: Limits,
    /// How long a read waits for `min_revision`, and lease calls for a leader.
    request_wait: std::time::Duration,
    /// The leader's lease countdowns (asked on the leader only).
    leases: Arc<LeaseClock>,
}

/// The events of a watch, in revision order. The first item has `created = true`.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse>> + Send>>;

/// History events read per message while a watch catches up.
const WATCH_CATCH_UP_EVENTS: usize = 1000;

fn storage(e: std::io::Error) -> Error {
    Error::Storage(e.to_string())
}

impl Kv {
    pub(crate) fn new(
        replica: Replica,
        writer: Writer,
        reads: Reads,
        limits: Limits,
        request_wait: std::time::Duration,
        leases: Arc<LeaseClock>,
    ) -> Kv {
        let member = replica.name().to_string();
        let core = KvCore {
            replica,
            writer,
            reads,
            limits,
            request_wait,
            leases,
        };
        Kv {
            core: Arc::new(Revocable::new(&member, core)),
        }
    }

    fn core(&self) -> Result<Arc<KvCore>> {
        self.core.get()
    }

    /// Takes the node's parts back from every clone (`Node::shutdown`).
    pub(crate) fn revoke(&self) {
        self.core.revoke();
    }
}

impl KvCore {
    pub(crate) fn header(&self, revision: u64) -> pb::ResponseHeader {
        let term = {
            use openraft::async_runtime::WatchReceiver;
            self.replica.raft.metrics().borrow_watched().current_term
        };
        pb::ResponseHeader {
            revision,
            member: self.replica.name().to_string(),
            raft_term: term,
            cluster_id: self.replica.peer.cluster_id().to_string(),
        }
    }

    async fn command(
        &self,
        op: pb::command::Op,
    ) -> Result<(pb::CommandResponse, pb::ResponseHeader)> {
        let resp = self.writer.write(pb::Command { op: Some(op) }).await?;
        let header = self.header(resp.revision);
        Ok((resp, header))
    }

    /// Waits for the read's consistency level; returns once the local state may be read.
    async fn before_read(&self, consistency: pb::Consistency, min_revision: u64) -> Result<()> {
        if consistency != pb::Consistency::Serializable {
            self.reads.linearize().await?;
        }
        if min_revision > 0 {
            let mut rx = self.replica.sm.revision_watch();
            let reached =
                tokio::time::timeout(self.request_wait, rx.wait_for(|r| *r >= min_revision)).await;
            match reached {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(Error::Unavailable("the node is shutting down".into())),
                Err(_) => {
                    return Err(Error::DeadlineExceeded(format!(
                        "this member has not applied revision {min_revision} within {:?} (it is at {})",
                        self.request_wait,
                        self.replica.sm.revision()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The events that match the watch, as one response; `None` when none do.
    fn matching(
        &self,
        req: &pb::WatchRequest,
        events: Vec<pb::Event>,
    ) -> Option<pb::WatchResponse> {
        let mut revision = 0;
        let events: Vec<pb::Event> = events
            .into_iter()
            .filter(|e| {
                let key = e.kv.as_ref().map_or(&b""[..], |kv| kv.key.as_ref());
                if !req.key.is_empty() {
                    key == req.key.as_ref()
                } else {
                    key.starts_with(&req.prefix)
                }
            })
            .map(|mut e| {
                revision = e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                if !req.prev_kv {
                    e.prev_kv = None;
                }
                e
            })
            .collect();
        (!events.is_empty()).then(|| pb::WatchResponse {
            header: Some(self.header(revision)),
            created: false,
            events,
        })
    }
}

impl Kv {
    /// Sets one key.
    pub async fn put(&self, req: pb::PutRequest) -> Result<pb::PutResponse> {
        let core = self.core()?;
        validate::put(&core.limits, &req)?;
        let (resp, header) = core.command(pb::command::Op::Put(req)).await?;
        match resp.result {
            Some(pb::command_response::Result::Put(mut p)) => {
                p.header = Some(header);
                Ok(p)
            }
            other => Err(unexpected("put", other)),
        }
    }

    /// Reads one key.
    pub async fn get(&self, req: pb::GetRequest) -> Result<pb::GetResponse> {
        let core = self.core()?;
        let consistency = validate::get(&core.limits, &req)?;
        core.before_read(consistency, req.min_revision).await?;
        let (kv, revision) = core.replica.sm.get(&req.key).map_err(storage)?;
        Ok(pb::GetResponse {
            header: Some(core.header(revision)),
            kv,
        })
    }

    /// Deletes a key, a `[key, end)` range or a prefix.
    pub async fn delete(&self, req: pb::DeleteRequest) -> Result<pb::DeleteResponse> {
        let core = self.core()?;
        validate::delete(&core.limits, &req)?;
        let (resp, header) = core.command(pb::command::Op::Delete(req)).await?;
        match resp.result {
            Some(pb::command_response::Result::Delete(mut d)) => {
                d.header = Some(header);
                Ok(d)
            }
            other => Err(unexpected("delete", other)),
        }
    }

    /// Lists keys in order, at most `limit` (or the node's maximum) at a time.
    pub async fn range(&self, req: pb::RangeRequest) -> Result<pb::RangeResponse> {
        let core = self.core()?;
        let consistency = validate::range(&core.limits, &req)?;
        core.before_read(consistency, req.min_revision).await?;
        let (mut resp, revision) = core.replica.sm.range(&req).map_err(storage)?;
        resp.header = Some(core.header(revision));
        Ok(resp)
    }

    /// Evaluates the compares atomically, then runs `success` or `failure` (a
    /// [`TxnRequest`](pb::TxnRequest), or a [`Txn`](crate::Txn) built step by step).
    pub async fn txn(&self, req: impl Into<pb::TxnRequest>) -> Result<pb::TxnResponse> {
        let core = self.core()?;
        let req = req.into();
        validate::txn(&core.limits, &req)?;
        let (resp, header) = core.command(pb::command::Op::Txn(req)).await?;
        match resp.result {
            Some(pb::command_response::Result::Txn(mut t)) => {
                t.header = Some(header);
                Ok(t)
            }
            other => Err(unexpected("txn", other)),
        }
    }

    /// Discards watch history older than `revision`.
    pub async fn compact(&self, req: pb::CompactRequest) -> Result<pb::CompactResponse> {
        let core = self.core()?;
        let (_, header) = core.command(pb::command::Op::Compact(req)).await?;
        Ok(pb::CompactResponse {
            header: Some(header),
        })
    }

    /// Streams put/delete events for a key or prefix from `start_revision` (0 = from now).
    /// A start older than the compacted revision fails with [`Error::Compacted`].
    pub async fn watch(&self, req: pb::WatchRequest) -> Result<WatchStream> {
        let core = self.core()?;
        validate::watch(&core.limits, &req)?;
        let oldest = core.replica.sm.compact_revision();
        if req.start_revision > 0 && req.start_revision < oldest {
            return Err(Error::Compacted {
                requested: req.start_revision,
                oldest,
            });
        }
        // Subscribed before the first response, so no batch falls between history and live.
        let (live, current) = core.replica.sm.subscribe();
        let created = pb::WatchResponse {
            header: Some(core.header(current)),
            created: true,
            events: vec![],
        };
        let feed = WatchFeed {
            next: if req.start_revision == 0 {
                current + 1
            } else {
                req.start_revision
            },
            up_to: current,
            live,
            req,
            kv: self.clone(),
        };
        // Polled by the client's own stream, without a task and channel per watcher: a
        // watcher that reads slowly falls behind the live feed and goes back to history.
        let rest = futures::stream::unfold(Some(feed), |feed| async move {
            let mut feed = feed?;
            match feed.next_response().await {
                Ok(resp) => Some((Ok(resp), Some(feed))),
                Err(e) => Some((Err(e), None)),
            }
        });
        Ok(Box::pin(
            futures::stream::once(std::future::ready(Ok(created))).chain(rest),
        ))
    }

    /// Deletes `key`; returns how many keys were deleted (0 or 1).
    pub async fn delete_key(&self, key: impl Into<Bytes>) -> Result<u64> {
        Ok(self.delete(ops::delete_key(key)).await?.deleted)
    }

    /// Deletes every key that starts with `prefix`; returns how many.
    pub async fn delete_prefix(&self, prefix: impl Into<Bytes>) -> Result<u64> {
        Ok(self.delete(ops::delete_prefix(prefix)).await?.deleted)
    }

    /// Reads up to `limit` keys that start with `prefix` (0: the server's maximum), in key
    /// order, linearizably. While `more`, scan on from `next_start` with [`Kv::range`].
    pub async fn scan_prefix(
        &self,
        prefix: impl Into<Bytes>,
        limit: u64,
    ) -> Result<pb::RangeResponse> {
        self.range(ops::scan_prefix(prefix, limit)).await
    }

    /// Puts `new` at `key` only if its value is `expected` (`None`: only if `key` does not
    /// exist). Returns whether it did.
    pub async fn compare_and_swap(
        &self,
        key: impl Into<Bytes>,
        expected: Option<Bytes>,
        new: impl Into<Bytes>,
    ) -> Result<bool> {
        Ok(self
            .txn(ops::compare_and_swap(key, expected, new))
            .await?
            .succeeded)
    }

    /// Watches `key` from now on (see [`Kv::watch`] for a start revision).
    pub async fn watch_key(&self, key: impl Into<Bytes>) -> Result<WatchStream> {
        self.watch(ops::watch_key(key)).await
    }

    /// Watches every key that starts with `prefix`, from now on.
    pub async fn watch_prefix(&self, prefix: impl Into<Bytes>) -> Result<WatchStream> {
        self.watch(ops::watch_prefix(prefix)).await
    }

    /// Convenience: put and return the revision created.
    pub async fn put_value(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<u64> {
        let resp = self
            .put(pb::PutRequest {
                key: key.into(),
                value: value.into(),
                prev_kv: false,
                lease: 0,
            })
            .await?;
        Ok(resp.header.map_or(0, |h| h.revision))
    }

    /// Convenience: linearizable get of the value alone.
    pub async fn get_value(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>> {
        let resp = self
            .get(pb::GetRequest {
                key: key.into(),
                ..Default::default()
            })
            .await?;
        Ok(resp.kv.map(|kv| kv.value))
    }
}

fn unexpected(what: &str, got: Option<pb::command_response::Result>) -> Error {
    Error::Internal(format!("{what} produced an unexpected result: {got:?}"))
}

/// One watcher's position: history first (revisions `next..=up_to`), then live batches;
/// after falling behind the live feed, back to history from where it was.
struct WatchFeed {
    kv: Kv,
    req: pb::WatchRequest,
    live: broadcast::Receiver<Arc<EventBatch>>,
    /// The next revision to deliver.
    next: u64,
    /// The last revision to read from history rather than from `live`.
    up_to: u64,
}

impl WatchFeed {
    /// Takes the node's parts for each step only: a watch waiting for the next batch does not
    /// keep a stopped node's store open (it ends once the store is gone).
    async fn next_response(&mut self) -> Result<pb::WatchResponse> {
        loop {
            if self.next <= self.up_to {
                let core = self.kv.core()?;
                let events = core
                    .replica
                    .sm
                    .history(self.next, self.up_to, WATCH_CATCH_UP_EVENTS)
                    .map_err(|e| match e {
                        ReadError::Compacted { requested, oldest } => {
                            Error::Compacted { requested, oldest }
                        }
                        ReadError::Io(e) => storage(e),
                    })?;
                match events.last().and_then(|e| e.kv.as_ref()) {
                    Some(last) => self.next = last.mod_revision + 1,
                    None => self.next = self.up_to + 1,
                }
                if let Some(resp) = core.matching(&self.req, events) {
                    return Ok(resp);
                }
                continue;
            }
            match self.live.recv().await {
                Ok(batch) => {
                    let events: Vec<pb::Event> = batch
                        .events
                        .iter()
                        .filter(|e| e.kv.as_ref().is_some_and(|kv| kv.mod_revision >= self.next))
                        .cloned()
                        .collect();
                    if let Some(last) = events.last().and_then(|e| e.kv.as_ref()) {
                        self.next = last.mod_revision + 1;
                    }
                    if let Some(resp) = self.kv.core()?.matching(&self.req, events) {
                        return Ok(resp);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let (rx, current) = self.kv.core()?.replica.sm.subscribe();
                    self.live = rx;
                    self.up_to = current;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(Error::Unavailable("the node is shutting down".into()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{Node, NodeConfig};

    /// A watcher that reads nothing while more batches are applied than the live feed keeps
    /// (1024) falls behind it; it must then get every event from history, in order, once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watcher_that_falls_behind_gets_every_event_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(NodeConfig::new(dir.path().join("kv-0")))
            .await
            .unwrap();
        let kv = node.kv();
        let mut watch = kv
            .watch(pb::WatchRequest {
                prefix: Bytes::from_static(b"k/"),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(watch.next().await.unwrap().unwrap().created);
        // One put at a time: each is a batch of its own.
        let mut written = Vec::new();
        for i in 0..1500 {
            let rev = kv.put_value(format!("k/{}", i % 7), format!("v{i}")).await;
            written.push(rev.unwrap());
        }
        let mut seen = Vec::new();
        while seen.len() < written.len() {
            let resp = tokio::time::timeout(Duration::from_secs(10), watch.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("stalled after {} of {} events", seen.len(), written.len())
                })
                .expect("the watch ended")
                .unwrap();
            seen.extend(
                resp.events
                    .iter()
                    .map(|e| e.kv.as_ref().unwrap().mod_revision),
            );
        }
        assert_eq!(seen, written);
        node.shutdown().await.unwrap();
    }
}
