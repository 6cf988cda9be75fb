//! Membership changes: the leader admits joining members (learner first, then voter while
//! voters < `max_voters`), removes members (by hand, by the autopilot, or when they leave on
//! purpose), and hands off leadership; a member scaled away leaves before it stops.
//! [`Membership`] holds what these need of the node, and nothing else.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, RaftMetrics, ServerState};
use ordkv_store::{MemberNode, TypeConfig};

use crate::config::Identity;
use crate::error::{Error, Result};
use crate::intent::IntentWatch;
use crate::pb;
use crate::peer::PeerShared;
use crate::replica::{OrdRaft, leader_of, recently_acked};

pub(crate) fn raft_write_err(
    e: RaftError<ordkv_store::TypeConfig, ClientWriteError<ordkv_store::TypeConfig>>,
) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::NotLeader {
            leader_client_addr: f.leader_node.map(|n| n.client_addr),
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Error::Unavailable(e.to_string())
        }
        // Proposed, then the leader changed or stopped: the change may still commit.
        other => Error::OutcomeUnknown(other.to_string()),
    }
}

/// How long the leader waits for a leaving member's removal before it answers "ask again".
const LEAVE_WAIT: Duration = Duration::from_secs(5);
/// How long a join waits for the new learner to catch up before it is promoted; a slower
/// one (a large snapshot) is promoted later by the autopilot.
const PROMOTE_WAIT: Duration = Duration::from_secs(30);

/// Members that asked the leader to remove them (`Peer.Leave`): the autopilot removes them
/// as it removes members scaled away, one change at a time.
#[derive(Default)]
pub(crate) struct LeaveRequests {
    ids: std::sync::Mutex<BTreeSet<u64>>,
    /// Wakes the lifecycle task so a request does not wait for its next tick.
    pub(crate) wake: tokio::sync::Notify,
}

impl LeaveRequests {
    fn ids(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn ask(&self, id: u64) {
        self.ids().insert(id);
        self.wake.notify_one();
    }

    pub(crate) fn contains(&self, id: u64) -> bool {
        self.ids().contains(&id)
    }

    /// Forgets requests of members that are gone from `membership`.
    pub(crate) fn retain(&self, present: impl Fn(u64) -> bool) {
        self.ids().retain(|id| present(*id));
    }
}

/// The node's handle for membership changes. Cloning is cheap.
#[derive(Clone)]
pub(crate) struct Membership {
    raft: OrdRaft,
    node_id: u64,
    ordinal: u32,
    max_voters: usize,
    leave_timeout: Duration,
    intent: IntentWatch,
    /// Members that asked this leader to remove them.
    pub(crate) leave_requests: Arc<LeaveRequests>,
    peer: Arc<PeerShared>,
}

impl Membership {
    pub(crate) fn new(
        raft: OrdRaft,
        identity: &Identity,
        config: &crate::NodeConfig,
        intent: IntentWatch,
        peer: Arc<PeerShared>,
    ) -> Membership {
        Membership {
            raft,
            node_id: peer.node_id,
            ordinal: identity.ordinal,
            max_voters: config.max_voters,
            leave_timeout: config.leave_timeout,
            intent,
            leave_requests: Arc::default(),
            peer,
        }
    }

    pub(crate) fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    pub(crate) fn node_id(&self) -> u64 {
        self.node_id
    }

    pub(crate) fn max_voters(&self) -> usize {
        self.max_voters
    }

    /// The StatefulSet's intended size, as last read.
    pub(crate) fn intent(&self) -> crate::intent::ScaleIntent {
        self.intent.current()
    }

    /// Makes a caught-up learner a voter.
    pub(crate) async fn promote(&self, id: u64) -> Result<()> {
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map(|_| ())
            .map_err(raft_write_err)
    }

    /// Asks openraft to hand leadership to `to` (it returns once the hand-off started).
    pub(crate) async fn start_transfer(&self, to: u64) -> Result<()> {
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(crate::error::node_stopped)
    }

    fn is_leader(&self) -> bool {
        self.metrics().state == ServerState::Leader
    }

    fn leader(&self) -> Option<(u64, MemberNode)> {
        leader_of(&self.metrics())
    }

