//! Leases in the state machine: grant, attach, detach on overwrite, revoke, crash undo,
//! snapshots, and a property test against a model.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::LeaseChange;

fn grant(ttl: i64, id: u64) -> pb::Command {
    pb::Command {
        op: Some(Op::LeaseGrant(pb::LeaseGrantRequest { ttl, id })),
    }
}

fn revoke(id: u64) -> pb::Command {
    pb::Command {
        op: Some(Op::LeaseRevoke(pb::LeaseRevokeCommand {
            id,
            ..Default::default()
        })),
    }
}

fn put_leased(key: &str, value: &str, lease: u64) -> pb::Command {
    pb::Command {
        op: Some(Op::Put(pb::PutRequest {
            lease,
            ..put_req(key, value)
        })),
    }
}

fn granted(r: &pb::CommandResponse) -> u64 {
    match &r.result {
        Some(R::LeaseGrant(g)) => g.id,
        other => panic!("not a grant: {other:?} ({})", r.error),
    }
}

fn revoked(r: &pb::CommandResponse) -> u64 {
    match &r.result {
        Some(R::LeaseRevoke(g)) => g.deleted,
        other => panic!("not a revoke: {other:?} ({})", r.error),
    }
}

fn kind(r: &pb::CommandResponse) -> pb::CommandError {
    assert!(!r.error.is_empty(), "expected a refusal, got {r:?}");
    pb::CommandError::try_from(r.error_kind).expect("known error kind")
}

impl Store {
    fn lease_keys(&self, id: u64) -> Vec<String> {
        let (_, keys, _) = self.sm.lease(id, true).expect("lease");
        keys.iter()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    }

    fn ttl(&self, id: u64) -> Option<i64> {
        self.sm.lease(id, false).expect("lease").0
    }

    /// Every lease with its keys, read both ways: from the lease index and from the keys'
    /// records, which must agree.
    fn lease_view(&self) -> BTreeMap<u64, (i64, Vec<String>)> {
        let (leases, _) = self.sm.leases().expect("leases");
        let view: BTreeMap<u64, (i64, Vec<String>)> = leases
            .into_iter()
            .map(|(id, ttl)| (id, (ttl, self.lease_keys(id))))
            .collect();
        let mut from_records: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for kv in self.all().into_iter().filter(|kv| kv.lease != 0) {
            from_records
                .entry(kv.lease)
                .or_default()
                .push(String::from_utf8_lossy(&kv.key).into_owned());
        }
        for (id, keys) in &from_records {
            assert!(
                view.contains_key(id),
                "a key names lease {id}, which is gone"
            );
            assert_eq!(
                &view[id].1, keys,
                "lease {id}'s index and its keys' records differ"
            );
        }
        let indexed: usize = view.values().map(|(_, keys)| keys.len()).sum();
        assert_eq!(indexed, from_records.values().map(Vec::len).sum::<usize>());
        view
    }
}

#[test]
fn a_grant_picks_the_entry_index_or_takes_the_id_asked_for() {
    let mut s = Store::new();
    s.apply(put("a", "1"));
    let r = s.apply(grant(10, 0));
    assert_eq!(granted(&r), 2, "the log index of the grant");
    assert_eq!(r.revision, 1, "a grant creates no revision");
    assert_eq!(granted(&s.apply(grant(5, 4))), 4);
    // Index 4 is taken by the explicit id, so the next pick moves on.
    assert_eq!(s.next_index, 4);
    assert_eq!(granted(&s.apply(grant(7, 0))), 5);
    assert_eq!(kind(&s.apply(grant(5, 4))), pb::CommandError::LeaseExists);
    assert_eq!(kind(&s.apply(grant(0, 0))), pb::CommandError::Invalid);
    assert_eq!(kind(&s.apply(grant(-3, 0))), pb::CommandError::Invalid);
    assert_eq!(s.ttl(2), Some(10));
    assert_eq!(s.ttl(4), Some(5));
    assert_eq!(s.ttl(3), None);
    assert_eq!(s.sm.leases().unwrap().0, [(2, 10), (4, 5), (5, 7)]);
}

#[test]
fn a_put_on_an_unknown_lease_changes_nothing() {
    let mut s = Store::new();
    s.apply(put("a", "1"));
    let r = s.apply(put_leased("a", "2", 99));
    assert_eq!(kind(&r), pb::CommandError::LeaseNotFound);
    assert!(r.error.contains("lease 99 not found"), "{}", r.error);
    assert_eq!(r.revision, 1);
    assert_eq!(s.get("a"), Some(kv("a", "1", 1, 1, 1)));
    // In a Txn, the whole branch is refused, even its other writes.
    let id = granted(&s.apply(grant(10, 0)));
    let r = s.apply(txn(
        vec![],
        vec![
            op_put("b", "1"),
            pb::RequestOp {
                request: Some(Q::Put(pb::PutRequest {
                    lease: 98,
                    ..put_req("c", "1")
                })),
            },
        ],
        vec![],
    ));
    assert_eq!(kind(&r), pb::CommandError::LeaseNotFound);
    assert_eq!((s.get("b"), s.get("c"), s.sm.revision()), (None, None, 1));
    // A put on a revoked lease is refused the same way.
    s.apply(revoke(id));
    assert_eq!(
        kind(&s.apply(put_leased("d", "1", id))),
        pb::CommandError::LeaseNotFound
    );
}

