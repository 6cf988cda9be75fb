//! The Raft network over gRPC: one client per target node, plus the non-Raft peer calls.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use ordkv_store::{MemberNode, NodeId, SnapshotData, TypeConfig, Vote};
use tokio::io::AsyncReadExt;
use tonic::transport::Channel;

use super::{NOT_A_MEMBER, PeerShared, decode, encode};
use crate::pb;
use crate::pb::peer_client::PeerClient;

/// Snapshot bytes per streamed chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// Creates a [`RaftPeer`] per target.
#[derive(Clone)]
pub(crate) struct PeerNetwork {
    pub(crate) shared: Arc<PeerShared>,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = RaftPeer;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> RaftPeer {
        RaftPeer {
            target,
            target_name: node.name.clone(),
            grpc: self.shared.client(&node.peer_addr),
            shared: self.shared.clone(),
        }
    }
}

/// The Raft RPCs to one target node.
pub(crate) struct RaftPeer {
    target: NodeId,
    target_name: String,
    grpc: Result<PeerClient<Channel>, String>,
    shared: Arc<PeerShared>,
}

type RpcErr = RPCError<TypeConfig>;

fn unreachable(msg: impl ToString) -> Unreachable<TypeConfig> {
    Unreachable::from_string(msg)
}

impl RaftPeer {
    fn request(&self, payload: Vec<u8>) -> pb::PeerRequest {
        pb::PeerRequest {
            cluster_id: self.shared.cluster_id().to_string(),
            from_node: self.shared.node_id,
            to_node: self.target,
            payload: payload.into(),
            from_name: self.shared.name.clone(),
        }
    }

    fn grpc(&self) -> Result<PeerClient<Channel>, Unreachable<TypeConfig>> {
        if self.shared.is_blocked(&self.target_name) {
            return Err(unreachable(format!(
                "{} is cut off by fault injection",
                self.target_name
            )));
        }
        self.grpc.clone().map_err(unreachable)
    }

    /// Maps a failed call: transport trouble is "unreachable" (openraft backs off), a refusal
    /// by the peer is a network error that names the reason.
    fn status(&self, s: tonic::Status) -> RpcErr {
        match s.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                RPCError::Unreachable(unreachable(format!(
                    "{}: {}",
                    self.target_name,
                    s.message()
                )))
            }
            _ => RPCError::Network(NetworkError::from_string(format!(
                "{} refused: {}",
                self.target_name,
                s.message()
            ))),
        }
    }

    async fn unary<F, Fut>(
        &self,
        ttl: Duration,
        payload: Vec<u8>,
        call: F,
    ) -> Result<Vec<u8>, RpcErr>
    where
        F: FnOnce(PeerClient<Channel>, pb::PeerRequest) -> Fut,
        Fut: Future<Output = Result<tonic::Response<pb::PeerReply>, tonic::Status>>,
    {
        let grpc = self.grpc()?;
        let req = self.request(payload);
        match tokio::time::timeout(ttl, call(grpc, req)).await {
            Err(_) => Err(RPCError::Unreachable(unreachable(format!(
                "{}: no answer within {ttl:?}",
                self.target_name
            )))),
            Ok(Err(s)) => Err(self.status(s)),
            Ok(Ok(r)) => Ok(r.into_inner().payload.to_vec()),
        }
    }
}

fn net(e: String) -> RpcErr {
    RPCError::Network(NetworkError::from_string(e))
}

impl RaftNetworkV2<TypeConfig> for RaftPeer {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcErr> {
        let reply = self
            .unary(
                option.hard_ttl(),
                encode(&rpc).map_err(net)?,
                |mut c, r| async move { c.append(r).await },
            )
            .await?;
        decode(&reply).map_err(net)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        self.vote_or_pre_vote(false, rpc, option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        self.vote_or_pre_vote(true, rpc, option).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RpcErr> {
        let reply = self
            .unary(
                option.hard_ttl(),
                encode(&req).map_err(net)?,
                |mut c, r| async move { c.transfer_leader(r).await },
            )
            .await?;
        decode(&reply).map_err(net)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut grpc = self.grpc()?;
        let header = self.request(
            encode(&(vote, snapshot.meta.clone()))
                .map_err(|e| StreamingError::Network(NetworkError::from_string(e)))?,
        );
        let path = snapshot.snapshot.path.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(4);
        // Reads the file chunk by chunk: a multi-GB snapshot is never held in memory.
        let reader = tokio::spawn(async move {
            let mut file = tokio::fs::File::open(&path).await?;
            let mut crc = crc32fast::Hasher::new();
            let mut header = Some(header);
            loop {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
                let n = file.read(&mut buf).await?;
                buf.truncate(n);
                crc.update(&buf);
                let last = n == 0;
                let chunk = pb::SnapshotChunk {
                    header: header.take(),
                    data: buf.into(),
                    crc32: last.then(|| crc.clone().finalize()),
                };
                if tx.send(chunk).await.is_err() || last {
                    return Ok::<_, std::io::Error>(());
                }
            }
        });
        let call = grpc.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
        let reply = tokio::select! {
            closed = cancel => {
                reader.abort();
                return Err(StreamingError::Closed(closed));
            }
            r = call => r,
        };
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StreamingError::Network(NetworkError::new(&e))),
            Err(e) => return Err(StreamingError::Network(NetworkError::from_string(e))),
        }
        let reply = reply.map_err(|s| match self.status(s) {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            other => StreamingError::Network(NetworkError::from_string(other)),
        })?;
        decode(&reply.into_inner().payload)
            .map_err(|e| StreamingError::Network(NetworkError::from_string(e)))
    }
}

impl RaftPeer {
    async fn vote_or_pre_vote(
        &mut self,
        pre_vote: bool,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        let grpc = self.grpc()?;
        let req = self.request(encode(&(pre_vote, rpc)).map_err(net)?);
        let ttl = option.hard_ttl();
        let result = tokio::time::timeout(ttl, async move {
            let mut grpc = grpc;
            grpc.vote(req).await
        })
        .await;
        match result {
            Err(_) => Err(RPCError::Unreachable(unreachable(format!(
                "{}: no answer within {ttl:?}",
                self.target_name
            )))),
            Ok(Err(s)) => {
                if s.code() == tonic::Code::FailedPrecondition && s.message().contains(NOT_A_MEMBER)
                {
                    self.shared.mark_removed();
                }
                Err(self.status(s))
            }
            Ok(Ok(r)) => decode(&r.into_inner().payload).map_err(net),
        }
    }
}