    /// Leader side of a join.
    pub(crate) async fn admit(&self, member: pb::PeerMember) -> Result<String> {
        if !self.is_leader() {
            return Err(Error::NotLeader {
                leader_client_addr: self.leader().map(|(_, n)| n.client_addr),
            });
        }
        let ordinal = Identity::parse(&member.name)?.ordinal;
        let intent = self.intent.current();
        if intent.removes(ordinal) {
            return Err(Error::Unavailable(format!(
                "{} is scaled away ({intent}); it is not admitted",
                member.name
            )));
        }
        let node = MemberNode {
            name: member.name.clone(),
            peer_addr: member.peer_addr.clone(),
            client_addr: member.client_addr.clone(),
        };
        let m = self.metrics();
        let membership = m.membership_config.membership().clone();
        // An older incarnation of the same member (its volume was wiped) goes first: its id
        // must never count toward a quorum again.
        let stale: BTreeSet<u64> = membership
            .nodes()
            .filter(|(id, n)| n.name == member.name && **id != member.node_id)
            .map(|(id, _)| *id)
            .collect();
        if !stale.is_empty() {
            tracing::warn!(member = %member.name, old = ?stale, new = member.node_id, "replacing an old incarnation");
            self.remove_ids(&stale).await?;
        }
        let mut outcome = Vec::new();
        let present = self
            .metrics()
            .membership_config
            .membership()
            .get_node(&member.node_id)
            .is_some();
        // The entry the learner must have taken before it is promoted.
        let mut must_have = self.metrics().last_log_index.unwrap_or(0);
        if !present {
            tracing::info!(member = %member.name, node_id = member.node_id, "adding a learner");
            let added = self
                .raft
                .add_learner(member.node_id, node, true)
                .await
                .map_err(raft_write_err)?;
            must_have = added.log_id.index;
            outcome.push("added as a learner");
        }
        let voters = self
            .metrics()
            .membership_config
            .membership()
            .voter_ids()
            .count();
        let is_voter = self
            .metrics()
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == member.node_id);
        if !is_voter && voters < self.max_voters {
            // Only a learner that took the log counts toward a quorum: one that refuses it
            // (its data conflicts, see `peer::server::refuse_divergence`) or died after asking
            // would leave a small cluster without a quorum once promoted.
            if self
                .has_taken(member.node_id, must_have, PROMOTE_WAIT)
                .await
            {
                self.raft
                    .change_membership(
                        ChangeMembers::AddVoterIds(BTreeSet::from([member.node_id])),
                        false,
                    )
                    .await
                    .map_err(raft_write_err)?;
                outcome.push("promoted to voter");
            } else {
                outcome.push(
                    "not promoted yet: it has not taken the log (the autopilot promotes it once it has caught up)",
                );
            }
        }
        if outcome.is_empty() {
            outcome.push(if is_voter {
                "already a voter"
            } else {
                "a learner (voters are full)"
            });
        }
        Ok(outcome.join(", "))
    }

    /// Waits up to `wait` until `id` holds the entry at `index`.
    async fn has_taken(&self, id: u64, index: u64, wait: Duration) -> bool {
        self.raft
            .wait(Some(wait))
            .metrics(
                |m| {
                    let matched = m.replication.as_ref().and_then(|r| r.get(&id).cloned());
                    matched.flatten().is_some_and(|l| l.index >= index)
                },
                "the learner took the log",
            )
            .await
            .is_ok()
    }

