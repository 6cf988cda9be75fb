//! This member's Raft node and store as one small handle: what it has committed and
//! applied, who leads, whether it is a member and whether it must stop. Writes, reads,
//! status and the lifecycle all start from a [`Replica`]; none of them needs the node.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::{Raft, RaftMetrics, ServerState};
use ordkv_store::{LogStore, MemberNode, StateMachine, TypeConfig};

use crate::catch_up::LeaderCommits;
use crate::error::{Error, Result};
use crate::peer::PeerShared;

pub(crate) type OrdRaft = Raft<TypeConfig, StateMachine>;

/// A member that acknowledged the leader within this long counts as reachable.
pub(crate) const REACHABLE_WITHIN: Duration = Duration::from_secs(3);

/// A point-in-time view of the node for health checks and metrics.
#[derive(Debug, Clone, Default)]
pub struct NodeStatus {
    /// This member's name.
    pub member: String,
    /// Raft term.
    pub term: u64,
    /// Last committed log index.
    pub commit_index: u64,
    /// Last applied log index.
    pub applied_index: u64,
    /// Last log index on this node.
    pub last_log_index: u64,
    /// Current store revision.
    pub revision: u64,
    /// Oldest revision still in watch history.
    pub compact_revision: u64,
    /// Whether this node is the leader.
    pub is_leader: bool,
    /// Whether a leader is known.
    pub leader_known: bool,
    /// Whether this node is a member of the cluster's configuration.
    pub is_member: bool,
    /// Whether this node is a voter.
    pub is_voter: bool,
    /// sled's size on disk.
    pub db_size_bytes: u64,
    /// Set once the node hit a fatal error (e.g. a failed fsync).
    pub fatal: Option<String>,
    /// On a follower: the leader's commit index it must have applied to be caught up (see
    /// `catch_up`); `None` until the leader was asked.
    pub leader_commit_index: Option<u64>,
}

impl NodeStatus {
    /// Why a node with this status is not ready, or `None` when it is.
    pub fn not_ready_reason(&self) -> Option<String> {
        if let Some(fatal) = &self.fatal {
            Some(format!("fatal: {fatal}"))
        } else if !self.is_member {
            Some("not a member".to_string())
        } else if !self.leader_known {
            Some("no leader".to_string())
        } else if self.applied_index < self.commit_index {
            Some(format!(
                "catching up: applied {} < commit {}",
                self.applied_index, self.commit_index
            ))
        } else if self.is_leader {
            None
        } else {
            match self.leader_commit_index {
                None => Some("catching up: the leader's commit index is not known yet".into()),
                Some(c) if self.applied_index < c => Some(format!(
                    "catching up: applied {} of the leader's {c}",
                    self.applied_index
                )),
                Some(_) => None,
            }
        }
    }
}

/// This member's Raft node, store and peer identity. Cloning is cheap.
#[derive(Clone)]
pub(crate) struct Replica {
    pub(crate) raft: OrdRaft,
    pub(crate) sm: StateMachine,
    /// The Raft log, read to compare the leader's entries with the ones applied here.
    pub(crate) log: LogStore,
    /// Node id, name and cluster id as peers see them, and whether this member was removed.
    pub(crate) peer: Arc<PeerShared>,
    /// Set when the node cannot go on (e.g. its data belongs to another cluster).
    fatal: Arc<OnceLock<String>>,
    /// What the leader committed, as this follower learned it (readiness).
    pub(crate) leader_commits: Arc<LeaderCommits>,
}

impl Replica {
    pub(crate) fn new(
        raft: OrdRaft,
        sm: StateMachine,
        log: LogStore,
        peer: Arc<PeerShared>,
    ) -> Replica {
        Replica {
            raft,
            sm,
            log,
            peer,
            fatal: Default::default(),
            leader_commits: Default::default(),
        }
    }

    pub(crate) fn node_id(&self) -> u64 {
        self.peer.node_id
    }

    /// This member's name.
    pub(crate) fn name(&self) -> &str {
        &self.peer.name
    }

    pub(crate) fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// The leader's node record, when one is known.
    pub(crate) fn leader(&self) -> Option<(u64, MemberNode)> {
        leader_of(&self.metrics())
    }

    /// Whether the leader told this member it was removed (until it is admitted again).
    pub(crate) fn removed(&self) -> bool {
        self.peer.removed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops the node for good with this reason (`Node::fatal` reports it).
    pub(crate) fn set_fatal(&self, reason: String) {
        let _ = self.fatal.set(reason);
    }

    /// Why the node must stop, if it must.
    pub(crate) fn fatal_reason(&self, m: &RaftMetrics<TypeConfig>) -> Option<String> {
        match (&m.running_state, self.sm.storage_failed(), self.fatal.get()) {
            (Err(e), _, _) => Some(e.to_string()),
            (_, true, _) => Some("a storage flush failed".into()),
            (_, _, Some(f)) => Some(f.clone()),
            _ => None,
        }
    }

    pub(crate) fn status(&self) -> NodeStatus {
        let m = self.metrics();
        let sm = &self.sm;
        let fatal = self.fatal_reason(&m);
        let membership = m.membership_config.membership();
        let node_id = self.node_id();
        NodeStatus {
            member: self.name().to_string(),
            term: m.current_term,
            commit_index: m.local_committed.as_ref().map_or(0, |l| l.index),
            applied_index: m.last_applied.as_ref().map_or(0, |l| l.index),
            last_log_index: m.last_log_index.unwrap_or(0),
            revision: sm.revision(),
            compact_revision: sm.compact_revision(),
            is_leader: m.state == ServerState::Leader,
            leader_known: m.current_leader.is_some(),
            // A member told it was removed is not one until re-admitted.
            is_member: membership.get_node(&node_id).is_some() && !self.removed(),
            is_voter: membership.voter_ids().any(|id| id == node_id),
            db_size_bytes: sm.size_on_disk(),
            fatal,
            leader_commit_index: self.leader_commits.target(m.current_leader),
        }
    }

    /// Waits (up to `wait`) until some leader is known.
    pub(crate) async fn wait_for_leader(&self, wait: Duration) -> Result<()> {
        self.raft
            .wait(Some(wait))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await
            .map(|_| ())
            .map_err(|_| {
                Error::Unavailable(format!(
                    "no leader is known after {wait:?}; the cluster may have lost its quorum"
                ))
            })
    }
}

/// The leader's id and node record in `m`, when one is known.
pub(crate) fn leader_of(m: &RaftMetrics<TypeConfig>) -> Option<(u64, MemberNode)> {
    let id = m.current_leader?;
    let node = m.membership_config.membership().get_node(&id)?.clone();
    Some((id, node))
}

/// The members that acknowledged the leader's heartbeats or appends recently (only the
/// leader knows; elsewhere this is empty).
pub(crate) fn recently_acked(m: &RaftMetrics<TypeConfig>) -> BTreeSet<u64> {
    use openraft::Instant as _;
    m.heartbeat
        .iter()
        .flatten()
        .filter(|(_, at)| {
            at.as_ref()
                .is_some_and(|at| at.elapsed() < REACHABLE_WITHIN)
        })
        .map(|(id, _)| *id)
        .collect()
}
