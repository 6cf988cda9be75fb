//! The `ordkv.v1.KV` gRPC service: a thin adapter from tonic to [`ordkv::Kv`].
//!
//! Validation, forwarding to the leader and response headers are the node's job; this layer
//! adds the span, the deadline, metrics and the error mapping (see [`crate::rpc`]).

use std::pin::Pin;

use futures::{Stream, StreamExt};
use ordkv::pb;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::rpc::RpcContext;
use crate::status::status_from_error;

/// The server stream of a watch.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

/// Serves `ordkv.v1.KV` from a node.
#[derive(Clone)]
pub struct KvService {
    ctx: RpcContext,
}

impl KvService {
    pub(crate) fn new(ctx: RpcContext) -> Self {
        KvService { ctx }
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        self.ctx
            .unary("Put", request, |node, req| async move {
                node.kv().put(req).await
            })
            .await
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        self.ctx
            .unary("Get", request, |node, req| async move {
                node.kv().get(req).await
            })
            .await
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.ctx
            .unary("Delete", request, |node, req| async move {
                node.kv().delete(req).await
            })
            .await
    }

    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        self.ctx
            .unary("Range", request, |node, req| async move {
                node.kv().range(req).await
            })
            .await
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        self.ctx
            .unary("Txn", request, |node, req| async move {
                node.kv().txn(req).await
            })
            .await
    }

    type WatchStream = WatchStream;

    /// Establishing the watch is bounded by the deadline and counted like a unary call; the
    /// established stream is not. Events are pulled from the node only as fast as HTTP/2 flow
    /// control lets them out (no extra queue here), and dropping the response stream when the
    /// client goes away drops the node's watch with it. An error ends the stream with its
    /// status (e.g. `OUT_OF_RANGE` when the watch fell behind compaction); server shutdown
    /// ends it with `UNAVAILABLE` so that draining does not wait for watches forever.
    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let shutdown = self.ctx.shutdown.clone();
        self.ctx
            .unary("Watch", request, |node, req| async move {
                let events = node.kv().watch(req).await?;
                Ok(into_server_stream(events, shutdown))
            })
            .await
    }

    async fn compact(
        &self,
        request: Request<pb::CompactRequest>,
    ) -> Result<Response<pb::CompactResponse>, Status> {
        self.ctx
            .unary("Compact", request, |node, req| async move {
                node.kv().compact(req).await
            })
            .await
    }
}

/// Maps a node watch stream to a tonic one. It ends after the first error, or with
/// `UNAVAILABLE` once `shutdown` is cancelled.
fn into_server_stream(events: ordkv::WatchStream, shutdown: CancellationToken) -> WatchStream {
    enum Next {
        Item(Option<ordkv::Result<pb::WatchResponse>>),
        Shutdown,
    }
    let state = Some((events, shutdown));
    Box::pin(futures::stream::unfold(state, |state| async move {
        let (mut events, shutdown) = state?;
        let next = tokio::select! {
            biased;
            () = shutdown.cancelled() => Next::Shutdown,
            item = events.next() => Next::Item(item),
        };
        match next {
            Next::Item(None) => None,
            Next::Item(Some(Ok(response))) => Some((Ok(response), Some((events, shutdown)))),
            Next::Item(Some(Err(e))) => Some((Err(status_from_error(e)), None)),
            Next::Shutdown => Some((
                Err(Status::unavailable(
                    "server is shutting down; resume the watch on another member",
                )),
                None,
            )),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watch_stream_ends_after_the_first_error() {
        let items: Vec<ordkv::Result<pb::WatchResponse>> = vec![
            Ok(pb::WatchResponse {
                created: true,
                ..Default::default()
            }),
            Err(ordkv::Error::Compacted {
                requested: 1,
                oldest: 5,
            }),
            Ok(pb::WatchResponse::default()),
        ];
        let events = Box::pin(futures::stream::iter(items));
        let out: Vec<_> = into_server_stream(events, CancellationToken::new())
            .collect()
            .await;
        assert_eq!(out.len(), 2);
        assert!(out[0].as_ref().unwrap().created);
        assert_eq!(out[1].as_ref().unwrap_err().code(), tonic::Code::OutOfRange);
    }

    #[tokio::test]
    async fn shutdown_ends_an_idle_watch_with_unavailable() {
        let shutdown = CancellationToken::new();
        let idle = Box::pin(futures::stream::pending());
        let mut out = into_server_stream(idle, shutdown.clone());
        shutdown.cancel();
        let item = out.next().await.unwrap();
        assert_eq!(item.unwrap_err().code(), tonic::Code::Unavailable);
        assert!(out.next().await.is_none());
    }
}
