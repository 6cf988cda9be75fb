//! The in-process KV handle: validation, consistency, and the mapping from the state
//! machine's answers to API responses.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use ordkv_store::ReadError;
use tokio::sync::{broadcast, mpsc};

use crate::error::{Error, Result};
use crate::node::Inner;
use crate::pb;
use crate::validate;

/// A cheap, cloneable handle to a node's key-value operations.
#[derive(Clone)]
pub struct Kv {
    pub(crate) inner: Arc<Inner>,
}

/// The events of a watch, in revision order. The first item has `created = true`.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse>> + Send>>;

/// History events read per message while a watch catches up.
const WATCH_CATCH_UP_EVENTS: usize = 1000;
/// Responses buffered per watcher before it is considered slow.
const WATCH_BUFFER: usize = 64;

fn storage(e: std::io::Error) -> Error {
    Error::Storage(e.to_string())
}

impl Kv {
    pub(crate) fn header(&self, revision: u64) -> pb::ResponseHeader {
        let term = {
            use openraft::async_runtime::WatchReceiver;
            self.inner.raft.metrics().borrow_watched().current_term
        };
        pb::ResponseHeader {
            revision,
            member: self.inner.identity.name.clone(),
            raft_term: term,
            cluster_id: self.inner.peer.cluster_id().to_string(),
        }
    }

    async fn command(
        &self,
        op: pb::command::Op,
    ) -> Result<(pb::CommandResponse, pb::ResponseHeader)> {
        let resp = self.inner.write(pb::Command { op: Some(op) }).await?;
        let header = self.header(resp.revision);
        Ok((resp, header))
    }

    /// Waits for the read's consistency level; returns once the local state may be read.
    async fn before_read(&self, consistency: pb::Consistency, min_revision: u64) -> Result<()> {
        if consistency != pb::Consistency::Serializable {
            self.inner.linearize().await?;
        }
        if min_revision > 0 {
            let mut rx = self.inner.sm.revision_watch();
            let reached = tokio::time::timeout(
                self.inner.config.request_wait,
                rx.wait_for(|r| *r >= min_revision),
            )
            .await;
            match reached {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(Error::Unavailable("the node is shutting down".into())),
                Err(_) => {
                    return Err(Error::DeadlineExceeded(format!(
                        "this member has not applied revision {min_revision} within {:?} (it is at {})",
                        self.inner.config.request_wait,
                        self.inner.sm.revision()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Sets one key.
    pub async fn put(&self, req: pb::PutRequest) -> Result<pb::PutResponse> {
        validate::put(&self.inner.config.limits, &req)?;
        let (resp, header) = self.command(pb::command::Op::Put(req)).await?;
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
        let consistency = validate::get(&self.inner.config.limits, &req)?;
        self.before_read(consistency, req.min_revision).await?;
        let (kv, revision) = self.inner.sm.get(&req.key).map_err(storage)?;
        Ok(pb::GetResponse {
            header: Some(self.header(revision)),
            kv,
        })
    }

    /// Deletes a key, a `[key, end)` range or a prefix.
    pub async fn delete(&self, req: pb::DeleteRequest) -> Result<pb::DeleteResponse> {
        validate::delete(&self.inner.config.limits, &req)?;
        let (resp, header) = self.command(pb::command::Op::Delete(req)).await?;
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
        let consistency = validate::range(&self.inner.config.limits, &req)?;
        self.before_read(consistency, req.min_revision).await?;
        let (mut resp, revision) = self.inner.sm.range(&req).map_err(storage)?;
        resp.header = Some(self.header(revision));
        Ok(resp)
    }

    /// Evaluates the compares atomically, then runs `success` or `failure`.
    pub async fn txn(&self, req: pb::TxnRequest) -> Result<pb::TxnResponse> {
        validate::txn(&self.inner.config.limits, &req)?;
        let (resp, header) = self.command(pb::command::Op::Txn(req)).await?;
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
        let (_, header) = self.command(pb::command::Op::Compact(req)).await?;
        Ok(pb::CompactResponse {
            header: Some(header),
        })
    }

    /// Streams put/delete events for a key or prefix from `start_revision` (0 = from now).
    /// A start older than the compacted revision fails with [`Error::Compacted`].
    pub async fn watch(&self, req: pb::WatchRequest) -> Result<WatchStream> {
        validate::watch(&self.inner.config.limits, &req)?;
        let oldest = self.inner.sm.compact_revision();
        if req.start_revision > 0 && req.start_revision < oldest {
            return Err(Error::Compacted {
                requested: req.start_revision,
                oldest,
            });
        }
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let kv = self.clone();
        tokio::spawn(async move {
            if let Err(e) = kv.run_watch(&req, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    /// Feeds one watcher: history first, then live batches; after falling behind the live
    /// feed, it goes back to history from where it was.
    async fn run_watch(
        &self,
        req: &pb::WatchRequest,
        tx: &mpsc::Sender<Result<pb::WatchResponse>>,
    ) -> Result<()> {
        let sm = &self.inner.sm;
        let (mut live, current) = sm.subscribe();
        let mut next = if req.start_revision == 0 {
            current + 1
        } else {
            req.start_revision
        };
        let created = pb::WatchResponse {
            header: Some(self.header(current)),
            created: true,
            events: vec![],
        };
        if tx.send(Ok(created)).await.is_err() {
            return Ok(());
        }
        let mut up_to = current;
        loop {
            while next <= up_to {
                let events =
                    sm.history(next, up_to, WATCH_CATCH_UP_EVENTS)
                        .map_err(|e| match e {
                            ReadError::Compacted { requested, oldest } => {
                                Error::Compacted { requested, oldest }
                            }
                            ReadError::Io(e) => storage(e),
                        })?;
                let Some(last) = events
                    .last()
                    .and_then(|e| e.kv.as_ref())
                    .map(|kv| kv.mod_revision)
                else {
                    break;
                };
                next = last + 1;
                if !self.send_events(req, events, tx).await {
                    return Ok(());
                }
            }
            next = next.max(up_to + 1);
            loop {
                let batch = tokio::select! {
                    _ = tx.closed() => return Ok(()),
                    b = live.recv() => b,
                };
                match batch {
                    Ok(batch) => {
                        let events: Vec<pb::Event> = batch
                            .events
                            .iter()
                            .filter(|e| e.kv.as_ref().is_some_and(|kv| kv.mod_revision >= next))
                            .cloned()
                            .collect();
                        if let Some(last) = events.last().and_then(|e| e.kv.as_ref()) {
                            next = last.mod_revision + 1;
                        }
                        if !self.send_events(req, events, tx).await {
                            return Ok(());
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let (rx, current) = sm.subscribe();
                        live = rx;
                        up_to = current;
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(Error::Unavailable("the node is shutting down".into()));
                    }
                }
            }
        }
    }

    /// Sends the events that match the watch; false when the watcher is gone.
    async fn send_events(
        &self,
        req: &pb::WatchRequest,
        events: Vec<pb::Event>,
        tx: &mpsc::Sender<Result<pb::WatchResponse>>,
    ) -> bool {
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
        if events.is_empty() {
            return true;
        }
        let resp = pb::WatchResponse {
            header: Some(self.header(revision)),
            created: false,
            events,
        };
        tx.send(Ok(resp)).await.is_ok()
    }

    /// Convenience: put and return the revision created.
    pub async fn put_value(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<u64> {
        let resp = self
            .put(pb::PutRequest {
                key: key.into(),
                value: value.into(),
                prev_kv: false,
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
