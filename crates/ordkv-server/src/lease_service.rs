//! The `ordkv.v1.Lease` gRPC service: a thin adapter from tonic to the lease operations of
//! [`ordkv::Kv`] (see `lease.proto`).

use std::pin::Pin;

use futures::{Stream, StreamExt};
use ordkv::pb;
use tonic::{Request, Response, Status, Streaming};

use crate::rpc::RpcContext;
use crate::status::status_from_error;

/// The server stream of keepalive answers.
pub type KeepAliveStream =
    Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

/// Serves `ordkv.v1.Lease` from a node.
#[derive(Clone)]
pub struct LeaseService {
    ctx: RpcContext,
}

impl LeaseService {
    pub(crate) fn new(ctx: RpcContext) -> Self {
        LeaseService { ctx }
    }
}

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        self.ctx
            .unary("LeaseGrant", request, |node, req| async move {
                node.kv().lease_grant(req).await
            })
            .await
    }

    /// Revoking deletes the lease's keys, so under access control the caller must be allowed
    /// to write each of them (as etcd checks).
    async fn lease_revoke(
        &self,
        request: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        if let Some(access) = &self.ctx.access {
            let keys = self
                .ctx
                .node
                .kv()
                .lease_time_to_live(pb::LeaseTimeToLiveRequest {
                    id: request.get_ref().id,
                    keys: true,
                })
                .await
                .map(|ttl| ttl.keys)
                .unwrap_or_default();
            access.check_writes(&request, &keys)?;
        }
        self.ctx
            .unary("LeaseRevoke", request, |node, req| async move {
                node.kv().lease_revoke(req.id).await
            })
            .await
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    /// One answer per keepalive, in order; a lease that is gone is answered with TTL 0. Any
    /// other error ends the stream with its status (the client opens a new one), and so does
    /// the server's shutdown.
    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let shutdown = self.ctx.shutdown.clone();
        self.ctx
            .unary("LeaseKeepAlive", request, |node, keepalives| async move {
                let answers = keepalives
                    .take_until(shutdown.cancelled_owned())
                    .then(move |req| {
                        let kv = node.kv();
                        async move {
                            let id = req?.id;
                            match kv.lease_keep_alive(id).await {
                                Ok(answer) => Ok(answer),
                                Err(ordkv::Error::NotFound(_)) => Ok(pb::LeaseKeepAliveResponse {
                                    header: None,
                                    id,
                                    ttl: 0,
                                }),
                                Err(e) => Err(status_from_error(e)),
                            }
                        }
                    });
                // Ends after the first error.
                let answers = answers.scan(false, |failed, item| {
                    let stop = *failed;
                    *failed = item.is_err();
                    std::future::ready((!stop).then_some(item))
                });
                Ok(Box::pin(answers) as KeepAliveStream)
            })
            .await
    }

    async fn lease_time_to_live(
        &self,
        request: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        self.ctx
            .unary("LeaseTimeToLive", request, |node, req| async move {
                node.kv().lease_time_to_live(req).await
            })
            .await
    }

    async fn lease_leases(
        &self,
        request: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        self.ctx
            .unary("LeaseLeases", request, |node, _| async move {
                node.kv().lease_leases().await
            })
            .await
    }
}
