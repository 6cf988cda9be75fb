//! The peer side of a member: the Raft transport over gRPC (port 7380), the cluster-info and
//! join calls used at start-up, and write forwarding and read index for followers.
//!
//! Every Raft RPC names the cluster and both node ids. A member refuses a request for
//! another cluster or for another incarnation of itself (a wiped volume rejoins under a new
//! node id, and must not answer for the old one), and refuses votes from candidates that are
//! not in its membership (a removed member that comes back must not disrupt elections).

pub(crate) mod client;
pub(crate) mod health;
pub(crate) mod server;
mod to_leader;

pub use client::PEER_APPEND_DURATION;
pub use health::PEER_ERRORS;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, RwLock};
use std::time::Duration;

use ordkv_store::MemberNode;
use tonic::transport::Channel;

use crate::pb;
use crate::pb::peer_client::PeerClient;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest peer message: an append of `max_payload_entries` entries of the largest values.
/// How long a member waits for a peer to answer a cluster-info, read-index or leave call.
pub(crate) const PEER_CALL_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// gRPC metadata / status detail marking "you are not a member" replies.
pub(crate) const NOT_A_MEMBER: &str = "not a member";

/// What the transport shares with the node.
pub(crate) struct PeerShared {
    pub(crate) node_id: u64,
    pub(crate) name: String,
    /// Set once: when the member bootstraps or joins a cluster.
    pub(crate) cluster_id: OnceLock<String>,
    /// Set when a peer answered that this member is not in its membership.
    pub(crate) removed: AtomicBool,
    /// Peers this member pretends it cannot reach (test fault injection).
    pub(crate) blocked: RwLock<HashSet<String>>,
    /// Answer `AppendStream` as a member of the previous version would: unimplemented (test
    /// fault injection for the leader's fallback during a rolling upgrade).
    #[cfg(test)]
    pub(crate) without_append_stream: AtomicBool,
    /// One lazily connecting channel per peer address, shared by every caller.
    channels: Mutex<HashMap<String, Channel>>,
    /// Which peers answer the Raft calls (quiet logs while one is down).
    pub(crate) health: health::PeerHealth,
}

impl PeerShared {
    pub(crate) fn new(node_id: u64, name: String, cluster_id: Option<String>) -> PeerShared {
        let cell = OnceLock::new();
        if let Some(id) = cluster_id {
            let _ = cell.set(id);
        }
        PeerShared {
            node_id,
            name,
            cluster_id: cell,
            removed: AtomicBool::new(false),
            blocked: RwLock::new(HashSet::new()),
            #[cfg(test)]
            without_append_stream: AtomicBool::new(false),
            channels: Mutex::new(HashMap::new()),
            health: Default::default(),
        }
    }

    /// A gRPC client for the peer service at `addr` (`host:port`).
    pub(crate) fn client(&self, addr: &str) -> Result<PeerClient<Channel>, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let c = crate::resolve::channel(addr, Duration::from_secs(2))?;
                channels.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(PeerClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    pub(crate) fn cluster_id(&self) -> &str {
        self.cluster_id.get().map_or("", String::as_str)
    }

    pub(crate) fn is_blocked(&self, peer: &str) -> bool {
        self.blocked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(peer)
    }

    pub(crate) fn mark_removed(&self) {
        if !self.removed.swap(true, Ordering::SeqCst) {
            tracing::warn!(member = %self.name, "a peer says this member is not in the cluster; it will ask to rejoin");
        }
    }
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    postcard::to_stdvec(v).map_err(|e| format!("encode: {e}"))
}

pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    postcard::from_bytes(b).map_err(|e| format!("decode: {e}"))
}

/// The peer protocol's own error mapping (internal: clients never see it).
pub(crate) fn to_status(e: crate::Error) -> tonic::Status {
    use crate::Error as E;
    match e {
        E::NotLeader { leader_client_addr } => tonic::Status::failed_precondition(format!(
            "{NOT_LEADER}; leader is {}",
            leader_client_addr.as_deref().unwrap_or("unknown")
        )),
        E::InvalidArgument(m) => tonic::Status::invalid_argument(m),
        E::Unavailable(m) => tonic::Status::unavailable(m),
        E::DeadlineExceeded(m) => tonic::Status::deadline_exceeded(m),
        other => tonic::Status::internal(other.to_string()),
    }
}

/// The reverse of [`to_status`], for answers from a peer.
pub(crate) fn from_status(s: tonic::Status) -> crate::Error {
    use crate::Error as E;
    match s.code() {
        tonic::Code::FailedPrecondition if s.message().starts_with(NOT_LEADER) => E::NotLeader {
            leader_client_addr: None,
        },
        tonic::Code::InvalidArgument => E::InvalidArgument(s.message().to_string()),
        tonic::Code::DeadlineExceeded => E::DeadlineExceeded(s.message().to_string()),
        // `Unknown` is how tonic reports a dropped connection: the outcome is unknown, and
        // the caller may retry elsewhere.
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => {
            E::Unavailable(format!("peer unavailable: {}", s.message()))
        }
        _ => E::Internal(format!("peer answered {:?}: {}", s.code(), s.message())),
    }
}

pub(crate) const NOT_LEADER: &str = "not the leader";

/// A member as peer messages carry it.
pub(crate) fn peer_member(node_id: u64, n: &MemberNode, voter: bool) -> pb::PeerMember {
    pb::PeerMember {
        node_id,
        name: n.name.clone(),
        peer_addr: n.peer_addr.clone(),
        client_addr: n.client_addr.clone(),
        voter,
    }
}
