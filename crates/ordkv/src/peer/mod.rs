//! The peer side of a member: the Raft transport over gRPC (port 7380), the cluster-info and
//! join calls used at start-up, and write forwarding and read index for followers.
//!
//! Every Raft RPC names the cluster and both node ids. A member refuses a request for
//! another cluster or for another incarnation of itself (a wiped volume rejoins under a new
//! node id, and must not answer for the old one), and refuses votes from candidates that are
//! not in its membership (a removed member that comes back must not disrupt elections).

pub(crate) mod client;
#[cfg(test)]
mod golden;
pub(crate) mod health;
pub(crate) mod server;
mod to_leader;

pub use client::PEER_APPEND_DURATION;
pub use health::PEER_ERRORS;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use ordkv_store::MemberNode;
use tonic::transport::Channel;

use crate::pb;
use crate::pb::peer_client::PeerClient;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// How long a member waits for a peer to answer a cluster-info, read-index or leave call.
pub(crate) const PEER_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest peer message: a snapshot chunk, or an append of one entry of the largest value
/// (appends carry at most 4 MiB of entries otherwise).
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
    #[cfg(feature = "fault-injection")]
    pub(crate) blocked: std::sync::RwLock<std::collections::HashSet<String>>,
    /// Answer `AppendStream` as a member of the previous version would: unimplemented (test
    /// fault injection for the leader's fallback during a rolling upgrade).
    #[cfg(test)]
    pub(crate) without_append_stream: AtomicBool,
    /// One lazily connecting channel per peer address, shared by every caller.
    channels: Mutex<HashMap<String, Channel>>,
    /// How peers are dialed with TLS on.
    tls: Option<crate::tls::TlsMaterial>,
    /// Which peers answer the Raft calls (quiet logs while one is down).
    pub(crate) health: health::PeerHealth,
}

impl PeerShared {
    pub(crate) fn new(
        node_id: u64,
        name: String,
        cluster_id: Option<String>,
        tls: Option<crate::tls::TlsMaterial>,
    ) -> PeerShared {
        let cell = OnceLock::new();
        if let Some(id) = cluster_id {
            let _ = cell.set(id);
        }
        PeerShared {
            node_id,
            name,
            cluster_id: cell,
            removed: AtomicBool::new(false),
            #[cfg(feature = "fault-injection")]
            blocked: Default::default(),
            #[cfg(test)]
            without_append_stream: AtomicBool::new(false),
            channels: Mutex::new(HashMap::new()),
            tls,
            health: Default::default(),
        }
    }

    /// A gRPC client for the peer service at `addr` (`host:port`).
    pub(crate) fn client(&self, addr: &str) -> Result<PeerClient<Channel>, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let c = crate::resolve::channel(addr, Duration::from_secs(2), self.tls.clone())?;
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

    /// Whether fault injection cut this member off from `peer` (never, without the feature).
    pub(crate) fn is_blocked(&self, peer: &str) -> bool {
        #[cfg(feature = "fault-injection")]
        return self
            .blocked
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(peer);
        #[cfg(not(feature = "fault-injection"))]
        {
            let _ = peer;
            false
        }
    }

    pub(crate) fn mark_removed(&self) {
        if !self.removed.swap(true, Ordering::SeqCst) {
            tracing::warn!(member = %self.name, "a peer says this member is not in the cluster; it will ask to rejoin");
        }
    }
}

/// The peer format this version speaks (`PeerRequest.format`): postcard of openraft
/// 0.10.0-alpha.37's messages, pinned by `peer::golden`. A change to those bytes is a new
/// format, which a member may send only once every peer reads it.
pub(crate) const PEER_FORMAT: u32 = 1;

/// Refuses a message in a peer format this version cannot read (0: from a member older than
/// the field, which speaks format 1).
pub(crate) fn check_format(from: &str, format: u32) -> Result<(), String> {
    if format <= PEER_FORMAT {
        return Ok(());
    }
    Err(format!(
        "{from} speaks peer format {format}; this member ({}) reads formats up to \
         {PEER_FORMAT}: it runs a newer ordkv whose messages this one cannot read; upgrade \
         this member (or roll {from} back)",
        env!("CARGO_PKG_VERSION")
    ))
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, String> {
    postcard::to_stdvec(v).map_err(|e| format!("encode: {e}"))
}

/// A peer's answer, once its format is one this version reads.
pub(crate) fn decode_reply<T: DeserializeOwned>(
    from: &str,
    reply: &pb::PeerReply,
) -> Result<T, String> {
    check_format(from, reply.format)?;
    decode(&reply.payload)
}

pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    postcard::from_bytes(b).map_err(|e| format!("decode: {e}"))
}

/// The metadata key that says which [`PeerError`] a peer's answer is, so that no message
/// is parsed.
const PEER_ERROR_KEY: &str = "ordkv-peer-error";

/// The errors a member acts on when a peer answers with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerError {
    /// The peer does not lead (any more); nothing was applied.
    NotLeader,
    /// The peer says the asking member is not in the cluster: it must rejoin.
    NotAMember,
    /// The peer proposed the write; it may or may not commit.
    OutcomeUnknown,
    /// The peer refused the write before proposing it (no leader, stopping).
    NotApplied,
}

