//! The `ordkv.v1.Cluster` gRPC service: cluster status as this member sees it, and the
//! membership operations (remove a member, transfer leadership), which the leader runs.

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

/// The chunks of a backup.
pub type BackupStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

/// What `cluster status` says without `--auth-policy`.
pub(crate) const ACCESS_CONTROL_OFF: &str =
    "off: any client the port admits may read, write and administer (--auth-policy)";

/// How `cluster status` describes the access control.
pub(crate) fn access_description(access: &Option<std::sync::Arc<crate::AccessControl>>) -> String {
    match access {
        Some(access) => access.describe(),
        None => ACCESS_CONTROL_OFF.to_string(),
    }
}

/// Bytes per backup chunk.
const BACKUP_CHUNK_BYTES: usize = 1024 * 1024;

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    type BackupStream = BackupStream;

    async fn backup(
        &self,
        request: Request<pb::BackupRequest>,
    ) -> Result<Response<BackupStream>, Status> {
        use futures::StreamExt;
        self.ctx.authorize(&request)?;
        let node = self.ctx.node.clone();
        let (summary, file) = node.backup().await.map_err(crate::status_from_error)?;
        tracing::info!(node = %node.identity().name, revision = summary.revision, "streaming a backup");
        let reader = tokio_util::io::ReaderStream::with_capacity(
            tokio::fs::File::from_std(file),
            BACKUP_CHUNK_BYTES,
        );
        let chunks = reader.map(|r| {
            r.map(|data| pb::BackupChunk { data })
                .map_err(|e| Status::internal(format!("reading the snapshot: {e}")))
        });
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let access_control = access_description(&self.ctx.access);
        self.ctx
            .unary("Status", request, |node, _req| async move {
                let mut status = node.cluster_status().await?;
                status.access_control = access_control;
                Ok(status)
            })
            .await
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        self.ctx
            .unary("RemoveMember", request, |node, req| async move {
                let outcome = node.remove_member(req.ordinal).await?;
                Ok(change(&node, outcome))
            })
            .await
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        self.ctx
            .unary("TransferLeader", request, |node, req| async move {
                let outcome = node.transfer_leader(req.ordinal).await?;
                Ok(change(&node, outcome))
            })
            .await
    }
}

fn change(node: &ordkv::Node, outcome: String) -> pb::MemberChangeResponse {
    let s = node.status();
    pb::MemberChangeResponse {
        header: Some(pb::ResponseHeader {
            revision: s.revision,
            member: s.member,
            raft_term: s.term,
            cluster_id: node.cluster_id(),
        }),
        outcome,
    }
}
