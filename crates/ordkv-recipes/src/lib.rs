//! Coordination on ordkv leases, the same for the embedded `ordkv::Kv` and for
//! `ordkv_client::Client` (both implement [`Backend`]):
//!
//! - [`Session`]: a lease kept alive in the background, which reports when it is lost;
//! - [`Lock`]: a mutex whose holder gets a fencing token, released when its session ends;
//! - [`Election`]: one leader among campaigners, observable as a stream.
//!
//! The algorithms are etcd's `concurrency` package: each contender puts a key
//! `{prefix}/{lease id}` attached to its session's lease; the key's create revision orders
//! the contenders, and each waits for the deletion of the one just before it. A key
//! disappears when its owner releases it or when its lease expires, so a crashed holder
//! gives way after its TTL.

mod election;
mod lock;
mod session;

use std::time::Duration;

use bytes::Bytes;
use futures::Future;
use futures::stream::BoxStream;
use ordkv_proto::v1 as pb;

pub use election::{Election, Leadership};
pub use lock::{Lock, LockGuard};
pub use session::Session;

/// What the recipes need from a store: ordkv's lease and key operations.
pub trait Backend: Clone + Send + Sync + 'static {
    /// The store's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Grants a lease of `ttl` seconds; returns its id and the TTL granted.
    fn lease_grant(
        &self,
        ttl: i64,
    ) -> impl Future<Output = std::result::Result<(u64, i64), Self::Error>> + Send;
    /// Keeps lease `id` alive; returns its TTL, 0 when it is gone for good.
    fn lease_keep_alive(
        &self,
        id: u64,
    ) -> impl Future<Output = std::result::Result<i64, Self::Error>> + Send;
    /// Revokes lease `id` (gone already is not an error).
    fn lease_revoke(
        &self,
        id: u64,
    ) -> impl Future<Output = std::result::Result<(), Self::Error>> + Send;
    /// Runs a transaction.
    fn txn(
        &self,
        req: pb::TxnRequest,
    ) -> impl Future<Output = std::result::Result<pb::TxnResponse, Self::Error>> + Send;
    /// Reads a page of keys, linearizably.
    fn range(
        &self,
        req: pb::RangeRequest,
    ) -> impl Future<Output = std::result::Result<pb::RangeResponse, Self::Error>> + Send;
    /// Watches keys from a revision.
    #[allow(clippy::type_complexity)]
    fn watch(
        &self,
        req: pb::WatchRequest,
    ) -> impl Future<
        Output = std::result::Result<
            BoxStream<'static, std::result::Result<pb::WatchResponse, Self::Error>>,
            Self::Error,
        >,
    > + Send;
}

/// Why a recipe failed.
#[derive(Debug, thiserror::Error)]
pub enum Error<E: std::error::Error + 'static> {
    /// The store failed; see the error.
    #[error(transparent)]
    Store(E),
    /// The session's lease is gone (expired, or revoked): whatever it held is released.
    #[error(
        "the session's lease {lease} is gone (expired or revoked); its locks and leaderships are released"
    )]
    SessionLost {
        /// The lease.
        lease: u64,
    },
    /// The wait ended before the lock or the leadership was won (nothing is held).
    #[error("not acquired within {0:?}")]
    Timeout(Duration),
    /// A leadership was lost before the call (its key was deleted).
    #[error("no longer the leader: the election key was deleted")]
    NotLeader,
}

/// The recipes' result.
pub type Result<T, E> = std::result::Result<T, Error<E>>;

fn store<E: std::error::Error>(e: E) -> Error<E> {
    Error::Store(e)
}

/// The contender key of `lease` under `prefix`.
fn contender_key(prefix: &Bytes, lease: u64) -> Bytes {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("/{lease:016x}").as_bytes());
    key.into()
}

/// Every contender under `prefix/` (key, create revision, value), oldest first, and the
/// revision the list was read at.
async fn contenders<B: Backend>(
    backend: &B,
    prefix: &Bytes,
) -> Result<(Vec<pb::KeyValue>, u64), B::Error> {
    let mut dir = prefix.to_vec();
    dir.push(b'/');
    let mut kvs = Vec::new();
    let mut start = Bytes::new();
    let revision = loop {
        let page = backend
            .range(pb::RangeRequest {
                start: start.clone(),
                prefix: dir.clone().into(),
                ..Default::default()
            })
            .await
            .map_err(store)?;
        let revision = page.header.as_ref().map_or(0, |h| h.revision);
        kvs.extend(page.kvs);
        if !page.more {
            break revision;
        }
        start = page.next_start;
    };
    kvs.sort_by_key(|kv| kv.create_revision);
    Ok((kvs, revision))
}

/// Creates `key` with `value` on `lease` unless it exists; returns its create revision and
/// whether this call created it.
async fn create_or_get<B: Backend>(
    backend: &B,
    key: &Bytes,
    value: Bytes,
    lease: u64,
) -> Result<(u64, bool), B::Error> {
    let resp = backend
        .txn(pb::TxnRequest {
            compare: vec![pb::Compare {
                result: pb::compare::Result::Equal as i32,
                key: key.clone(),
                target: Some(pb::compare::Target::CreateRevision(0)),
            }],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::Put(pb::PutRequest {
                    key: key.clone(),
                    value,
                    prev_kv: false,
                    lease,
                })),
            }],
            failure: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::Range(pb::RangeRequest {
                    start: key.clone(),
                    ..Default::default()
                })),
            }],
        })
        .await
        .map_err(store)?;
    if resp.succeeded {
        return Ok((resp.header.map_or(0, |h| h.revision), true));
    }
    let existing = resp.responses.into_iter().find_map(|r| match r.response {
        Some(pb::response_op::Response::Range(r)) => r.kvs.into_iter().next(),
        _ => None,
    });
    existing
        .map(|kv| (kv.create_revision, false))
        .ok_or(Error::SessionLost { lease })
}

/// Waits until no contender older than `my_revision` is left under `prefix`: each wait is
/// on the deletion of the one just before this one. Fails with `SessionLost` when this
/// contender's own key is gone.
async fn wait_for_turn<B: Backend>(
    backend: &B,
    prefix: &Bytes,
    key: &Bytes,
    my_revision: u64,
    lease: u64,
) -> Result<(), B::Error> {
    loop {
        let (all, revision) = contenders(backend, prefix).await?;
        if !all
            .iter()
            .any(|kv| kv.key == key && kv.create_revision == my_revision)
        {
            return Err(Error::SessionLost { lease });
        }
        let Some(before) = all.iter().rfind(|kv| kv.create_revision < my_revision) else {
            return Ok(());
        };
        let req = pb::WatchRequest {
            key: before.key.clone(),
            start_revision: revision + 1,
            ..Default::default()
        };
        let deleted = |e: &pb::Event| e.r#type == pb::event::EventType::Delete as i32;
        // Deleted, or the member went away: look again either way.
        watch_until(backend, req, |resp| resp.events.iter().any(deleted)).await?;
    }
}

/// Watches with `req` until a response satisfies `done`, or the stream ends (the member went
/// away: the caller looks again).
async fn watch_until<B: Backend>(
    backend: &B,
    req: pb::WatchRequest,
    done: impl Fn(&pb::WatchResponse) -> bool,
) -> Result<(), B::Error> {
    use futures::StreamExt;
    let mut events = backend.watch(req).await.map_err(store)?;
    while let Some(resp) = events.next().await {
        if done(&resp.map_err(store)?) {
            break;
        }
    }
    Ok(())
}
