//! Golden bytes of the peer format ([`super::PEER_FORMAT`]): the payloads members exchange,
//! pinned. During a rolling upgrade an older member reads what a newer one sends, so a change
//! that alters these bytes (a new openraft, a changed type) fails here. If it is meant, it is
//! a new peer format: bump `PEER_FORMAT`, keep speaking the old one until every member reads
//! the new, and never edit a golden.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use openraft::entry::EntryPayload;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use ordkv_store::{Entry, LogId, MemberNode, SnapshotMeta, StoredMembership, TypeConfig, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{decode, encode};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// `value` encodes to the pinned bytes, and the pinned bytes decode to `value`.
fn pinned<T: Serialize + DeserializeOwned + Debug>(what: &str, value: &T, golden: &str) {
    let golden: String = golden.split_whitespace().collect();
    assert_eq!(
        hex(&encode(value).unwrap()),
        golden,
        "{what}: the peer format changed; an older member would not read this (see the \
         module docs)"
    );
    let read: T = decode(&unhex(&golden)).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(format!("{read:?}"), format!("{value:?}"), "{what}");
}

fn log_id(term: u64, node: u64, index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(term, node, index)
}

fn member(n: u64) -> MemberNode {
    MemberNode {
        name: format!("kv-{n}"),
        peer_addr: format!("kv-{n}.kv:7380"),
        client_addr: format!("kv-{n}.kv:7379"),
    }
}

fn command_entry() -> Entry {
    let put = ordkv_proto::v1::PutRequest {
        key: "k".into(),
        value: "v".into(),
        ..Default::default()
    };
    Entry {
        log_id: log_id(3, 7, 10),
        payload: EntryPayload::Normal(ordkv_store::Command(ordkv_proto::v1::Command {
            op: Some(ordkv_proto::v1::command::Op::Put(put)),
        })),
    }
}

fn membership() -> StoredMembership {
    let m = openraft::Membership::new(
        vec![BTreeSet::from([1, 2])],
        BTreeMap::from([(1, member(1)), (2, member(2))]),
    )
    .unwrap();
    StoredMembership::new(Some(log_id(3, 7, 8)), m)
}

const APPEND: &str = "030701010307090103070a01080a060a016b12017601030709";
const APPEND_SUCCESS: &str = "00";
const APPEND_PARTIAL: &str = "010103070a";
const APPEND_CONFLICT: &str = "02";
const APPEND_HIGHER_VOTE: &str = "03040200";
const STREAM_OK: &str = "000103070a";
const STREAM_CONFLICT: &str = "0100030709";
const VOTE_REQUEST: &str = "010402000103070a00";
const VOTE_RESPONSE: &str = "040200010103070a";
const SNAPSHOT_HEADER: &str = "
    0307010103070a01030708010201020201046b762d310c6b762d312e6b763a373338300c6b762d31
    2e6b763a3733373902046b762d320c6b762d322e6b763a373338300c6b762d322e6b763a37333739
    00
";
const SNAPSHOT_RESPONSE: &str = "030701";
const TRANSFER_LEADER: &str = "030701020103070a";

#[test]
fn replication_messages_keep_their_bytes() {
    let vote = Vote::new_committed(3, 7);
    pinned(
        "AppendEntries request",
        &AppendEntriesRequest::<TypeConfig> {
            vote,
            prev_log_id: Some(log_id(3, 7, 9)),
            entries: vec![command_entry()],
            leader_commit: Some(log_id(3, 7, 9)),
        },
        APPEND,
    );
    type Resp = AppendEntriesResponse<TypeConfig>;
    pinned("AppendEntries success", &Resp::Success, APPEND_SUCCESS);
    pinned(
        "AppendEntries partial success",
        &Resp::PartialSuccess(Some(log_id(3, 7, 10))),
        APPEND_PARTIAL,
    );
    pinned("AppendEntries conflict", &Resp::Conflict, APPEND_CONFLICT);
    pinned(
        "AppendEntries higher vote",
        &Resp::HigherVote(Vote::new(4, 2)),
        APPEND_HIGHER_VOTE,
    );
    type Stream = openraft::raft::StreamAppendResult<TypeConfig>;
    pinned(
        "stream append ok",
        &Stream::Ok(Some(log_id(3, 7, 10))),
        STREAM_OK,
    );
    pinned(
        "stream append conflict",
        &Stream::Err(openraft::raft::StreamAppendError::Conflict(log_id(3, 7, 9))),
        STREAM_CONFLICT,
    );
}

#[test]
fn election_and_snapshot_messages_keep_their_bytes() {
    let request = VoteRequest::<TypeConfig> {
        vote: Vote::new(4, 2),
        last_log_id: Some(log_id(3, 7, 10)),
        leadership_transfer: false,
    };
    pinned("vote request", &(true, request), VOTE_REQUEST);
    pinned(
        "vote response",
        &VoteResponse::<TypeConfig>::new(Vote::new(4, 2), Some(log_id(3, 7, 10)), true),
        VOTE_RESPONSE,
    );
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(3, 7, 10)),
        last_membership: membership(),
    };
    pinned(
        "snapshot header",
        &(Vote::new_committed(3, 7), meta),
        SNAPSHOT_HEADER,
    );
    pinned(
        "snapshot response",
        &openraft::raft::SnapshotResponse::<TypeConfig>::new(Vote::new_committed(3, 7)),
        SNAPSHOT_RESPONSE,
    );
    pinned(
        "transfer leader",
        &openraft::raft::TransferLeaderRequest::<TypeConfig>::new(
            Vote::new_committed(3, 7),
            2,
            Some(log_id(3, 7, 10)),
        ),
        TRANSFER_LEADER,
    );
}

#[test]
fn a_newer_peer_format_is_refused_naming_both() {
    assert!(
        super::check_format("kv-2", 0).is_ok(),
        "a member from before the field"
    );
    assert!(super::check_format("kv-2", super::PEER_FORMAT).is_ok());
    let err = super::check_format("kv-2", super::PEER_FORMAT + 1).unwrap_err();
    assert!(
        err.contains("kv-2 speaks peer format 2") && err.contains("reads formats up to 1"),
        "{err}"
    );
}