#[test]
fn keys_move_between_leases_on_overwrite_and_leave_them_on_delete() {
    let mut s = Store::new();
    let l1 = granted(&s.apply(grant(10, 0)));
    let l2 = granted(&s.apply(grant(10, 0)));
    s.apply(put_leased("a", "1", l1));
    s.apply(put_leased("b", "1", l1));
    s.apply(put_leased("c", "1", l2));
    assert_eq!(s.get("a").unwrap().lease, l1);
    assert_eq!(s.lease_keys(l1), ["a", "b"]);
    // Overwritten with another lease: moves. Without a lease: detached.
    s.apply(put_leased("a", "2", l2));
    s.apply(put("b", "2"));
    assert_eq!(s.lease_keys(l1), Vec::<String>::new());
    assert_eq!(s.lease_keys(l2), ["a", "c"]);
    assert_eq!(s.get("b").unwrap().lease, 0);
    s.apply(del(del_key("c")));
    assert_eq!(s.lease_keys(l2), ["a"]);
    s.lease_view();
}

#[test]
fn a_revoke_deletes_the_lease_keys_in_one_revision_that_watchers_see() {
    let mut s = Store::new();
    let id = granted(&s.apply(grant(10, 0)));
    let other = granted(&s.apply(grant(10, 0)));
    s.apply(put_leased("x/1", "1", id));
    s.apply(put_leased("x/2", "1", id));
    s.apply(put_leased("y", "1", other));
    s.apply(put("z", "1"));
    let mut rx = s.sm.subscribe_leases().unwrap().changes;
    let r = s.apply(revoke(id));
    assert_eq!(revoked(&r), 2);
    assert_eq!(r.revision, 5, "both deletes share one revision");
    assert_eq!(keys(&s.all()), ["y", "z"]);
    assert_eq!(
        events(&s.history(5, 5)),
        [ev("DELETE", "x/1", 5), ev("DELETE", "x/2", 5)]
    );
    assert_eq!(s.ttl(id), None);
    let changes = rx.try_recv().unwrap().expect("changes, not a reset");
    assert_eq!(*changes, [LeaseChange::Ended { id }]);
    // Again: not found. A lease without keys ends without a revision.
    assert_eq!(kind(&s.apply(revoke(id))), pb::CommandError::LeaseNotFound);
    s.apply(del(del_key("y")));
    let r = s.apply(revoke(other));
    assert_eq!((revoked(&r), r.revision), (0, 6));
    assert!(s.sm.leases().unwrap().0.is_empty());
}

/// The leader's expiry revokes many leases in one entry: their keys all go at one revision,
/// and leases revoked meanwhile are skipped.
#[test]
fn an_expiry_entry_ends_many_leases_at_one_revision() {
    let mut s = Store::new();
    let a = granted(&s.apply(grant(10, 0)));
    let b = granted(&s.apply(grant(10, 0)));
    let kept = granted(&s.apply(grant(10, 0)));
    s.apply(put_leased("a/1", "1", a));
    s.apply(put_leased("a/2", "1", a));
    s.apply(put_leased("b/1", "1", b));
    s.apply(put_leased("kept", "1", kept));
    let mut rx = s.sm.subscribe_leases().unwrap().changes;
    let r = s.apply(pb::Command {
        op: Some(Op::LeaseRevoke(pb::LeaseRevokeCommand {
            id: 0,
            expired: true,
            expired_ids: vec![a, 999, b],
        })),
    });
    assert_eq!((revoked(&r), r.revision), (3, 5));
    assert!(r.error.is_empty(), "{}", r.error);
    assert_eq!(keys(&s.all()), ["kept"]);
    assert_eq!(
        *rx.try_recv().unwrap().unwrap(),
        [LeaseChange::Ended { id: a }, LeaseChange::Ended { id: b }]
    );
    assert_eq!(s.sm.leases().unwrap().0, [(kept, 10)]);
    assert_eq!(s.sm.lease_count(), 1);
}

