//! Golden bytes: what this version writes to disk, pinned. A data dir written by an older
//! ordkv must read the same, so a change that alters these bytes (a new openraft, a changed
//! type, another encoding) fails here. If the change is meant, bump the format's version
//! (`FORMATS` in ARCHITECTURE.md) and keep a reader for the old bytes: never edit a golden.

use std::collections::{BTreeMap, BTreeSet};

use openraft::RaftSnapshotBuilder;
use openraft::entry::EntryPayload;

use super::{Store, put};
use crate::codec::{decode_meta, encode_meta};
use crate::types::{Entry, LogId, StoredMembership, Vote};
use crate::{MemberNode, TypeConfig};

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

/// Fails when `actual` differs from the pinned bytes, printing both.
fn pinned(what: &str, actual: &[u8], golden: &str) {
    let golden: String = golden.split_whitespace().collect();
    assert_eq!(
        hex(actual),
        golden,
        "{what}: the bytes this version writes changed; an older data dir would no longer \
         read the same (see the module docs)"
    );
}

fn log_id(term: u64, node: u64, index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(term, node, index)
}

fn member(n: u64) -> MemberNode {
    MemberNode {
        name: format!("kv-{n}"),
        peer_addr: format!("kv-{n}.kv.default.svc.cluster.local:7380"),
        client_addr: format!("kv-{n}.kv.default.svc.cluster.local:7379"),
    }
}

fn membership() -> openraft::Membership<crate::NodeId, MemberNode> {
    openraft::Membership::new(
        vec![BTreeSet::from([1, 2])],
        BTreeMap::from([(1, member(1)), (2, member(2))]),
    )
    .expect("membership")
}

/// One entry of each kind the log holds, as a record of segment format 1 and as one of data
/// format 1 (postcard, no longer written, still read).
fn entries() -> Vec<(&'static str, Entry, &'static str, &'static str)> {
    vec![
        (
            "blank entry",
            Entry {
                log_id: log_id(2, 7, 5),
                payload: EntryPayload::Blank,
            },
            GOLDEN_BLANK,
            GOLDEN_BLANK_V1,
        ),
        (
            "command entry",
            Entry {
                log_id: log_id(2, 7, 6),
                payload: EntryPayload::Normal(crate::Command(put("k", "v"))),
            },
            GOLDEN_COMMAND,
            GOLDEN_COMMAND_V1,
        ),
        (
            "membership entry",
            Entry {
                log_id: log_id(2, 7, 7),
                payload: EntryPayload::Membership(membership()),
            },
            GOLDEN_MEMBERSHIP,
            GOLDEN_MEMBERSHIP_V1,
        ),
    ]
}

const GOLDEN_BLANK: &str = "08000000c5f07aa40802100718052200";
const GOLDEN_COMMAND: &str = "100000008ffefa100802100718062a080a060a016b120176";
const GOLDEN_MEMBERSHIP: &str = "
    c300000003156a0308021007180732ba010a040a0201021258080112046b762d311a266b762d312e
    6b762e64656661756c742e7376632e636c75737465722e6c6f63616c3a3733383022266b762d312e
    6b762e64656661756c742e7376632e636c75737465722e6c6f63616c3a373337391258080212046b
    762d321a266b762d322e6b762e64656661756c742e7376632e636c75737465722e6c6f63616c3a37
    33383022266b762d322e6b762e64656661756c742e7376632e636c75737465722e6c6f63616c3a37
    333739
";

const GOLDEN_BLANK_V1: &str = "0400000057f575f302070500";
const GOLDEN_COMMAND_V1: &str = "0d00000053d80c9a02070601080a060a016b120176";
const GOLDEN_MEMBERSHIP_V1: &str = "
    b10000006a9802a102070702010201020201046b762d31266b762d312e6b762e64656661756c742e
    7376632e636c75737465722e6c6f63616c3a37333830266b762d312e6b762e64656661756c742e73
    76632e636c75737465722e6c6f63616c3a3733373902046b762d32266b762d322e6b762e64656661
    756c742e7376632e636c75737465722e6c6f63616c3a37333830266b762d322e6b762e6465666175
    6c742e7376632e636c75737465722e6c6f63616c3a37333739
";

/// `ORDKVWAL`, segment format 1, crc32.
const GOLDEN_SEGMENT_HEADER: &str = "4f52444b5657414c010000009796e646";

#[test]
fn log_segments_keep_their_header() {
    pinned(
        "segment header",
        &crate::wal::segment_header(),
        GOLDEN_SEGMENT_HEADER,
    );
}

#[test]
fn log_records_keep_their_bytes() {
    use crate::wal::Records;
    for (what, entry, golden, golden_v1) in entries() {
        let mut record = Vec::new();
        crate::wal::encode(&entry, &mut record).expect("encode");
        pinned(what, &record, golden);
        for (bytes, records) in [(golden, Records::Owned), (golden_v1, Records::Postcard)] {
            let read = crate::wal::decode(what, &unhex(bytes), records)
                .unwrap_or_else(|e| panic!("{what} ({records:?}) does not read: {e}"));
            assert_eq!(format!("{read:?}"), format!("{entry:?}"), "{what}");
        }
    }
}

