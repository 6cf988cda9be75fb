//! Byte layouts on disk. Every stored Raft record is sealed with a CRC32 so that corruption is
//! detected when it is read, never silently applied.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use openraft::EntryPayload;
use prost::Message;
use serde::{Serialize, de::DeserializeOwned};

use crate::pb;
use crate::types::{Command, Entry, LogId, MemberNode};

pub(crate) fn key_u64(k: &[u8]) -> io::Result<u64> {
    let arr: [u8; 8] = k
        .get(..8)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| corrupt("a numeric key is shorter than 8 bytes"))?;
    Ok(u64::from_be_bytes(arr))
}

pub(crate) fn corrupt(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "corrupt data: {what}; restore this member from a snapshot or wipe its data dir so it rejoins"
        ),
    )
}

/// `crc32(payload) || payload`.
pub(crate) fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

pub(crate) fn unseal<'a>(what: &str, sealed: &'a [u8]) -> io::Result<&'a [u8]> {
    if sealed.len() < 4 {
        return Err(corrupt(format!("{what} is truncated")));
    }
    let (crc, payload) = sealed.split_at(4);
    let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32fast::hash(payload) != want {
        return Err(corrupt(format!("{what} fails its checksum")));
    }
    Ok(payload)
}

/// Small metadata (votes, membership): JSON, so an operator can read it, inside a checksum.
pub(crate) fn encode_meta<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    Ok(seal(&serde_json::to_vec(v).map_err(io::Error::other)?))
}

pub(crate) fn decode_meta<T: DeserializeOwned>(what: &str, sealed: &[u8]) -> io::Result<T> {
    serde_json::from_slice(unseal(what, sealed)?).map_err(|e| corrupt(format!("{what}: {e}")))
}

/// A key's stored record: its [`pb::KeyValue`] without the key (the sled key is the key).
pub(crate) fn encode_kv(kv: &pb::KeyValue) -> Vec<u8> {
    pb::KeyValue {
        key: bytes::Bytes::new(),
        ..kv.clone()
    }
    .encode_to_vec()
}

pub(crate) fn decode_kv(key: &[u8], stored: &[u8]) -> io::Result<pb::KeyValue> {
    let mut kv = pb::KeyValue::decode(stored).map_err(|e| corrupt(format!("key record: {e}")))?;
    kv.key = bytes::Bytes::copy_from_slice(key);
    Ok(kv)
}

/// A lease's stored record.
pub(crate) fn decode_lease(stored: &[u8]) -> io::Result<pb::LeaseRecord> {
    pb::LeaseRecord::decode(stored).map_err(|e| corrupt(format!("lease record: {e}")))
}

/// History rows are keyed by the revision of their last event (see `pb::HistoryRow`).
pub(crate) fn history_key(revision: u64) -> [u8; 8] {
    revision.to_be_bytes()
}

/// Rows written before history was batched: `revision || sequence`, one event each.
pub(crate) const OLD_HISTORY_KEY_LEN: usize = 12;

/// The smallest key greater than every key starting with `prefix`, or `None` when there is
/// none (an empty prefix or one of all 0xff bytes).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A log entry as ordkv's own [`pb::LogEntry`]: the WAL records of segment format 1.
pub(crate) fn encode_entry(entry: &Entry) -> Vec<u8> {
    let payload = match &entry.payload {
        EntryPayload::Blank => pb::log_entry::Payload::Blank(pb::BlankEntry {}),
        EntryPayload::Normal(command) => pb::log_entry::Payload::Command(command.0.clone()),
        EntryPayload::Membership(m) => pb::log_entry::Payload::Membership(pb::LogMembership {
            configs: m
                .get_joint_config()
                .iter()
                .map(|voters| pb::VoterSet {
                    node_ids: voters.iter().copied().collect(),
                })
                .collect(),
            nodes: m
                .nodes()
                .map(|(id, n)| pb::LogMember {
                    node_id: *id,
                    name: n.name.clone(),
                    peer_addr: n.peer_addr.clone(),
                    client_addr: n.client_addr.clone(),
                })
                .collect(),
        }),
    };
    pb::LogEntry {
        term: entry.log_id.leader_id.term,
        leader_node: entry.log_id.leader_id.node_id,
        index: entry.log_id.index,
        payload: Some(payload),
    }
    .encode_to_vec()
}

pub(crate) fn decode_entry(what: &str, bytes: &[u8]) -> io::Result<Entry> {
    let e = pb::LogEntry::decode(bytes).map_err(|e| corrupt(format!("{what}: {e}")))?;
    let payload = match e.payload {
        Some(pb::log_entry::Payload::Blank(_)) => EntryPayload::Blank,
        Some(pb::log_entry::Payload::Command(c)) => EntryPayload::Normal(Command(c)),
        Some(pb::log_entry::Payload::Membership(m)) => {
            let configs = m
                .configs
                .into_iter()
                .map(|v| v.node_ids.into_iter().collect::<BTreeSet<_>>())
                .collect();
            let nodes: BTreeMap<_, _> = m
                .nodes
                .into_iter()
                .map(|n| {
                    let node = MemberNode {
                        name: n.name,
                        peer_addr: n.peer_addr,
                        client_addr: n.client_addr,
                    };
                    (n.node_id, node)
                })
                .collect();
            let membership = openraft::Membership::new(configs, nodes)
                .map_err(|e| corrupt(format!("{what}: {e}")))?;
            EntryPayload::Membership(membership)
        }
        None => return Err(corrupt(format!("{what}: an entry without payload"))),
    };
    let leader = openraft::impls::leader_id_adv::LeaderId {
        term: e.term,
        node_id: e.leader_node,
    };
    Ok(Entry {
        log_id: LogId::new(leader, e.index),
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_detects_a_flipped_bit() {
        let mut s = seal(b"hello");
        assert_eq!(unseal("x", &s).unwrap(), b"hello");
        s[6] ^= 1;
        assert!(unseal("x", &s).is_err());
        assert!(unseal("x", &s[..3]).is_err());
    }

    #[test]
    fn prefix_end_is_the_next_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
