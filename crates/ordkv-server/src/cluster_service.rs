//! The `ordkv.v1.Cluster` gRPC service: cluster status as this member sees it.

use ordkv::pb;
use tonic::{Request, Response, Status};

use crate::rpc::RpcContext;

/// Serves `ordkv.v1.Cluster` from a node.
#[derive(Clone)]
pub struct ClusterService {
    ctx: RpcContext,
}

impl ClusterService {
    pub(crate) fn new(ctx: RpcContext) -> Self {
        ClusterService { ctx }
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.ctx
            .unary("Status", request, |node, _req| async move {
                node.cluster_status().await
            })
            .await
    }
}
