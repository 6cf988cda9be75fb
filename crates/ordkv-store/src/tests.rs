//! Tests of the key-value state machine: exact unit tests of each command's semantics, and a
//! property test that runs random command sequences against a small in-memory model.

use std::collections::BTreeMap;

use bytes::Bytes;
use openraft::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use proptest::prelude::*;
use tempfile::TempDir;

use crate::pb;
use crate::pb::command::Op;
use crate::pb::command_response::Result as R;
use crate::pb::compare::{Result as CmpResult, Target};
use crate::pb::request_op::Request as Q;
use crate::pb::response_op::Response as S;
use crate::{LogStore, ReadError, StateMachine, StoreOptions};

const PUT: i32 = pb::event::EventType::Put as i32;
const DELETE: i32 = pb::event::EventType::Delete as i32;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A store in a temporary directory, with the next log index to apply at.
struct Store {
    sm: StateMachine,
    _log: LogStore,
    next_index: u64,
    opts: StoreOptions,
    // Last, so that it is removed after the store's handles are dropped.
    dir: TempDir,
}

impl Store {
    fn new() -> Store {
        Store::with_options(crate::conformance::test_options())
    }

    fn with_options(opts: StoreOptions) -> Store {
        let dir = TempDir::new().expect("temp dir");
        let (log, sm) = crate::open(dir.path(), &opts).expect("open store");
        Store {
            sm,
            _log: log,
            next_index: 1,
            opts,
            dir,
        }
    }

    /// Applies `cmds` as one batch of consecutive log entries.
    fn apply_all(&mut self, cmds: Vec<pb::Command>) -> Vec<pb::CommandResponse> {
        let n = cmds.len() as u64;
        let resps = self
            .sm
            .apply_commands(self.next_index, cmds)
            .expect("apply");
        self.next_index += n;
        resps
    }

    fn apply(&mut self, cmd: pb::Command) -> pb::CommandResponse {
        self.apply_all(vec![cmd]).pop().expect("one response")
    }

    fn get(&self, key: &str) -> Option<pb::KeyValue> {
        self.sm.get(key.as_bytes()).expect("get").0
    }

    fn range(&self, req: &pb::RangeRequest) -> pb::RangeResponse {
        self.sm.range(req).expect("range").0
    }

    /// Every key, in order.
    fn all(&self) -> Vec<pb::KeyValue> {
        self.range(&pb::RangeRequest::default()).kvs
    }

    fn history(&self, from: u64, to: u64) -> Vec<pb::Event> {
        self.sm.history(from, to, usize::MAX).expect("history")
    }

    /// The state machine's `state` row as it is on disk now.
    fn state_row(&self) -> sled::IVec {
        let row = self.sm.shared.meta.get(super::state_machine::STATE);
        row.unwrap().expect("a state row")
    }

    /// Puts back an older `state` row: as if the batches since never wrote theirs (a crash).
    fn lose_state_rows_since(&self, row: sled::IVec) {
        let meta = &self.sm.shared.meta;
        meta.insert(super::state_machine::STATE, row).unwrap();
    }

    /// Replaces this store's state with a snapshot's, as a follower installing it would.
    async fn install(
        &mut self,
        snap: openraft::type_config::alias::SnapshotOf<crate::TypeConfig, crate::SnapshotData>,
    ) {
        RaftStateMachine::install_snapshot(&mut self.sm, &snap.meta, snap.snapshot)
            .await
            .expect("install snapshot");
    }

    /// Drops every handle and opens the same directory again.
    fn reopen(self) -> Store {
        let Store {
            sm,
            _log,
            next_index,
            opts,
            dir,
        } = self;
        drop(sm);
        drop(_log);
        // The last handle joined the flusher threads: sled's file lock is released already.
        let (log, sm) = crate::open(dir.path(), &opts).expect("reopening the store");
        Store {
            sm,
            _log: log,
            next_index,
            opts,
            dir,
        }
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn kv(key: &str, value: &str, create: u64, modified: u64, version: u64) -> pb::KeyValue {
    pb::KeyValue {
        key: b(key),
        value: b(value),
        create_revision: create,
        mod_revision: modified,
        version,
        lease: 0,
    }
}

fn put_req(key: &str, value: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: b(key),
        value: b(value),
        prev_kv: false,
        lease: 0,
    }
}

fn put(key: &str, value: &str) -> pb::Command {
    pb::Command {
        op: Some(Op::Put(put_req(key, value))),
    }
}

fn put_prev(key: &str, value: &str) -> pb::Command {
    pb::Command {
        op: Some(Op::Put(pb::PutRequest {
            prev_kv: true,
            ..put_req(key, value)
        })),
    }
}

fn del_key(key: &str) -> pb::DeleteRequest {
    pb::DeleteRequest {
        key: b(key),
        ..Default::default()
    }
}

fn del_range(start: &str, end: &str) -> pb::DeleteRequest {
    pb::DeleteRequest {
        key: b(start),
        end: b(end),
        ..Default::default()
    }
}

fn del_prefix(prefix: &str) -> pb::DeleteRequest {
    pb::DeleteRequest {
        prefix: b(prefix),
        ..Default::default()
    }
}

fn del(req: pb::DeleteRequest) -> pb::Command {
    pb::Command {
        op: Some(Op::Delete(req)),
    }
}

fn compact(revision: u64) -> pb::Command {
    pb::Command {
        op: Some(Op::Compact(pb::CompactRequest { revision })),
    }
}

fn txn(
    compare: Vec<pb::Compare>,
    success: Vec<pb::RequestOp>,
    failure: Vec<pb::RequestOp>,
) -> pb::Command {
    pb::Command {
        op: Some(Op::Txn(pb::TxnRequest {
            compare,
            success,
            failure,
        })),
    }
}

fn cmp(key: &str, result: CmpResult, target: Target) -> pb::Compare {
    pb::Compare {
        result: result as i32,
        key: b(key),
        target: Some(target),
    }
}

fn op_put(key: &str, value: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Q::Put(put_req(key, value))),
    }
}

fn op_del(req: pb::DeleteRequest) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Q::Delete(req)),
    }
}

fn op_range(req: pb::RangeRequest) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(Q::Range(req)),
    }
}

fn range_req(start: &str, end: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        start: b(start),
        end: b(end),
        ..Default::default()
    }
}

fn put_resp(r: &pb::CommandResponse) -> &pb::PutResponse {
    match &r.result {
        Some(R::Put(p)) => p,
        other => panic!("not a put response: {other:?}"),
    }
}

fn del_resp(r: &pb::CommandResponse) -> &pb::DeleteResponse {
    match &r.result {
        Some(R::Delete(d)) => d,
        other => panic!("not a delete response: {other:?}"),
    }
}

fn txn_resp(r: &pb::CommandResponse) -> &pb::TxnResponse {
    match &r.result {
        Some(R::Txn(t)) => t,
        other => panic!("not a txn response: {other:?}"),
    }
}