    /// Removes node ids (voters or learners) from the membership.
    pub(crate) async fn remove_ids(&self, ids: &BTreeSet<u64>) -> Result<()> {
        let membership = self.metrics().membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership
            .voter_ids()
            .filter(|id| ids.contains(id))
            .collect();
        if !voters.is_empty() {
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(voters), false)
                .await
                .map_err(raft_write_err)?;
        }
        let still: BTreeSet<u64> = ids
            .iter()
            .copied()
            .filter(|id| {
                self.metrics()
                    .membership_config
                    .membership()
                    .get_node(id)
                    .is_some()
            })
            .collect();
        if !still.is_empty() {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(still), false)
                .await
                .map_err(raft_write_err)?;
        }
        Ok(())
    }

    /// Node ids of members named `{set}-{ordinal}`.
    fn ids_of_ordinal(&self, ordinal: u32) -> BTreeSet<u64> {
        self.metrics()
            .membership_config
            .membership()
            .nodes()
            .filter(|(_, n)| Identity::parse(&n.name).is_ok_and(|i| i.ordinal == ordinal))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether removing `ids` leaves the remaining voters able to form a quorum among the
    /// members the leader currently reaches.
    fn keeps_quorum(&self, ids: &BTreeSet<u64>) -> bool {
        let m = self.metrics();
        let remaining: Vec<u64> = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| !ids.contains(id))
            .collect();
        let reached = recently_acked(&m);
        let alive = remaining
            .iter()
            .filter(|id| **id == self.node_id || reached.contains(id))
            .count();
        !remaining.is_empty() && alive > remaining.len() / 2
    }

    /// `ordkv cluster remove <ordinal>`.
    pub(crate) async fn remove_ordinal(&self, ordinal: u32) -> Result<String> {
        if !self.is_leader() {
            return Err(Error::NotLeader {
                leader_client_addr: self.leader().map(|(_, n)| n.client_addr),
            });
        }
        let ids = self.ids_of_ordinal(ordinal);
        if ids.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "no member has ordinal {ordinal}"
            )));
        }
        if ids.contains(&self.node_id) {
            return Err(Error::InvalidArgument(
                "the leader cannot remove itself; transfer leadership first".into(),
            ));
        }
        if !self.keeps_quorum(&ids) {
            return Err(Error::Unavailable(format!(
                "removing ordinal {ordinal} would leave the remaining voters without a reachable quorum"
            )));
        }
        self.remove_ids(&ids).await?;
        Ok(format!("removed ordinal {ordinal} (node ids {ids:?})"))
    }

    /// `ordkv cluster transfer-leader <ordinal>`.
    pub(crate) async fn transfer_to_ordinal(&self, ordinal: u32) -> Result<String> {
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let Some(target) = membership
            .voter_ids()
            .find(|id| self.ids_of_ordinal(ordinal).contains(id))
        else {
            return Err(Error::InvalidArgument(format!(
                "no voter has ordinal {ordinal}"
            )));
        };
        if m.current_leader == Some(target) {
            return Ok(format!("ordinal {ordinal} already leads"));
        }
        if !self.is_leader() {
            return Err(Error::NotLeader {
                leader_client_addr: self.leader().map(|(_, n)| n.client_addr),
            });
        }
        self.raft
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        self.raft
            .wait(Some(Duration::from_secs(5)))
            .metrics(|m| m.current_leader == Some(target), "leadership moved")
            .await
            .map_err(|e| {
                Error::OutcomeUnknown(format!(
                    "leadership did not move in time ({e}); it may still: see `cluster status`"
                ))
            })?;
        Ok(format!("ordinal {ordinal} leads"))
    }

    /// Leader side of `Peer.Leave`: the autopilot removes the member (one change at a time,
    /// never below a reachable quorum); answers once it is gone from the membership.
    pub(crate) async fn remove_leaving(&self, node_id: u64, name: &str) -> Result<String> {
        if !self.is_leader() {
            return Err(Error::NotLeader {
                leader_client_addr: self.leader().map(|(_, n)| n.client_addr),
            });
        }
        let present = self
            .metrics()
            .membership_config
            .membership()
            .get_node(&node_id)
            .is_some();
        if !present {
            return Ok("not a member".into());
        }
        if node_id == self.node_id {
            return Err(Error::InvalidArgument(
                "the leader cannot remove itself; it hands off leadership first".into(),
            ));
        }
        tracing::info!(member = %name, node_id, "a member asks to leave (scaled down)");
        self.leave_requests.ask(node_id);
        let removed = self
            .raft
            .wait(Some(LEAVE_WAIT))
            .metrics(
                |m| {
                    m.membership_config
                        .membership()
                        .get_node(&node_id)
                        .is_none()
                },
                "the member is removed",
            )
            .await;
        match removed {
            Ok(_) => Ok("removed".into()),
            Err(_) => Err(Error::Unavailable(format!(
                "{name} is not removed yet (members leave one at a time, and only while a quorum stays reachable); ask again"
            ))),
        }
    }

    /// On shutdown of a member that its StatefulSet scaled away (ordinal >= `spec.replicas` >
    /// 0): hands off leadership if it leads, asks the leader to remove it, and waits until it
    /// is removed or `leave_timeout` ran out. A member below the count (a restart, a rolling
    /// update, a drain) keeps its membership.
    pub(crate) async fn leave_if_scaled_away(&self) {
        let intent = self.intent.fresh().await;
        let ordinal = self.ordinal;
        let Some(replicas) = intent.replicas().filter(|_| intent.removes(ordinal)) else {
            return;
        };
        tracing::info!(
            replicas,
            ordinal,
            "leaving: scaled to {replicas}, my ordinal is {ordinal}"
        );
        let deadline = tokio::time::Instant::now() + self.leave_timeout;
        let mut last_error = String::new();
        while tokio::time::Instant::now() < deadline {
            match self.leader() {
                Some((leader, _)) if leader == self.node_id => {
                    // The autopilot hands off to a member that stays; wait for it.
                    self.leave_requests.ask(self.node_id);
                    self.led_by_another(Duration::from_secs(2)).await;
                    continue;
                }
                Some((_, leader)) => match self.peer.leave(&leader, LEAVE_WAIT).await {
                    Ok(outcome) => {
                        tracing::info!(%outcome, leader = %leader.name, "left the cluster");
                        return;
                    }
                    Err(e) => last_error = e.to_string(),
                },
                None => last_error = "no leader known".into(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::warn!(
            timeout = ?self.leave_timeout,
            error = %last_error,
            "not removed before stopping; the leader removes this member by scale intent once it is gone"
        );
    }

    /// On shutdown: if this node leads, hand leadership to the most caught-up voter.
    pub(crate) async fn hand_off_leadership(&self) {
        let m = self.metrics();
        if m.current_leader != Some(self.node_id) {
            return;
        }
        let matched = m.replication.clone().unwrap_or_default();
        let reached = recently_acked(&m);
        let best = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|id| *id != self.node_id && reached.contains(id))
            .filter_map(|id| matched.get(&id).cloned().flatten().map(|l| (l.index, id)))
            .max();
        let Some((_, target)) = best else { return };
        if self.raft.trigger().transfer_leader(target).await.is_ok() {
            let moved = self.led_by_another(Duration::from_secs(3)).await;
            tracing::info!(to = target, ok = moved, "handed off leadership");
        }
    }

    /// Waits up to `within` until another member leads; whether one does.
    async fn led_by_another(&self, within: Duration) -> bool {
        self.raft
            .wait(Some(within))
            .metrics(
                |m| m.current_leader != Some(self.node_id),
                "leadership handed off",
            )
            .await
            .is_ok()
    }
}
