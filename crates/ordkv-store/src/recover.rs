//! Recovery from a permanent loss of quorum: one member's log gets a membership entry that
//! makes it the only voter (etcd's `--force-new-cluster`, rqlite's `peers.json`).
//!
//! The entry is appended after the member's last entry, in a term above every term this
//! member has seen, led by itself: so no other member can hold a different entry under the
//! same log id (Raft's log matching still holds against members that come back with old
//! data), and openraft, which takes the membership from the last membership entry in the
//! log, starts the member as the only voter. It elects itself in the next term; its first
//! entry there commits everything before it, including entries the old cluster had not
//! committed. Writes that a quorum without this member acknowledged are lost: that is what
//! the operator accepts by recovering, and why the caller reports the others' revisions.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use openraft::entry::RaftEntry;
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::vote::{RaftLeaderId, RaftLeaderIdExt};
use openraft::{EntryPayload, Membership, RaftLogReader};

use crate::log_store::LogStore;
use crate::state_machine::StateMachine;
use crate::types::{Entry, LogId, MemberNode, NodeId, TypeConfig, Vote};

/// What a recovery found and wrote.
#[derive(Debug, Clone)]
pub struct Recovered {
    /// The voters of the latest membership before the recovery.
    pub previous_voters: BTreeSet<NodeId>,
    /// The last entry applied to the state machine, and its revision: what a read serves
    /// right after the start, before the entries after it are applied.
    pub applied: Option<LogId>,
    pub revision: u64,
    /// The last entry in the log before the recovery: entries after `applied` up to it are
    /// applied once the member leads.
    pub last_log: Option<LogId>,
    /// The membership entry written.
    pub membership_entry: LogId,
}

fn term_of(log_id: &LogId) -> u64 {
    log_id.leader_id.term
}

/// The membership the member would start with: the last one in its log, applied or not.
pub async fn latest_membership(
    log: &mut LogStore,
    sm: &mut StateMachine,
) -> io::Result<Membership<NodeId, MemberNode>> {
    let (applied, stored) = sm.applied_state().await?;
    let mut membership = stored.membership().clone();
    for entry in log
        .try_get_log_entries(applied.map_or(0, |l| l.index + 1)..)
        .await?
    {
        if let EntryPayload::Membership(m) = entry.payload {
            membership = m;
        }
    }
    Ok(membership)
}

/// Makes `node_id` the only voter of its cluster, as described in the module documentation.
/// The store must not be in use by a running member.
pub async fn make_sole_voter(
    log: &mut LogStore,
    sm: &mut StateMachine,
    node_id: NodeId,
    me: MemberNode,
) -> io::Result<Recovered> {
    let (applied, _) = sm.applied_state().await?;
    let last_log = log.get_log_state().await?.last_log_id;
    let membership = latest_membership(log, sm).await?;
    if membership.get_node(&node_id).is_none() {
        tracing::warn!(
            node_id,
            "this member is not in its latest membership: it was removed or never admitted; recovering it anyway"
        );
    }
    let vote = log.read_vote().await?;
    let seen = vote
        .map(|v| v.leader_id().term())
        .into_iter()
        .chain(last_log.as_ref().map(term_of))
        .max()
        .unwrap_or(0);
    let term = seen + 1;
    let index = last_log.map_or(0, |l| l.index + 1);
    let membership_entry = LogId::new(
        <TypeConfig as openraft::RaftTypeConfig>::LeaderId::new_committed(term, node_id),
        index,
    );
    let sole = Membership::new(
        vec![BTreeSet::from([node_id])],
        BTreeMap::from([(node_id, me)]),
    )
    .map_err(io::Error::other)?;
    // The vote first: an entry in a term above the vote is one this member never granted.
    log.save_vote(&Vote::new(term, node_id)).await?;
    log.append_durably(vec![Entry::new_membership(membership_entry, sole)])
        .await?;
    Ok(Recovered {
        previous_voters: membership.voter_ids().collect(),
        applied,
        revision: sm.revision(),
        last_log,
        membership_entry,
    })
}

#[cfg(test)]
mod tests {
    use openraft::storage::IOFlushed;
    use openraft::testing::log_id;
    use tempfile::TempDir;

    use super::*;
    use crate::conformance::test_options;

    fn member(name: &str) -> MemberNode {
        MemberNode {
            name: name.into(),
            peer_addr: format!("{name}:7380"),
            client_addr: format!("{name}:7379"),
        }
    }

    fn three() -> Membership<NodeId, MemberNode> {
        let nodes: BTreeMap<NodeId, MemberNode> =
            (1..=3).map(|i| (i, member(&format!("kv-{i}")))).collect();
        Membership::new(vec![nodes.keys().copied().collect()], nodes).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_member_becomes_the_only_voter_in_a_term_above_all_it_saw() {
        let dir = TempDir::new().unwrap();
        let (mut log, mut sm) = crate::open(dir.path(), &test_options()).unwrap();
        let mut entries = vec![Entry::new_membership(
            log_id::<TypeConfig>(1, 1, 1),
            three(),
        )];
        entries.extend((2..=5).map(|i| Entry::new_blank(log_id::<TypeConfig>(2, 3, i))));
        log.append(entries, IOFlushed::noop()).await.unwrap();
        log.save_vote(&Vote::new(4, 3)).await.unwrap();

        let got = make_sole_voter(&mut log, &mut sm, 2, member("kv-2"))
            .await
            .unwrap();
        assert_eq!(got.previous_voters, BTreeSet::from([1, 2, 3]));
        assert_eq!(got.last_log, Some(log_id::<TypeConfig>(2, 3, 5)));
        // Term 5: above the vote's 4, led by the recovered member.
        assert_eq!(got.membership_entry, log_id::<TypeConfig>(5, 2, 6));
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(5, 2)));
        let last = log.try_get_log_entries(6..7).await.unwrap();
        let EntryPayload::Membership(m) = &last[0].payload else {
            panic!("expected a membership entry, got {:?}", last[0].payload);
        };
        assert_eq!(m.voter_ids().collect::<Vec<_>>(), vec![2]);
        assert_eq!(m.nodes().count(), 1);
    }
}