fn keys(kvs: &[pb::KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

/// `(type, key, revision)` of each event.
fn events(evs: &[pb::Event]) -> Vec<(&'static str, String, u64)> {
    evs.iter()
        .map(|e| {
            let kv = e.kv.as_ref().expect("event kv");
            let ty = match e.r#type {
                PUT => "PUT",
                DELETE => "DELETE",
                _ => "?",
            };
            (
                ty,
                String::from_utf8_lossy(&kv.key).into_owned(),
                kv.mod_revision,
            )
        })
        .collect()
}

fn ev(ty: &'static str, key: &str, revision: u64) -> (&'static str, String, u64) {
    (ty, key.to_string(), revision)
}

// ---------------------------------------------------------------------------------------------
// Put
// ---------------------------------------------------------------------------------------------

#[test]
fn put_creates_version_one_at_the_new_revision() {
    let mut s = Store::new();
    let r = s.apply(put("a", "1"));
    assert_eq!(r.revision, 1);
    assert!(r.error.is_empty());
    assert_eq!(put_resp(&r).prev_kv, None);
    assert_eq!(s.get("a"), Some(kv("a", "1", 1, 1, 1)));
    assert_eq!(s.sm.get(b"a").unwrap().1, 1);
    assert_eq!(s.sm.revision(), 1);
    assert_eq!(s.get("b"), None);
}

#[test]
fn second_put_bumps_version_and_mod_revision_but_keeps_create_revision() {
    let mut s = Store::new();
    s.apply(put("a", "1"));
    s.apply(put("other", "x"));
    let r = s.apply(put("a", "2"));
    assert_eq!(r.revision, 3);
    assert_eq!(s.get("a"), Some(kv("a", "2", 1, 3, 2)));
    assert_eq!(s.get("other"), Some(kv("other", "x", 2, 2, 1)));
    // An empty value is a value.
    s.apply(put("a", ""));
    assert_eq!(s.get("a"), Some(kv("a", "", 1, 4, 3)));
}

#[test]
fn put_after_delete_starts_a_new_life() {
    let mut s = Store::new();
    s.apply(put("a", "1"));
    s.apply(put("a", "2"));
    s.apply(del(del_key("a")));
    let r = s.apply(put("a", "3"));
    assert_eq!(r.revision, 4);
    assert_eq!(s.get("a"), Some(kv("a", "3", 4, 4, 1)));
}

#[test]
fn prev_kv_is_returned_only_when_asked() {
    let mut s = Store::new();
    // Asked, but there is nothing before.
    assert_eq!(put_resp(&s.apply(put_prev("a", "1"))).prev_kv, None);
    // Not asked.
    assert_eq!(put_resp(&s.apply(put("a", "2"))).prev_kv, None);
    // Asked.
    assert_eq!(
        put_resp(&s.apply(put_prev("a", "3"))).prev_kv,
        Some(kv("a", "2", 1, 2, 2))
    );

    // Delete: the count always, the key-values only when asked.
    s.apply(put("b", "b"));
    let r = s.apply(del(del_key("b")));
    assert_eq!(del_resp(&r).deleted, 1);
    assert!(del_resp(&r).prev_kvs.is_empty());
    let r = s.apply(del(pb::DeleteRequest {
        prev_kv: true,
        ..del_key("a")
    }));
    assert_eq!(del_resp(&r).deleted, 1);
    assert_eq!(del_resp(&r).prev_kvs, vec![kv("a", "3", 1, 3, 3)]);
}

// ---------------------------------------------------------------------------------------------
// Delete
// ---------------------------------------------------------------------------------------------

#[test]
fn deleting_nothing_does_not_move_the_revision() {
    let mut s = Store::new();
    s.apply(put("a", "1"));
    s.apply(put("c", "1"));
    let no_op_deletes = [
        del_key("b"),
        del_range("b", "c"),
        del_range("d", "z"),
        del_range("c", "a"), // end before start
        del_prefix("x"),
    ];
    for req in no_op_deletes {
        let r = s.apply(del(req.clone()));
        assert_eq!(r.revision, 2, "{req:?}");
        assert_eq!(del_resp(&r).deleted, 0, "{req:?}");
        assert!(r.error.is_empty());
    }
    // A Txn that only reads or deletes nothing writes nothing either.
    let r = s.apply(txn(
        vec![],
        vec![op_del(del_key("b")), op_range(range_req("", ""))],
        vec![],
    ));
    assert!(txn_resp(&r).succeeded);
    assert_eq!(r.revision, 2);
    assert_eq!(s.sm.revision(), 2);
    assert_eq!(events(&s.history(0, u64::MAX)).len(), 2);
    assert_eq!(keys(&s.all()), ["a", "c"]);
    // The next write takes the very next revision.
    assert_eq!(s.apply(put("d", "1")).revision, 3);
}

#[test]
fn delete_range_deletes_exactly_the_half_open_interval() {
    let mut s = Store::new();
    for k in ["a", "b", "bb", "c", "d"] {
        s.apply(put(k, k));
    }
    let r = s.apply(del(pb::DeleteRequest {
        prev_kv: true,
        ..del_range("b", "c")
    }));
    assert_eq!(r.revision, 6);
    assert_eq!(del_resp(&r).deleted, 2);
    assert_eq!(
        del_resp(&r).prev_kvs,
        vec![kv("b", "b", 2, 2, 1), kv("bb", "bb", 3, 3, 1)]
    );
    assert_eq!(keys(&s.all()), ["a", "c", "d"]);

    let hist = s.history(6, 6);
    assert_eq!(events(&hist), [ev("DELETE", "b", 6), ev("DELETE", "bb", 6)]);
    assert_eq!(hist[0].prev_kv, Some(kv("b", "b", 2, 2, 1)));
    assert_eq!(hist[1].prev_kv, Some(kv("bb", "bb", 3, 3, 1)));
    // A DELETE event's kv carries only the key and the deleting revision.
    assert_eq!(
        hist[0].kv,
        Some(pb::KeyValue {
            key: b("b"),
            mod_revision: 6,
            ..Default::default()
        })
    );
}

#[test]
fn delete_prefix_deletes_exactly_the_keys_under_it() {
    let mut s = Store::new();
    for k in ["o", "p", "pa", "pb/x", "q", "p\u{7f}"] {
        s.apply(put(k, "v"));
    }
    let r = s.apply(del(del_prefix("p")));
    assert_eq!(r.revision, 7);
    assert_eq!(del_resp(&r).deleted, 4);
    assert_eq!(keys(&s.all()), ["o", "q"]);
    assert_eq!(
        events(&s.history(7, u64::MAX)),
        [
            ev("DELETE", "p", 7),
            ev("DELETE", "pa", 7),
            ev("DELETE", "pb/x", 7),
            ev("DELETE", "p\u{7f}", 7),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Txn
// ---------------------------------------------------------------------------------------------

#[test]
fn txn_compares_choose_the_branch() {
    use CmpResult::{Equal, Greater, Less, NotEqual};
    let mut s = Store::new();
    s.apply(put("a", "v1"));
    s.apply(put("other", "x"));
    s.apply(put("a", "v2"));
    // a: value "v2", version 2, create_revision 1, mod_revision 3. "zz" does not exist.
    assert_eq!(s.get("a"), Some(kv("a", "v2", 1, 3, 2)));

    let cases = [
        (cmp("a", Equal, Target::Version(2)), true),
        (cmp("a", Equal, Target::Version(1)), false),
        (cmp("a", Greater, Target::Version(1)), true),
        (cmp("a", Greater, Target::Version(2)), false),
        (cmp("a", Less, Target::Version(3)), true),
        (cmp("a", Less, Target::Version(2)), false),
        (cmp("a", NotEqual, Target::Version(1)), true),
        (cmp("a", NotEqual, Target::Version(2)), false),
        (cmp("a", Equal, Target::CreateRevision(1)), true),
        (cmp("a", Equal, Target::CreateRevision(3)), false),
        (cmp("a", Greater, Target::CreateRevision(0)), true),
        (cmp("a", Less, Target::CreateRevision(1)), false),
        (cmp("a", Equal, Target::ModRevision(3)), true),
        (cmp("a", Less, Target::ModRevision(4)), true),
        (cmp("a", Less, Target::ModRevision(3)), false),
        (cmp("a", NotEqual, Target::ModRevision(1)), true),
        (cmp("a", Equal, Target::Value(b("v2"))), true),
        (cmp("a", Equal, Target::Value(b("v1"))), false),
        (cmp("a", Greater, Target::Value(b("v1"))), true),
        (cmp("a", Less, Target::Value(b("v3"))), true),
        (cmp("a", Less, Target::Value(b("v2"))), false),
        (cmp("a", NotEqual, Target::Value(b("v2"))), false),
        (cmp("a", NotEqual, Target::Value(b(""))), true),
        // A missing key has version/create/mod 0 ...
        (cmp("zz", Equal, Target::Version(0)), true),
        (cmp("zz", Equal, Target::CreateRevision(0)), true),
        (cmp("zz", Less, Target::ModRevision(1)), true),
        (cmp("zz", Greater, Target::Version(0)), false),
        // ... and no value: every value compare on it is false.
        (cmp("zz", Equal, Target::Value(b(""))), false),
        (cmp("zz", NotEqual, Target::Value(b("x"))), false),
        (cmp("zz", Greater, Target::Value(b(""))), false),
        (cmp("zz", Less, Target::Value(b("x"))), false),
    ];
    for (c, want) in cases {
        let before = s.sm.revision();
        let r = s.apply(txn(
            vec![c.clone()],
            vec![op_put("branch", "success")],
            vec![op_put("branch", "failure")],
        ));
        assert_eq!(txn_resp(&r).succeeded, want, "{c:?}");
        let branch = if want { "success" } else { "failure" };
        assert_eq!(s.get("branch").unwrap().value, b(branch), "{c:?}");
        assert_eq!(r.revision, before + 1, "{c:?}");
    }
    // Compares leave the compared key alone.
    assert_eq!(s.get("a"), Some(kv("a", "v2", 1, 3, 2)));

    // Every compare must hold.
    let r = s.apply(txn(
        vec![
            cmp("a", Equal, Target::Version(2)),
            cmp("a", Equal, Target::Value(b("v1"))),
        ],
        vec![op_put("branch", "success")],
        vec![op_put("branch", "failure")],
    ));
    assert!(!txn_resp(&r).succeeded);
    // No compares: success.
    let r = s.apply(txn(vec![], vec![op_put("branch", "success")], vec![]));
    assert!(txn_resp(&r).succeeded);
}

#[test]
fn txn_writes_share_one_revision() {
    let mut s = Store::new();
    s.apply(put("z", "z"));
    s.apply(put("x", "old"));
    let r = s.apply(txn(
        vec![cmp("x", CmpResult::Equal, Target::Version(1))],
        vec![
            op_put("x", "new"),
            op_put("y", "y1"),
            op_put("y", "y2"),
            op_del(del_key("z")),
            op_range(range_req("", "")),
        ],
        vec![op_put("failed", "1")],
    ));
    assert_eq!(r.revision, 3);
    assert_eq!(s.sm.revision(), 3);
    let t = txn_resp(&r);
    assert!(t.succeeded);
    assert_eq!(t.responses.len(), 5);
    // The range inside the Txn sees the Txn's earlier writes.
    match &t.responses[4].response {
        Some(S::Range(rr)) => assert_eq!(
            rr.kvs,
            vec![kv("x", "new", 2, 3, 2), kv("y", "y2", 3, 3, 2)]
        ),
        other => panic!("not a range response: {other:?}"),
    }
    match &t.responses[3].response {
        Some(S::Delete(d)) => assert_eq!(d.deleted, 1),
        other => panic!("not a delete response: {other:?}"),
    }
    assert_eq!(
        s.all(),
        vec![kv("x", "new", 2, 3, 2), kv("y", "y2", 3, 3, 2)]
    );
    assert_eq!(
        events(&s.history(3, 3)),
        [
            ev("PUT", "x", 3),
            ev("PUT", "y", 3),
            ev("PUT", "y", 3),
            ev("DELETE", "z", 3),
        ]
    );
    // The failure branch ran nothing.
    assert_eq!(s.get("failed"), None);
    assert_eq!(s.apply(put("w", "w")).revision, 4);
}

#[test]
fn commands_in_one_batch_see_each_other() {
    let mut s = Store::new();
    let resps = s.apply_all(vec![
        put("a", "1"),
        put("b", "1"),
        put("a", "2"),
        del(del_range("a", "b")),
        txn(
            vec![cmp("a", CmpResult::Equal, Target::Version(0))],
            vec![op_put("c", "1"), op_range(range_req("", ""))],
            vec![],
        ),
        del(del_key("a")),
    ]);
    let revisions: Vec<u64> = resps.iter().map(|r| r.revision).collect();
    assert_eq!(revisions, [1, 2, 3, 4, 5, 5]);
    assert!(txn_resp(&resps[4]).succeeded);
    match &txn_resp(&resps[4]).responses[1].response {
        Some(S::Range(rr)) => assert_eq!(keys(&rr.kvs), ["b", "c"]),
        other => panic!("not a range response: {other:?}"),
    }
    assert_eq!(s.all(), vec![kv("b", "1", 2, 2, 1), kv("c", "1", 5, 5, 1)]);
    assert_eq!(s.sm.revision(), 5);
}

// ---------------------------------------------------------------------------------------------
// Range
// ---------------------------------------------------------------------------------------------

fn abcde() -> Store {
    let mut s = Store::new();
    for k in ["a", "b", "c", "d", "e"] {
        s.apply(put(k, &k.to_uppercase()));
    }
    s
}

#[test]
fn range_with_limit_paginates_exactly() {
    let s = abcde();
    let mut req = pb::RangeRequest {
        limit: 2,
        ..range_req("b", "e")
    };
    let page = s.range(&req);
    assert_eq!(keys(&page.kvs), ["b", "c"]);
    assert!(page.more);
    assert_eq!(page.next_start, b("d"));
    assert_eq!(page.count, 2);

    req.start = page.next_start;
    let page = s.range(&req);
    assert_eq!(keys(&page.kvs), ["d"]);
    assert!(!page.more);
    assert!(page.next_start.is_empty());

    // A limit equal to the number of keys left: no more.
    let page = s.range(&pb::RangeRequest {
        limit: 3,
        ..range_req("b", "e")
    });
    assert_eq!(keys(&page.kvs), ["b", "c", "d"]);
    assert!(!page.more);

    // Walking the whole key space one key at a time visits every key once.
    let mut req = pb::RangeRequest {
        limit: 1,
        ..Default::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = s.range(&req);
        seen.extend(keys(&page.kvs));
        if !page.more {
            break;
        }
        req.start = page.next_start;
    }
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);
}

#[test]
fn range_by_prefix_paginates_with_next_start() {
    let mut s = Store::new();
    for k in ["o", "p/1", "p/2", "p/3", "q"] {
        s.apply(put(k, "v"));
    }
    let mut req = pb::RangeRequest {
        prefix: b("p/"),
        limit: 2,
        ..Default::default()
    };
    let page = s.range(&req);
    assert_eq!(keys(&page.kvs), ["p/1", "p/2"]);
    assert!(page.more);
    assert_eq!(page.next_start, b("p/3"));

    // kv.proto: "More keys remain: ask again with `start = next_start` (same end/prefix)".
    req.start = page.next_start;
    let page = s.range(&req);
    assert_eq!(
        keys(&page.kvs),
        ["p/3"],
        "the second page of a prefix range must continue at next_start"
    );
    assert!(!page.more);
}

#[test]
fn range_keys_only_count_only_prefix_and_empty_ranges() {
    let s = abcde();
    let page = s.range(&pb::RangeRequest {
        keys_only: true,
        ..range_req("b", "d")
    });
    assert_eq!(
        page.kvs,
        vec![kv("b", "", 2, 2, 1), kv("c", "", 3, 3, 1)],
        "keys_only keeps everything but the value"
    );

    let page = s.range(&pb::RangeRequest {
        count_only: true,
        limit: 1,
        ..range_req("b", "")
    });
    assert_eq!(page.count, 4);
    assert!(page.kvs.is_empty());
    assert!(!page.more);

    let page = s.range(&pb::RangeRequest {
        prefix: b("c"),
        ..Default::default()
    });
    assert_eq!(page.kvs, vec![kv("c", "C", 3, 3, 1)]);

    for (start, end) in [("c", "c"), ("d", "b"), ("f", "")] {
        let page = s.range(&range_req(start, end));
        assert!(page.kvs.is_empty(), "[{start}, {end})");
        assert!(!page.more);
        assert_eq!(page.count, 0);
    }
    // Empty start: from the first key; empty end: to the last.
    assert_eq!(keys(&s.range(&range_req("", "c")).kvs), ["a", "b"]);
    assert_eq!(keys(&s.range(&range_req("d", "")).kvs), ["d", "e"]);
    assert_eq!(s.sm.range(&range_req("", "")).unwrap().1, 5);
}

#[test]
fn range_limit_is_capped_by_max_range_limit() {
    let mut s = Store::with_options(StoreOptions {
        max_range_limit: 2,
        ..crate::conformance::test_options()
    });
    for k in ["a", "b", "c"] {
        s.apply(put(k, "v"));
    }
    for limit in [0, 5] {
        let page = s.range(&pb::RangeRequest {
            limit,
            ..Default::default()
        });
        assert_eq!(keys(&page.kvs), ["a", "b"], "limit {limit}");
        assert!(page.more);
        assert_eq!(page.next_start, b("c"));
    }
}

// ---------------------------------------------------------------------------------------------
// History and compaction
// ---------------------------------------------------------------------------------------------

#[test]
fn history_returns_events_in_revision_order() {
    let mut s = Store::new();
    s.apply(put("a", "1"));
    s.apply(put("b", "1"));
    s.apply(txn(
        vec![],
        vec![op_put("c", "1"), op_put("d", "1"), op_del(del_key("a"))],
        vec![],
    ));
    s.apply(del(del_key("b")));
    s.apply(put("c", "2"));
    assert_eq!(
        events(&s.history(0, u64::MAX)),
        [
            ev("PUT", "a", 1),
            ev("PUT", "b", 2),
            ev("PUT", "c", 3),
            ev("PUT", "d", 3),
            ev("DELETE", "a", 3),
            ev("DELETE", "b", 4),
            ev("PUT", "c", 5),
        ]
    );
    assert_eq!(
        events(&s.history(2, 3)),
        [
            ev("PUT", "b", 2),
            ev("PUT", "c", 3),
            ev("PUT", "d", 3),
            ev("DELETE", "a", 3),
        ]
    );
    // A PUT event carries the new key-value and the previous one.
    let last = s.history(5, 5);
    assert_eq!(last[0].kv, Some(kv("c", "2", 3, 5, 2)));
    assert_eq!(last[0].prev_kv, Some(kv("c", "1", 3, 3, 1)));
    assert_eq!(s.history(1, 1)[0].prev_kv, None);

    // max_events stops at a revision boundary, never inside a revision.
    let ev_at = |from, max| events(&s.sm.history(from, u64::MAX, max).unwrap());
    assert_eq!(ev_at(1, 1), [ev("PUT", "a", 1)]);
    assert_eq!(ev_at(1, 2), [ev("PUT", "a", 1), ev("PUT", "b", 2)]);
    assert_eq!(ev_at(3, 1).len(), 3);
    assert_eq!(ev_at(2, 2).len(), 4);
    assert!(s.history(6, u64::MAX).is_empty());
}

#[test]
fn explicit_compaction_discards_older_history() {
    let mut s = Store::new();
    for k in ["a", "b", "c", "d", "e"] {
        s.apply(put(k, "v"));
    }
    let r = s.apply(compact(3));
    assert!(r.error.is_empty(), "{}", r.error);
    assert_eq!(r.revision, 5, "a compaction is not a write");
    assert_eq!(s.sm.revision(), 5);
    assert_eq!(s.sm.compact_revision(), 3);
    match s.sm.history(2, u64::MAX, 100) {
        Err(ReadError::Compacted { requested, oldest }) => {
            assert_eq!((requested, oldest), (2, 3));
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert_eq!(
        events(&s.history(3, u64::MAX)),
        [ev("PUT", "c", 3), ev("PUT", "d", 4), ev("PUT", "e", 5)]
    );
    // The keys are untouched.
    assert_eq!(keys(&s.all()), ["a", "b", "c", "d", "e"]);

    // Compacting to an older revision changes nothing and is not an error.
    let r = s.apply(compact(2));
    assert!(r.error.is_empty());
    assert_eq!(s.sm.compact_revision(), 3);

    // Compacting to the current revision keeps that revision's events.
    s.apply(compact(5));
    assert_eq!(s.sm.compact_revision(), 5);
    assert_eq!(events(&s.history(5, u64::MAX)), [ev("PUT", "e", 5)]);
    assert!(matches!(
        s.sm.history(4, u64::MAX, 100),
        Err(ReadError::Compacted {
            requested: 4,
            oldest: 5
        })
    ));
}

#[test]
fn compacting_a_future_revision_is_refused_and_changes_nothing() {
    let mut s = Store::new();
    for k in ["a", "b", "c"] {
        s.apply(put(k, "v"));
    }
    let before = (s.all(), s.history(0, u64::MAX));
    let r = s.apply(compact(4));
    assert!(!r.error.is_empty(), "compact(4) at revision 3 must fail");
    assert_eq!(r.revision, 3);
    assert_eq!(s.sm.revision(), 3);
    assert_eq!(s.sm.compact_revision(), 0);
    assert_eq!((s.all(), s.history(0, u64::MAX)), before);
    // In the same batch as writes, it is judged against the revision at its position.
    let resps = s.apply_all(vec![compact(5), put("d", "v"), put("e", "v"), compact(5)]);
    assert!(!resps[0].error.is_empty());
    assert!(resps[3].error.is_empty(), "{}", resps[3].error);
    assert_eq!(s.sm.compact_revision(), 5);
}

fn small_history_store() -> Store {
    let mut s = Store::with_options(StoreOptions {
        history_revisions: 3,
        ..crate::conformance::test_options()
    });
    for i in 1..=10 {
        s.apply(put("k", &i.to_string()));
    }
    s
}

#[test]
fn automatic_compaction_discards_old_history() {
    let s = small_history_store();
    assert_eq!(s.sm.revision(), 10);
    let oldest = s.sm.compact_revision();
    assert!((7..=8).contains(&oldest), "compact revision {oldest}");
    assert!(matches!(
        s.sm.history(oldest - 1, u64::MAX, 100),
        Err(ReadError::Compacted { .. })
    ));
    // What is kept is contiguous up to the current revision.
    let kept: Vec<u64> = events(&s.history(oldest, u64::MAX))
        .into_iter()
        .map(|(_, _, rev)| rev)
        .collect();
    assert_eq!(kept, (oldest..=10).collect::<Vec<_>>());
    // Keys are untouched by compaction.
    assert_eq!(s.get("k"), Some(kv("k", "10", 1, 10, 10)));
}

/// `StoreOptions::history_revisions` is "revisions of watch history kept" and apply_batch
/// says "Keep at most `history_max` revisions of history".
#[test]
fn automatic_compaction_keeps_at_most_history_revisions() {
    let s = small_history_store();
    let kept = s.history(s.sm.compact_revision(), u64::MAX);
    assert_eq!(
        events(&kept),
        [ev("PUT", "k", 8), ev("PUT", "k", 9), ev("PUT", "k", 10)],
        "history_revisions = 3 at revision 10 (compact revision {})",
        s.sm.compact_revision()
    );
}

#[test]
fn subscribers_receive_each_applied_batch() {
    let mut s = Store::new();
    s.apply(put("a", "1"));
    let (mut rx, from) = s.sm.subscribe();
    assert_eq!(from, 1);
    s.apply_all(vec![put("b", "1"), del(del_key("a"))]);
    s.apply(del(del_key("missing")));
    s.apply(put("c", "1"));
    let batch = rx.try_recv().expect("first batch");
    assert_eq!(
        events(&batch.events),
        [ev("PUT", "b", 2), ev("DELETE", "a", 3)]
    );
    let batch = rx.try_recv().expect("second batch");
    assert_eq!(events(&batch.events), [ev("PUT", "c", 4)]);
    assert!(rx.try_recv().is_err(), "a no-op delete sends nothing");
}

// ---------------------------------------------------------------------------------------------
// Persistence and snapshots
// ---------------------------------------------------------------------------------------------

#[test]
fn state_survives_reopen() {
    let mut s = Store::new();
    s.apply(put("a", "1"));
    s.apply(put("b", "1"));
    s.apply(put("a", "2"));
    s.apply(del(del_key("b")));
    s.apply(put("c", "1"));
    s.apply(compact(2));
    let before = (s.all(), s.history(2, u64::MAX));
    assert_eq!(s.sm.applied_index(), 6);

    let mut s = s.reopen();
    assert_eq!(s.sm.revision(), 5);
    assert_eq!(s.sm.compact_revision(), 2);
    assert_eq!(s.sm.applied_index(), 6);
    assert_eq!((s.all(), s.history(2, u64::MAX)), before);
    assert_eq!(s.get("a"), Some(kv("a", "2", 1, 3, 2)));
    // And it carries on from there.
    let r = s.apply(put("a", "3"));
    assert_eq!(r.revision, 6);
    assert_eq!(s.get("a"), Some(kv("a", "3", 1, 6, 3)));
}

fn store_with_data() -> Store {
    let mut s = Store::new();
    for i in 0..50 {
        s.apply(put(&format!("key-{i:02}"), &format!("value-{i}")));
    }
    s.apply(put("key-07", "again"));
    s.apply(del(del_range("key-10", "key-20")));
    s.apply(txn(
        vec![],
        vec![
            op_put("t1", "1"),
            op_put("t2", ""),
            op_del(del_key("key-30")),
        ],
        vec![],
    ));
    s
}

#[test]
fn files_of_an_interrupted_snapshot_build_are_removed_at_open() {
    let s = Store::new();
    let leftover = s.dir.path().join("snapshots").join("copy-1-0.tmp");
    std::fs::write(&leftover, b"half a copy").expect("write leftover");
    let s = s.reopen();
    assert!(!leftover.exists(), "{} is still there", leftover.display());
    drop(s);
}

/// A snapshot copies the keys without the state lock; writes that land meanwhile are in it
/// as of the moment it ends: changed, deleted, re-created and new keys alike.
#[tokio::test]
async fn a_snapshot_includes_writes_made_while_it_copies() {
    let mut a = store_with_data();
    let sm = a.sm.clone();
    let snap = crate::snapshot::build_with(&sm, || {
        a.apply(put("key-07", "during"));
        a.apply(del(del_key("key-40")));
        a.apply(put("key-15", "re-created"));
        a.apply(put("aa-first", "1"));
        a.apply(put("zz-last", "1"));
    })
    .expect("build snapshot");
    assert_eq!(
        snap.meta.last_log_id.as_ref().map(|l| l.index),
        Some(a.next_index - 1)
    );
    let mut b = Store::new();
    b.install(snap).await;
    assert_eq!(b.all(), a.all());
    assert_eq!(b.get("key-07"), Some(kv("key-07", "during", 8, 54, 3)));
    assert_eq!(b.get("key-40"), None);
    assert_eq!(b.sm.revision(), a.sm.revision());
}

/// When the history no longer covers the copy (compacted meanwhile), the copy is made again
/// under the lock, and the snapshot is still exact.
#[tokio::test]
async fn a_snapshot_copies_again_when_history_was_compacted_meanwhile() {
    let mut a = store_with_data();
    let sm = a.sm.clone();
    let snap = crate::snapshot::build_with(&sm, || {
        a.apply(put("key-07", "during"));
        a.apply(del(del_key("key-41")));
        let now = a.sm.revision();
        a.apply(compact(now));
    })
    .expect("build snapshot");
    let mut b = Store::new();
    b.install(snap).await;
    assert_eq!(b.all(), a.all());
    assert_eq!(b.get("key-41"), None);
}

#[tokio::test]
async fn snapshot_build_and_install_round_trip() {
    let a = store_with_data();
    let snap = RaftSnapshotBuilder::build_snapshot(&mut a.sm.clone())
        .await
        .expect("build snapshot");
    assert_eq!(
        snap.meta.last_log_id.as_ref().map(|l| l.index),
        Some(a.next_index - 1)
    );

    let mut b = Store::new();
    b.apply(put("only-in-b", "x"));
    b.apply(put("key-07", "b's"));
    b.install(snap.clone()).await;

    assert_eq!(b.all(), a.all());
    assert_eq!(b.all().len(), 50 - 10 - 1 + 2);
    assert_eq!(b.get("key-07"), Some(kv("key-07", "again", 8, 51, 2)));
    assert_eq!(b.sm.revision(), a.sm.revision());
    assert_eq!(b.sm.applied_index(), a.sm.applied_index());
    // History is not in a snapshot: it starts again at the snapshot's revision.
    assert_eq!(b.sm.compact_revision(), a.sm.revision());
    assert!(matches!(
        b.sm.history(1, u64::MAX, 10),
        Err(ReadError::Compacted { .. })
    ));
    // The installed snapshot is B's current one.
    let current = RaftStateMachine::get_current_snapshot(&mut b.sm)
        .await
        .expect("current snapshot")
        .expect("a current snapshot");
    assert_eq!(current.meta.last_log_id, snap.meta.last_log_id);

    // B carries on from the snapshot's revision.
    b.next_index = a.next_index;
    let r = b.apply(put("after", "1"));
    assert_eq!(r.revision, a.sm.revision() + 1);
    assert_eq!(
        events(&b.history(b.sm.compact_revision(), u64::MAX)),
        [ev("PUT", "after", a.sm.revision() + 1)]
    );
}

#[tokio::test]
async fn snapshot_with_a_flipped_byte_is_refused() {
    let a = store_with_data();
    let snap = RaftSnapshotBuilder::build_snapshot(&mut a.sm.clone())
        .await
        .expect("build snapshot");
    let good = std::fs::read(&snap.snapshot.path).expect("read snapshot");

    let mut b = Store::new();
    b.apply(put("mine", "1"));
    let before = b.all();
    let scratch = TempDir::new().expect("temp dir");
    let n = good.len();
    // In the JSON header, in the records, in the end marker and in the checksum itself.
    for pos in [20, n / 2, n - 6, n - 1] {
        let mut bad = good.clone();
        bad[pos] ^= 0x01;
        let path = scratch.path().join(format!("bad-{pos}.snap"));
        std::fs::write(&path, &bad).expect("write corrupt snapshot");
        let res = RaftStateMachine::install_snapshot(
            &mut b.sm,
            &snap.meta,
            crate::SnapshotData { path: path.clone() },
        )
        .await;
        let err = res.expect_err(&format!("a flip at byte {pos} of {n} must be refused"));
        assert_eq!(
            err.kind(),
            std::io::ErrorKind::InvalidData,
            "byte {pos}: {err}"
        );
        assert_eq!(b.all(), before, "byte {pos}");
        assert_eq!(b.sm.revision(), 1);
        assert!(path.exists(), "a refused file is not adopted");
    }
    assert!(
        RaftStateMachine::get_current_snapshot(&mut b.sm)
            .await
            .expect("current snapshot")
            .is_none()
    );
    // The intact file installs.
    let path = scratch.path().join("good.snap");
    std::fs::write(&path, &good).expect("write snapshot");
    RaftStateMachine::install_snapshot(&mut b.sm, &snap.meta, crate::SnapshotData { path })
        .await
        .expect("install intact snapshot");
    assert_eq!(b.all(), a.all());
}

// ---------------------------------------------------------------------------------------------
// Property test against a model
// ---------------------------------------------------------------------------------------------

/// A key's state in the model.
#[derive(Debug, Clone)]
struct Rec {
    value: Vec<u8>,
    create: u64,
    modified: u64,
    version: u64,
}

/// What a delete selects.
#[derive(Debug, Clone)]
enum Sel {
    Key(Vec<u8>),
    /// `[start, end)`, `end` non-empty.
    Range(Vec<u8>, Vec<u8>),
    Prefix(Vec<u8>),
}

/// A range: either `start`/`end` or `prefix` (never both).
#[derive(Debug, Clone)]
struct RangeSpec {
    start: Vec<u8>,
    end: Vec<u8>,
    prefix: Vec<u8>,
    limit: u64,
    keys_only: bool,
    count_only: bool,
}

/// One operation, on its own or inside a Txn (Range only inside a Txn or as a read).
#[derive(Debug, Clone)]
enum Action {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        prev_kv: bool,
    },
    Delete {
        sel: Sel,
        prev_kv: bool,
    },
    Range(RangeSpec),
}

#[derive(Debug, Clone)]
struct Check {
    key: Vec<u8>,
    result: CmpResult,
    target: Target,
}

#[derive(Debug, Clone)]
enum Cmd {
    /// A Put or a Delete.
    One(Action),
    Txn {
        compares: Vec<Check>,
        success: Vec<Action>,
        failure: Vec<Action>,
    },
}

#[derive(Debug, Clone)]
enum Step {
    /// A write, applied in one batch with the writes before it unless `end_batch`.
    Write { cmd: Cmd, end_batch: bool },
    /// A read between batches.
    Read(RangeSpec),
}

impl RangeSpec {
    fn to_pb(&self) -> pb::RangeRequest {
        pb::RangeRequest {
            start: Bytes::from(self.start.clone()),
            end: Bytes::from(self.end.clone()),
            prefix: Bytes::from(self.prefix.clone()),
            limit: self.limit,
            keys_only: self.keys_only,
            count_only: self.count_only,
            ..Default::default()
        }
    }
}

impl Action {
    fn to_pb(&self) -> Q {
        match self {
            Action::Put {
                key,
                value,
                prev_kv,
            } => Q::Put(pb::PutRequest {
                key: Bytes::from(key.clone()),
                value: Bytes::from(value.clone()),
                prev_kv: *prev_kv,
                lease: 0,
            }),
            Action::Delete { sel, prev_kv } => {
                let (key, end, prefix) = match sel {
                    Sel::Key(k) => (k.clone(), vec![], vec![]),
                    Sel::Range(s, e) => (s.clone(), e.clone(), vec![]),
                    Sel::Prefix(p) => (vec![], vec![], p.clone()),
                };
                Q::Delete(pb::DeleteRequest {
                    key: key.into(),
                    end: end.into(),
                    prefix: prefix.into(),
                    prev_kv: *prev_kv,
                })
            }
            Action::Range(spec) => Q::Range(spec.to_pb()),
        }
    }
}

impl Cmd {
    fn to_pb(&self) -> pb::Command {
        let op = match self {
            Cmd::One(a) => match a.to_pb() {
                Q::Put(p) => Op::Put(p),
                Q::Delete(d) => Op::Delete(d),
                Q::Range(_) => unreachable!("a range is not a command"),
            },
            Cmd::Txn {
                compares,
                success,
                failure,
            } => {
                let ops = |actions: &[Action]| {
                    actions
                        .iter()
                        .map(|a| pb::RequestOp {
                            request: Some(a.to_pb()),
                        })
                        .collect()
                };
                Op::Txn(pb::TxnRequest {
                    compare: compares
                        .iter()
                        .map(|c| pb::Compare {
                            result: c.result as i32,
                            key: Bytes::from(c.key.clone()),
                            target: Some(c.target.clone()),
                        })
                        .collect(),
                    success: ops(success),
                    failure: ops(failure),
                })
            }
        };
        pb::Command { op: Some(op) }
    }
}

/// The reference: keys, revision and the events every write produced.
#[derive(Debug, Default)]
struct Model {
    keys: BTreeMap<Vec<u8>, Rec>,
    revision: u64,
    events: Vec<pb::Event>,
}

const MODEL_MAX_RANGE: u64 = 10_000; // conformance::test_options().max_range_limit

impl Model {
    fn kv(key: &[u8], r: &Rec) -> pb::KeyValue {
        pb::KeyValue {
            key: Bytes::from(key.to_vec()),
            value: Bytes::from(r.value.clone()),
            create_revision: r.create,
            mod_revision: r.modified,
            version: r.version,
            lease: 0,
        }
    }

    fn all(&self) -> Vec<pb::KeyValue> {
        self.keys.iter().map(|(k, r)| Model::kv(k, r)).collect()
    }

    fn range(&self, spec: &RangeSpec) -> pb::RangeResponse {
        let matching: Vec<pb::KeyValue> = self
            .keys
            .iter()
            .filter(|(k, _)| {
                if spec.prefix.is_empty() {
                    **k >= spec.start && (spec.end.is_empty() || **k < spec.end)
                } else {
                    k.starts_with(&spec.prefix)
                }
            })
            .map(|(k, r)| Model::kv(k, r))
            .collect();
        if spec.count_only {
            return pb::RangeResponse {
                count: matching.len() as u64,
                ..Default::default()
            };
        }
        let limit = match spec.limit {
            0 => MODEL_MAX_RANGE,
            n => n.min(MODEL_MAX_RANGE),
        } as usize;
        let more = matching.len() > limit;
        let next_start = if more {
            matching[limit].key.clone()
        } else {
            Bytes::new()
        };
        let mut kvs: Vec<pb::KeyValue> = matching.into_iter().take(limit).collect();
        if spec.keys_only {
            for kv in &mut kvs {
                kv.value = Bytes::new();
            }
        }
        pb::RangeResponse {
            header: None,
            count: kvs.len() as u64,
            kvs,
            more,
            next_start,
        }
    }

    fn holds(&self, c: &Check) -> bool {
        let cur = self.keys.get(&c.key);
        let ord = match &c.target {
            Target::Version(v) => cur.map_or(0, |r| r.version).cmp(v),
            Target::CreateRevision(v) => cur.map_or(0, |r| r.create).cmp(v),
            Target::ModRevision(v) => cur.map_or(0, |r| r.modified).cmp(v),
            Target::Value(v) => match cur {
                Some(r) => r.value.as_slice().cmp(v.as_ref()),
                None => return false,
            },
        };
        match c.result {
            CmpResult::Equal => ord.is_eq(),
            CmpResult::Greater => ord.is_gt(),
            CmpResult::Less => ord.is_lt(),
            CmpResult::NotEqual => ord.is_ne(),
        }
    }

    /// Runs one action at revision `rev`; returns its response and whether it wrote.
    fn act(&mut self, a: &Action, rev: u64) -> (S, bool) {
        match a {
            Action::Put {
                key,
                value,
                prev_kv,
            } => {
                let prev = self.keys.get(key).cloned();
                let rec = Rec {
                    value: value.clone(),
                    create: prev.as_ref().map_or(rev, |p| p.create),
                    modified: rev,
                    version: prev.as_ref().map_or(1, |p| p.version + 1),
                };
                let prev = prev.map(|p| Model::kv(key, &p));
                self.events.push(pb::Event {
                    r#type: PUT,
                    kv: Some(Model::kv(key, &rec)),
                    prev_kv: prev.clone(),
                });
                self.keys.insert(key.clone(), rec);
                let resp = pb::PutResponse {
                    header: None,
                    prev_kv: if *prev_kv { prev } else { None },
                };
                (S::Put(resp), true)
            }
            Action::Delete { sel, prev_kv } => {
                let victims: Vec<Vec<u8>> = self
                    .keys
                    .keys()
                    .filter(|k| match sel {
                        Sel::Key(key) => *k == key,
                        Sel::Range(s, e) => *k >= s && *k < e,
                        Sel::Prefix(p) => k.starts_with(p),
                    })
                    .cloned()
                    .collect();
                let mut resp = pb::DeleteResponse {
                    deleted: victims.len() as u64,
                    ..Default::default()
                };
                for key in victims {
                    let prev = Model::kv(&key, &self.keys.remove(&key).expect("victim"));
                    self.events.push(pb::Event {
                        r#type: DELETE,
                        kv: Some(pb::KeyValue {
                            key: Bytes::from(key),
                            mod_revision: rev,
                            ..Default::default()
                        }),
                        prev_kv: Some(prev.clone()),
                    });
                    if *prev_kv {
                        resp.prev_kvs.push(prev);
                    }
                }
                let wrote = resp.deleted > 0;
                (S::Delete(resp), wrote)
            }
            Action::Range(spec) => (S::Range(self.range(spec)), false),
        }
    }

    fn apply(&mut self, cmd: &Cmd) -> pb::CommandResponse {
        let next = self.revision + 1;
        let (result, wrote) = match cmd {
            Cmd::One(a) => match self.act(a, next) {
                (S::Put(p), wrote) => (R::Put(p), wrote),
                (S::Delete(d), wrote) => (R::Delete(d), wrote),
                (S::Range(_), _) => unreachable!("a range is not a command"),
            },
            Cmd::Txn {
                compares,
                success,
                failure,
            } => {
                let succeeded = compares.iter().all(|c| self.holds(c));
                let mut wrote = false;
                let mut responses = Vec::new();
                for a in if succeeded { success } else { failure } {
                    let (resp, w) = self.act(a, next);
                    wrote |= w;
                    responses.push(pb::ResponseOp {
                        response: Some(resp),
                    });
                }
                let resp = pb::TxnResponse {
                    header: None,
                    succeeded,
                    responses,
                };
                (R::Txn(resp), wrote)
            }
        };
        if wrote {
            self.revision = next;
        }
        pb::CommandResponse {
            revision: self.revision,
            result: Some(result),
            error: String::new(),
            error_kind: 0,
        }
    }
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    "[abc]{1,2}".prop_map(String::into_bytes)
}

fn bound() -> impl Strategy<Value = Vec<u8>> {
    "[abc]{0,2}".prop_map(String::into_bytes)
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    "[xy]{0,2}".prop_map(String::into_bytes)
}

fn sel() -> impl Strategy<Value = Sel> {
    prop_oneof![
        3 => key().prop_map(Sel::Key),
        1 => (bound(), key()).prop_map(|(s, e)| Sel::Range(s, e)),
        1 => key().prop_map(Sel::Prefix),
    ]
}

fn range_spec() -> impl Strategy<Value = RangeSpec> {
    let bounds = prop_oneof![
        2 => (bound(), bound()).prop_map(|(s, e)| (s, e, vec![])),
        1 => key().prop_map(|p| (vec![], vec![], p)),
    ];
    (bounds, 0u64..4, any::<bool>(), prop::bool::weighted(0.2)).prop_map(
        |((start, end, prefix), limit, keys_only, count_only)| RangeSpec {
            start,
            end,
            prefix,
            limit,
            keys_only,
            count_only,
        },
    )
}

fn put_action() -> impl Strategy<Value = Action> {
    (key(), value(), any::<bool>()).prop_map(|(key, value, prev_kv)| Action::Put {
        key,
        value,
        prev_kv,
    })
}

fn delete_action() -> impl Strategy<Value = Action> {
    (sel(), any::<bool>()).prop_map(|(sel, prev_kv)| Action::Delete { sel, prev_kv })
}

fn check() -> impl Strategy<Value = Check> {
    let result = prop_oneof![
        Just(CmpResult::Equal),
        Just(CmpResult::Greater),
        Just(CmpResult::Less),
        Just(CmpResult::NotEqual),
    ];
    let target = prop_oneof![
        2 => (0u64..4).prop_map(Target::Version),
        2 => value().prop_map(|v| Target::Value(v.into())),
        1 => (0u64..12).prop_map(Target::ModRevision),
    ];
    (key(), result, target).prop_map(|(key, result, target)| Check {
        key,
        result,
        target,
    })
}

fn txn_cmd() -> impl Strategy<Value = Cmd> {
    let action = || {
        prop_oneof![
            3 => put_action(),
            2 => delete_action(),
            1 => range_spec().prop_map(Action::Range),
        ]
    };
    (
        prop::collection::vec(check(), 0..3),
        prop::collection::vec(action(), 0..4),
        prop::collection::vec(action(), 0..4),
    )
        .prop_map(|(compares, success, failure)| Cmd::Txn {
            compares,
            success,
            failure,
        })
}

fn step() -> impl Strategy<Value = Step> {
    let cmd = prop_oneof![
        4 => put_action().prop_map(Cmd::One),
        2 => delete_action().prop_map(Cmd::One),
        2 => txn_cmd(),
    ];
    prop_oneof![
        4 => (cmd, prop::bool::weighted(0.6))
            .prop_map(|(cmd, end_batch)| Step::Write { cmd, end_batch }),
        1 => range_spec().prop_map(Step::Read),
    ]
}

/// Applies the pending batch to the store and checks every response against the model's.
fn flush(
    store: &mut Store,
    model: &Model,
    batch: &mut Vec<pb::Command>,
    expected: &mut Vec<pb::CommandResponse>,
) -> Result<(), TestCaseError> {
    if batch.is_empty() {
        return Ok(());
    }
    let got = store.apply_all(std::mem::take(batch));
    prop_assert_eq!(got, std::mem::take(expected));
    prop_assert_eq!(store.sm.revision(), model.revision);
    Ok(())
}

fn run_against_model(steps: &[Step]) -> Result<(), TestCaseError> {
    let mut store = Store::new();
    let mut model = Model::default();
    let mut batch = Vec::new();
    let mut expected = Vec::new();
    for step in steps {
        match step {
            Step::Write { cmd, end_batch } => {
                batch.push(cmd.to_pb());
                expected.push(model.apply(cmd));
                if *end_batch {
                    flush(&mut store, &model, &mut batch, &mut expected)?;
                }
            }
            Step::Read(spec) => {
                flush(&mut store, &model, &mut batch, &mut expected)?;
                let (resp, revision) = store.sm.range(&spec.to_pb()).expect("range");
                prop_assert_eq!(resp, model.range(spec), "range {:?}", spec);
                prop_assert_eq!(revision, model.revision);
            }
        }
    }
    flush(&mut store, &model, &mut batch, &mut expected)?;
    prop_assert_eq!(store.all(), model.all());
    prop_assert_eq!(store.sm.revision(), model.revision);
    prop_assert_eq!(store.history(0, u64::MAX), model.events);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_commands_match_the_model(steps in prop::collection::vec(step(), 1..=60)) {
        run_against_model(&steps)?;
    }
}

/// A crash after a batch wrote its events and keys but before its `state` row: the reopened
/// store undoes the batch, so the applied log id describes the data exactly again.
#[test]
fn an_interrupted_batch_is_undone_at_open() {
    let mut s = Store::new();
    s.apply_all(vec![put("a", "1"), put("b", "1")]);
    let committed = s.state_row();
    let before = (s.all(), s.sm.revision(), s.sm.applied_index());
    // The next batch: overwrite a, delete b, create c, all applied in memory and on disk...
    s.apply_all(vec![
        put("a", "2"),
        del(del_key("b")),
        put("c", "1"),
        put("a", "3"),
    ]);
    assert_eq!(s.sm.revision(), 6);
    // ...but its `state` row never reached the disk.
    s.lose_state_rows_since(committed);
    let s = s.reopen();
    assert_eq!((s.all(), s.sm.revision(), s.sm.applied_index()), before);
    assert!(
        s.history(3, u64::MAX).is_empty(),
        "the batch's events are gone too"
    );
    assert_eq!(s.get("a").unwrap().version, 1);
}

/// History written before rows were batched (one event per row, keyed `revision || seq`) is
/// rewritten at open and reads the same.
#[test]
fn history_from_before_batching_is_rewritten_at_open() {
    use prost::Message;
    let mut s = Store::new();
    s.apply_all(vec![put("a", "1"), put("b", "1")]);
    s.apply(txn(
        vec![],
        vec![op_put("a", "2"), op_put("c", "1"), op_del(del_key("b"))],
        vec![],
    ));
    let before = s.history(0, u64::MAX);
    assert_eq!(before.len(), 5);
    // A data dir from before: old rows, and no mark that the history was batched.
    let meta = &s.sm.shared.meta;
    meta.remove(super::state_machine::HISTORY_BATCHED).unwrap();
    let history = &s.sm.shared.history;
    history.clear().unwrap();
    let mut last = (0, 0u32);
    for ev in &before {
        let rev = ev.kv.as_ref().unwrap().mod_revision;
        last = if last.0 == rev {
            (rev, last.1 + 1)
        } else {
            (rev, 0)
        };
        let key = [rev.to_be_bytes().as_slice(), &last.1.to_be_bytes()].concat();
        history.insert(key, ev.encode_to_vec()).unwrap();
    }
    let s = s.reopen();
    assert_eq!(s.history(0, u64::MAX), before);
    assert_eq!(s.history(3, 3), before[2..]);
    let keys: Vec<usize> =
        s.sm.shared
            .history
            .iter()
            .keys()
            .map(|k| k.unwrap().len())
            .collect();
    assert_eq!(keys, [8, 8, 8], "one row per old revision");
}

/// Under load a batch holds many entries: their events share one history row, and a reader
/// starting or stopping inside the row gets exactly the revisions asked for.
#[test]
fn history_reads_inside_a_batched_row() {
    let mut s = Store::new();
    s.apply_all((0..10).map(|i| put(&format!("k{i}"), "v")).collect());
    assert_eq!(s.sm.shared.history.len(), 1, "one row for the batch");
    let revs = |from, to| -> Vec<u64> {
        s.history(from, to)
            .iter()
            .map(|e| e.kv.as_ref().unwrap().mod_revision)
            .collect()
    };
    assert_eq!(revs(4, 6), [4, 5, 6]);
    assert_eq!(revs(10, u64::MAX), [10]);
    assert!(revs(11, u64::MAX).is_empty());
    let first_two = s.sm.history(1, u64::MAX, 2).unwrap();
    assert_eq!(first_two.len(), 2);
}

/// Large values split a batch's history into several rows, only between revisions, so no
/// row grows into one of sled's separate blob files; reads and crash undo see one sequence.
#[test]
fn large_values_split_history_rows_between_revisions() {
    use prost::Message;
    let mut s = Store::new();
    let big = "x".repeat(100 * 1024);
    s.apply(put("k", "0"));
    let committed = s.state_row();
    let before = (s.all(), s.sm.revision());
    let mut batch: Vec<pb::Command> = (0..6).map(|i| put(&format!("big{i}"), &big)).collect();
    batch.push(txn(
        vec![],
        vec![op_put("t1", &big), op_put("t2", &big), op_put("t3", &big)],
        vec![],
    ));
    s.apply_all(batch);
    let rows: Vec<Vec<u64>> =
        s.sm.shared
            .history
            .iter()
            .values()
            .map(|row| {
                pb::HistoryRow::decode(row.unwrap().as_ref())
                    .unwrap()
                    .events
                    .iter()
                    .map(|e| e.kv.as_ref().unwrap().mod_revision)
                    .collect()
            })
            .collect();
    assert!(rows.len() > 2, "one 1 MiB batch in {} rows", rows.len());
    let flat: Vec<u64> = rows.concat();
    assert_eq!(flat, [1, 2, 3, 4, 5, 6, 7, 8, 8, 8]);
    for pair in rows.windows(2) {
        assert!(
            pair[0].last() < pair[1].first(),
            "a revision split across rows: {rows:?}"
        );
    }
    assert_eq!(s.history(5, 8).len(), 6);
    // The batch's rows are all undone when its `state` row never reached the disk.
    s.lose_state_rows_since(committed);
    let s = s.reopen();
    assert_eq!((s.all(), s.sm.revision()), before);
    assert_eq!(s.history(0, u64::MAX).len(), 1);
}

mod golden;
mod leases;
