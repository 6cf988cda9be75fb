//! Calls a member makes to its leader's peer port: forward a write, ask for a read index,
//! ask to be removed. They need only the member's peer identity ([`PeerShared`]).

use std::time::Duration;

use ordkv_store::MemberNode;

use super::{PEER_CALL_TIMEOUT, PeerShared, decode_reply, from_status};
use crate::error::{Error, Result};
use crate::pb;

impl PeerShared {
    /// Runs a write on the leader; gives up after `wait` (the outcome is then unknown). A
    /// leader that cannot be reached is `Unavailable`: the write never left this member.
    pub(crate) async fn forward(
        &self,
        leader: &MemberNode,
        cmd: pb::Command,
        wait: Duration,
    ) -> Result<pb::CommandResponse> {
        let mut client = self.client(&leader.peer_addr).map_err(Error::Unavailable)?;
        let req = pb::ForwardRequest {
            cluster_id: self.cluster_id().to_string(),
            command: Some(cmd),
        };
        let resp = tokio::time::timeout(wait, client.forward(req))
            .await
            .map_err(|_| {
                Error::OutcomeUnknown(format!(
                    "the leader {} did not answer within {wait:?}; the write may or may not commit",
                    leader.name
                ))
            })?
            .map_err(|s| match from_status(s) {
                Error::OutcomeUnknown(m) => {
                    Error::OutcomeUnknown(format!("forwarded to the leader {}: {m}", leader.name))
                }
                Error::Unavailable(m) => {
                    Error::Unavailable(format!("forwarding to the leader {}: {m}", leader.name))
                }
                e => e,
            })?;
        Ok(resp.into_inner())
    }

    /// Asks the leader for a lease keepalive or time to live (safe to ask again).
    pub(crate) async fn lease_forward(
        &self,
        leader: &MemberNode,
        req: pb::LeaseForwardRequest,
        wait: Duration,
    ) -> Result<pb::LeaseTimeToLiveResponse> {
        let mut client = self.client(&leader.peer_addr).map_err(Error::Unavailable)?;
        let resp = tokio::time::timeout(wait.min(PEER_CALL_TIMEOUT), client.lease_forward(req))
            .await
            .map_err(|_| Error::Unavailable(format!("the leader {} did not answer", leader.name)))?
            .map_err(from_status)?;
        Ok(resp.into_inner())
    }

    /// Asks the leader (`leader_id`) for a read index.
    pub(crate) async fn read_index(&self, leader_id: u64, leader: &MemberNode) -> Result<u64> {
        let mut client = self.client(&leader.peer_addr).map_err(Error::Unavailable)?;
        let req = pb::PeerRequest {
            cluster_id: self.cluster_id().to_string(),
            from_node: self.node_id,
            to_node: leader_id,
            payload: Default::default(),
            from_name: self.name.clone(),
            format: super::PEER_FORMAT,
        };
        let reply = tokio::time::timeout(PEER_CALL_TIMEOUT, client.read_index(req))
            .await
            .map_err(|_| Error::Unavailable(format!("the leader {} did not answer", leader.name)))?
            .map_err(from_status)?;
        let read: openraft::raft::linearizable_read::ReadLogId<ordkv_store::TypeConfig> =
            decode_reply(&leader.name, &reply.into_inner()).map_err(Error::Internal)?;
        Ok(read.index())
    }

    /// Asks the leader to remove this member; the leader answers within `wait` (removed, or
    /// "ask again").
    pub(crate) async fn leave(&self, leader: &MemberNode, wait: Duration) -> Result<String> {
        let mut client = self.client(&leader.peer_addr).map_err(Error::Unavailable)?;
        let req = pb::LeaveRequest {
            cluster_id: self.cluster_id().to_string(),
            node_id: self.node_id,
            name: self.name.clone(),
        };
        let reply = tokio::time::timeout(wait + PEER_CALL_TIMEOUT, client.leave(req))
            .await
            .map_err(|_| Error::Unavailable(format!("the leader {} did not answer", leader.name)))?
            .map_err(from_status)?;
        Ok(reply.into_inner().outcome)
    }
}