impl PeerError {
    fn as_str(self) -> &'static str {
        match self {
            PeerError::NotLeader => "not-leader",
            PeerError::NotAMember => "not-a-member",
            PeerError::OutcomeUnknown => "outcome-unknown",
            PeerError::NotApplied => "not-applied",
        }
    }

    /// `status` marked as this error.
    pub(crate) fn tag(self, mut status: tonic::Status) -> tonic::Status {
        status.metadata_mut().insert(
            PEER_ERROR_KEY,
            tonic::metadata::MetadataValue::from_static(self.as_str()),
        );
        status
    }

    /// The error a peer's answer was marked as. Members of earlier versions only said it in
    /// the message; their words are recognised too.
    pub(crate) fn of(status: &tonic::Status) -> Option<PeerError> {
        let tagged = status
            .metadata()
            .get(PEER_ERROR_KEY)
            .and_then(|v| v.to_str().ok());
        let all = [
            PeerError::NotLeader,
            PeerError::NotAMember,
            PeerError::OutcomeUnknown,
            PeerError::NotApplied,
        ];
        if let Some(kind) = tagged.and_then(|t| all.into_iter().find(|k| k.as_str() == t)) {
            return Some(kind);
        }
        match status.code() {
            tonic::Code::FailedPrecondition if status.message().starts_with(NOT_LEADER) => {
                Some(PeerError::NotLeader)
            }
            tonic::Code::FailedPrecondition if status.message().contains(NOT_A_MEMBER) => {
                Some(PeerError::NotAMember)
            }
            _ => None,
        }
    }
}

/// The peer protocol's own error mapping (internal: clients never see it).
pub(crate) fn to_status(e: crate::Error) -> tonic::Status {
    use crate::Error as E;
    match e {
        E::NotLeader { leader_client_addr } => {
            PeerError::NotLeader.tag(tonic::Status::failed_precondition(format!(
                "{NOT_LEADER}; leader is {}",
                leader_client_addr.as_deref().unwrap_or("unknown")
            )))
        }
        E::InvalidArgument(m) => tonic::Status::invalid_argument(m),
        E::NotFound(m) => tonic::Status::not_found(m),
        E::AlreadyExists(m) => tonic::Status::already_exists(m),
        E::Unavailable(m) => PeerError::NotApplied.tag(tonic::Status::unavailable(m)),
        E::OutcomeUnknown(m) => PeerError::OutcomeUnknown.tag(tonic::Status::unavailable(m)),
        E::DeadlineExceeded(m) => tonic::Status::deadline_exceeded(m),
        E::NoSpace(m) => tonic::Status::resource_exhausted(m),
        other => tonic::Status::internal(other.to_string()),
    }
}

/// The reverse of [`to_status`], for answers from a peer. A transport error is
/// `Unavailable` when the request never left this member (no connection could be made),
/// else `OutcomeUnknown`: the peer may have acted on it.
pub(crate) fn from_status(s: tonic::Status) -> crate::Error {
    use crate::Error as E;
    match PeerError::of(&s) {
        Some(PeerError::NotLeader) => {
            return E::NotLeader {
                leader_client_addr: None,
            };
        }
        Some(PeerError::OutcomeUnknown) => return E::OutcomeUnknown(s.message().to_string()),
        Some(PeerError::NotApplied) => return E::Unavailable(s.message().to_string()),
        Some(PeerError::NotAMember) | None => {}
    }
    match s.code() {
        tonic::Code::InvalidArgument => E::InvalidArgument(s.message().to_string()),
        tonic::Code::NotFound => E::NotFound(s.message().to_string()),
        tonic::Code::AlreadyExists => E::AlreadyExists(s.message().to_string()),
        tonic::Code::DeadlineExceeded => E::DeadlineExceeded(s.message().to_string()),
        tonic::Code::ResourceExhausted => E::NoSpace(s.message().to_string()),
        _ if never_sent(&s) => E::Unavailable(format!("peer unreachable: {}", s.message())),
        // `Unknown` is how tonic reports a dropped connection.
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown => {
            E::OutcomeUnknown(format!("the peer's answer was lost: {}", s.message()))
        }
        _ => E::Internal(format!("peer answered {:?}: {}", s.code(), s.message())),
    }
}

/// Whether a transport error happened before the request was sent: the connection could
/// not be made. Only the connector's own errors count: an unreachable host or network on a
/// connection already open says nothing about what the peer received.
fn never_sent(s: &tonic::Status) -> bool {
    use std::error::Error as _;
    let mut source = s.source();
    while let Some(e) = source {
        let refused = e
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
        if refused || e.to_string().starts_with("tcp connect error") {
            return true;
        }
        source = e.source();
    }
    false
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error as E;

    #[test]
    fn errors_cross_the_peer_protocol_with_their_kind() {
        let errors = [
            E::NotLeader {
                leader_client_addr: None,
            },
            E::Unavailable("no leader".into()),
            E::OutcomeUnknown("lost".into()),
            E::NoSpace("disk".into()),
            E::InvalidArgument("empty key".into()),
            E::DeadlineExceeded("slow".into()),
        ];
        for e in errors {
            let back = from_status(to_status(e.clone()));
            assert_eq!(
                std::mem::discriminant(&back),
                std::mem::discriminant(&e),
                "{e:?} came back as {back:?}"
            );
        }
    }
}