#[test]
fn leases_survive_a_reopen_and_a_crash_mid_batch_is_undone() {
    let mut s = Store::new();
    let id = granted(&s.apply(grant(10, 0)));
    s.apply(put_leased("a", "1", id));
    s.apply(put_leased("b", "1", id));
    let before = (s.all(), s.lease_view());
    let s = s.reopen();
    assert_eq!((s.all(), s.lease_view()), before);

    // A batch that revokes, grants and attaches, whose `state` row never reached the disk.
    let mut s = s;
    let committed = s.state_row();
    s.apply_all(vec![revoke(id), grant(3, 77), put_leased("c", "1", 77)]);
    assert_eq!(s.lease_view().keys().collect::<Vec<_>>(), [&77]);
    s.lose_state_rows_since(committed);
    let mut s = s.reopen();
    assert_eq!((s.all(), s.lease_view()), before);
    // Re-applied from the log, it ends the same way as the first time.
    s.next_index -= 3;
    s.apply_all(vec![revoke(id), grant(3, 77), put_leased("c", "1", 77)]);
    assert_eq!(keys(&s.all()), ["c"]);
    assert_eq!(s.lease_view()[&77], (3, vec!["c".to_string()]));
}

#[tokio::test]
async fn a_snapshot_carries_leases_and_their_keys() {
    let mut a = Store::new();
    let l1 = granted(&a.apply(grant(10, 0)));
    let l2 = granted(&a.apply(grant(20, 0)));
    a.apply(put_leased("a", "1", l1));
    a.apply(put_leased("b", "1", l2));
    a.apply(put("c", "1"));
    let snap = RaftSnapshotBuilder::build_snapshot(&mut a.sm.clone())
        .await
        .expect("build snapshot");
    assert_eq!(
        crate::verify_snapshot(&snap.snapshot.path).unwrap().leases,
        2
    );
    let mut b = Store::new();
    let stale = granted(&b.apply(grant(5, 500)));
    b.apply(put_leased("stale", "1", stale));
    let mut rx = b.sm.subscribe_leases().unwrap().changes;
    b.install(snap).await;
    assert!(
        rx.try_recv().unwrap().is_none(),
        "an install resets the leases"
    );
    assert_eq!(b.lease_view(), a.lease_view());
    // B revokes as A would.
    b.next_index = a.next_index;
    let rb = b.apply(revoke(l1));
    let ra = a.apply(revoke(l1));
    assert_eq!(rb, ra);
    assert_eq!(b.all(), a.all());
}

#[derive(Debug, Clone)]
enum LeaseAction {
    Grant(u64),
    Revoke(u64),
    Put(u8, u64),
    Delete(u8),
}

fn lease_action() -> impl Strategy<Value = LeaseAction> {
    prop_oneof![
        (0u64..4).prop_map(LeaseAction::Grant),
        (0u64..4).prop_map(LeaseAction::Revoke),
        (0u8..6, 0u64..4).prop_map(|(k, l)| LeaseAction::Put(k, l)),
        (0u8..6).prop_map(LeaseAction::Delete),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random grants, revokes, leased puts and deletes, in random batches, against a model:
    /// the keys, their leases and the lease index always agree, also after a reopen.
    #[test]
    fn leases_match_a_model(batches in prop::collection::vec(prop::collection::vec(lease_action(), 1..6), 1..12)) {
        let mut s = Store::new();
        let mut leases: BTreeSet<u64> = BTreeSet::new();
        let mut keys: BTreeMap<String, u64> = BTreeMap::new();
        for batch in batches {
            let cmds = batch.iter().map(|a| match *a {
                LeaseAction::Grant(id) => grant(5, 100 + id),
                LeaseAction::Revoke(id) => revoke(100 + id),
                LeaseAction::Put(k, 0) => put(&format!("k{k}"), "v"),
                LeaseAction::Put(k, id) => put_leased(&format!("k{k}"), "v", 100 + id),
                LeaseAction::Delete(k) => del(del_key(&format!("k{k}"))),
            }).collect();
            let resps = s.apply_all(cmds);
            for (a, r) in batch.iter().zip(&resps) {
                let ok = match *a {
                    LeaseAction::Grant(id) => leases.insert(100 + id),
                    LeaseAction::Revoke(id) => {
                        let ok = leases.remove(&(100 + id));
                        if ok {
                            keys.retain(|_, l| *l != 100 + id);
                        }
                        ok
                    }
                    LeaseAction::Put(k, id) => {
                        let lease = if id == 0 { 0 } else { 100 + id };
                        let ok = lease == 0 || leases.contains(&lease);
                        if ok {
                            keys.insert(format!("k{k}"), lease);
                        }
                        ok
                    }
                    LeaseAction::Delete(k) => {
                        keys.remove(&format!("k{k}"));
                        true
                    }
                };
                prop_assert_eq!(ok, r.error.is_empty(), "{:?} -> {:?}", a, r);
            }
            let got: BTreeMap<String, u64> = s.all().into_iter()
                .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.lease))
                .collect();
            prop_assert_eq!(&got, &keys);
            let view = s.lease_view();
            prop_assert_eq!(view.keys().copied().collect::<BTreeSet<_>>(), leases.clone());
        }
        let view = s.lease_view();
        let s = s.reopen();
        prop_assert_eq!(s.lease_view(), view);
    }
}