const GOLDEN_VOTE: &str = "
    aebf3ee17b226c65616465725f6964223a7b227465726d223a332c226e6f64655f6964223a377d2c
    22636f6d6d6974746564223a747275657d
";
const GOLDEN_STATE: &str = "
    5f08dee05b7b226c65616465725f6964223a7b227465726d223a322c226e6f64655f6964223a377d
    2c22696e646578223a377d2c7b226c6f675f6964223a7b226c65616465725f6964223a7b22746572
    6d223a322c226e6f64655f6964223a377d2c22696e646578223a377d2c226d656d62657273686970
    223a7b22636f6e66696773223a5b5b312c325d5d2c226e6f646573223a7b2231223a7b226e616d65
    223a226b762d31222c22706565725f61646472223a226b762d312e6b762e64656661756c742e7376
    632e636c75737465722e6c6f63616c3a37333830222c22636c69656e745f61646472223a226b762d
    312e6b762e64656661756c742e7376632e636c75737465722e6c6f63616c3a37333739227d2c2232
    223a7b226e616d65223a226b762d32222c22706565725f61646472223a226b762d322e6b762e6465
    6661756c742e7376632e636c75737465722e6c6f63616c3a37333830222c22636c69656e745f6164
    6472223a226b762d322e6b762e64656661756c742e7376632e636c75737465722e6c6f63616c3a37
    333739227d7d7d7d2c34325d
";

#[test]
fn metadata_rows_keep_their_bytes() {
    let vote = Vote::new_committed(3, 7);
    pinned("vote row", &encode_meta(&vote).unwrap(), GOLDEN_VOTE);
    let read: Vote = decode_meta("vote", &unhex(GOLDEN_VOTE)).unwrap();
    assert_eq!(read, vote);

    let state = (
        Some(log_id(2, 7, 7)),
        StoredMembership::new(Some(log_id(2, 7, 7)), membership()),
        42u64,
    );
    pinned("state row", &encode_meta(&state).unwrap(), GOLDEN_STATE);
    let read: (Option<LogId>, StoredMembership, u64) =
        decode_meta("state", &unhex(GOLDEN_STATE)).unwrap();
    assert_eq!(format!("{read:?}"), format!("{state:?}"));
}

const GOLDEN_SNAPSHOT: &str = "
    4f52444b56534e31ba0000007b226d657461223a7b226c6173745f6c6f675f6964223a7b226c6561
    6465725f6964223a7b227465726d223a312c226e6f64655f6964223a317d2c22696e646578223a33
    7d2c226c6173745f6d656d62657273686970223a7b226c6f675f6964223a6e756c6c2c226d656d62
    657273686970223a7b22636f6e66696773223a5b5d2c226e6f646573223a7b7d7d7d2c22736e6170
    73686f745f6964223a22227d2c227265766973696f6e223a332c226c6561736573223a5b5d7d0100
    00000900000061120133180120032802010000000900000062120132180220022801ffffffffc2fa
    fc18
";

#[tokio::test]
async fn snapshot_files_keep_their_bytes_and_older_ones_install() {
    let mut a = Store::new();
    a.apply_all(vec![put("a", "1"), put("b", "2"), put("a", "3")]);
    let snap = RaftSnapshotBuilder::build_snapshot(&mut a.sm.clone())
        .await
        .expect("build snapshot");
    pinned(
        "snapshot file",
        &std::fs::read(&snap.snapshot.path).unwrap(),
        GOLDEN_SNAPSHOT,
    );

    // The pinned file, as an older member would send it, installs.
    let mut b = Store::new();
    let scratch = tempfile::TempDir::new().unwrap();
    let path = scratch.path().join("older.snap");
    std::fs::write(&path, unhex(GOLDEN_SNAPSHOT)).unwrap();
    let header = crate::snapshot::verify(&path).expect("an older snapshot verifies");
    b.install(
        openraft::type_config::alias::SnapshotOf::<TypeConfig, crate::SnapshotData> {
            meta: header.meta,
            snapshot: crate::SnapshotData { path },
        },
    )
    .await;
    let values: Vec<_> = b
        .all()
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone()))
        .collect();
    assert_eq!(
        values,
        vec![("a".into(), "3".into()), ("b".into(), "2".into())]
            as Vec<(bytes::Bytes, bytes::Bytes)>
    );
    assert_eq!(b.sm.read_state().revision, 3);
}

#[test]
fn a_snapshot_of_a_newer_format_is_refused_naming_both() {
    let scratch = tempfile::TempDir::new().unwrap();
    let path = scratch.path().join("newer.snap");
    let mut bytes = unhex(GOLDEN_SNAPSHOT);
    bytes[7] = b'2';
    std::fs::write(&path, bytes).unwrap();
    let err = crate::snapshot::verify(&path).err().unwrap().to_string();
    assert!(
        err.contains("is in format 2") && err.contains("reads format 1"),
        "{err}"
    );
}
