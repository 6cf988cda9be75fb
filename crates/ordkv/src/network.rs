//! The Raft network. A single-member cluster never sends anything; peer replication over
//! gRPC replaces this when a cluster has more than one member.

use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use ordkv_store::{MemberNode, NodeId, SnapshotData, TypeConfig, Vote};

/// Reaches no one: every RPC fails as unreachable.
#[derive(Clone, Default)]
pub(crate) struct NoPeers;

fn unreachable(target: &str) -> Unreachable<TypeConfig> {
    Unreachable::from_string(format!(
        "peer {target} is unreachable: this node has no peer transport"
    ))
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeerClient;

    async fn new_client(&mut self, _target: NodeId, node: &MemberNode) -> NoPeerClient {
        NoPeerClient {
            target: node.name.clone(),
        }
    }
}

pub(crate) struct NoPeerClient {
    target: String,
}

impl RaftNetworkV2<TypeConfig> for NoPeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(unreachable(&self.target)))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(unreachable(&self.target)))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(unreachable(&self.target)))
    }
}
