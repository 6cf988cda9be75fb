//! The openraft type configuration: what a log entry carries and what applying it returns.

use std::fmt;

use prost::Message;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::pb;

/// A Raft node id. Belongs to one data dir and is never reused.
pub type NodeId = u64;

/// What the cluster records about a member, replicated in the membership config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    /// Member name, e.g. `kv-1`.
    pub name: String,
    /// Peer address as a DNS name and port (never an IP that a restart would change).
    pub peer_addr: String,
    /// Client address as a DNS name and port.
    pub client_addr: String,
}

impl fmt::Display for MemberNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_addr)
    }
}

/// One write in the Raft log: a prost-encoded [`pb::Command`] (a stable wire format that any
/// version of ordkv can read), carried through openraft's serde as one byte string.
#[derive(Debug, Clone, PartialEq)]
pub struct Command(pub pb::Command);

/// The state machine's answer to a [`Command`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Applied(pub pb::CommandResponse);

macro_rules! prost_serde {
    ($t:ident) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serde_bytes::Bytes::new(&self.0.encode_to_vec()).serialize(s)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let buf = serde_bytes::ByteBuf::deserialize(d)?;
                Message::decode(buf.as_slice())
                    .map($t)
                    .map_err(serde::de::Error::custom)
            }
        }
    };
}
prost_serde!(Command);
prost_serde!(Applied);

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use pb::command::Op;
        match &self.0.op {
            Some(Op::Put(p)) => write!(f, "put({} bytes key)", p.key.len()),
            Some(Op::Delete(_)) => write!(f, "delete"),
            Some(Op::Txn(t)) => write!(f, "txn({} compares)", t.compare.len()),
            Some(Op::Compact(c)) => write!(f, "compact({})", c.revision),
            Some(Op::LeaseGrant(g)) => write!(f, "lease-grant({}s)", g.ttl),
            Some(Op::LeaseRevoke(r)) => write!(f, "lease-revoke({})", r.id),
            None => write!(f, "empty"),
        }
    }
}

openraft::declare_raft_types!(
    /// ordkv's openraft types.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = NodeId,
        Node = MemberNode,
);

/// A log id of this configuration.
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
/// A log entry of this configuration.
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
/// A vote of this configuration.
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
/// The stored membership of this configuration.
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
/// The snapshot metadata of this configuration.
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
