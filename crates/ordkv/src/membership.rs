//! Membership changes: the leader admits joining members (learner first, then voter while
//! voters < `max_voters`), removes members (by hand, by the autopilot, or when they leave on
//! purpose), and hands off leadership; a member scaled away leaves before it stops.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::error::{ClientWriteError, RaftError};
use ordkv_store::MemberNode;

use crate::config::Identity;
use crate::error::{Error, Result};
use crate::node::Inner;
use crate::pb;

pub(crate) fn raft_write_err(
    e: RaftError<ordkv_store::TypeConfig, ClientWriteError<ordkv_store::TypeConfig>>,
) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::NotLeader {
            leader_client_addr: f.leader_node.map(|n| n.client_addr),
        },
        other => Error::Unavailable(other.to_string()),
    }
}

/// Leader side of a join.
pub(crate) async fn admit(inner: &Inner, member: pb::PeerMember) -> Result<String> {
    if !inner.status().is_leader {
        return Err(Error::NotLeader {
            leader_client_addr: inner.leader().map(|(_, n)| n.client_addr),
        });
    }
    let ordinal = Identity::parse(&member.name)?.ordinal;
    let intent = inner.intent.current();
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
    let m = inner.metrics();
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
        remove_ids(inner, &stale).await?;
    }
    let mut outcome = Vec::new();
    let present = inner
        .metrics()
        .membership_config
        .membership()
        .get_node(&member.node_id)
        .is_some();
    if !present {
        tracing::info!(member = %member.name, node_id = member.node_id, "adding a learner");
        inner
            .raft
            .add_learner(member.node_id, node, true)
            .await
            .map_err(raft_write_err)?;
        outcome.push("added as a learner");
    }
    let voters = inner
        .metrics()
        .membership_config
        .membership()
        .voter_ids()
        .count();
    let is_voter = inner
        .metrics()
        .membership_config
        .membership()
        .voter_ids()
        .any(|id| id == member.node_id);
    if !is_voter && voters < inner.config.max_voters {
        inner
            .raft
            .change_membership(
                ChangeMembers::AddVoterIds(BTreeSet::from([member.node_id])),
                false,
            )
            .await
            .map_err(raft_write_err)?;
        outcome.push("promoted to voter");
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

/// Removes node ids (voters or learners) from the membership.
pub(crate) async fn remove_ids(inner: &Inner, ids: &BTreeSet<u64>) -> Result<()> {
    let membership = inner.metrics().membership_config.membership().clone();
    let voters: BTreeSet<u64> = membership
        .voter_ids()
        .filter(|id| ids.contains(id))
        .collect();
    if !voters.is_empty() {
        inner
            .raft
            .change_membership(ChangeMembers::RemoveVoters(voters), false)
            .await
            .map_err(raft_write_err)?;
    }
    let still: BTreeSet<u64> = ids
        .iter()
        .copied()
        .filter(|id| {
            inner
                .metrics()
                .membership_config
                .membership()
                .get_node(id)
                .is_some()
        })
        .collect();
    if !still.is_empty() {
        inner
            .raft
            .change_membership(ChangeMembers::RemoveNodes(still), false)
            .await
            .map_err(raft_write_err)?;
    }
    Ok(())
}

/// Node ids of members named `{set}-{ordinal}`.
fn ids_of_ordinal(inner: &Inner, ordinal: u32) -> BTreeSet<u64> {
    inner
        .metrics()
        .membership_config
        .membership()
        .nodes()
        .filter(|(_, n)| Identity::parse(&n.name).is_ok_and(|i| i.ordinal == ordinal))
        .map(|(id, _)| *id)
        .collect()
}

/// Whether removing `ids` leaves the remaining voters able to form a quorum among the
/// members the leader currently reaches.
fn keeps_quorum(inner: &Inner, ids: &BTreeSet<u64>) -> bool {
    let m = inner.metrics();
    let remaining: Vec<u64> = m
        .membership_config
        .membership()
        .voter_ids()
        .filter(|id| !ids.contains(id))
        .collect();
    let reached = crate::autopilot::recently_acked(&m);
    let alive = remaining
        .iter()
        .filter(|id| **id == inner.node_id || reached.contains(id))
        .count();
    !remaining.is_empty() && alive > remaining.len() / 2
}

/// `ordkv cluster remove <ordinal>`.
pub(crate) async fn remove_ordinal(inner: &Inner, ordinal: u32) -> Result<String> {
    if !inner.status().is_leader {
        return Err(Error::NotLeader {
            leader_client_addr: inner.leader().map(|(_, n)| n.client_addr),
        });
    }
    let ids = ids_of_ordinal(inner, ordinal);
    if ids.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no member has ordinal {ordinal}"
        )));
    }
    if ids.contains(&inner.node_id) {
        return Err(Error::InvalidArgument(
            "the leader cannot remove itself; transfer leadership first".into(),
        ));
    }
    if !keeps_quorum(inner, &ids) {
        return Err(Error::Unavailable(format!(
            "removing ordinal {ordinal} would leave the remaining voters without a reachable quorum"
        )));
    }
    remove_ids(inner, &ids).await?;
    Ok(format!("removed ordinal {ordinal} (node ids {ids:?})"))
}

/// `ordkv cluster transfer-leader <ordinal>`.
pub(crate) async fn transfer_to_ordinal(inner: &Inner, ordinal: u32) -> Result<String> {
    let m = inner.metrics();
    let membership = m.membership_config.membership();
    let Some(target) = membership
        .voter_ids()
        .find(|id| ids_of_ordinal(inner, ordinal).contains(id))
    else {
        return Err(Error::InvalidArgument(format!(
            "no voter has ordinal {ordinal}"
        )));
    };
    if m.current_leader == Some(target) {
        return Ok(format!("ordinal {ordinal} already leads"));
    }
    if !inner.status().is_leader {
        return Err(Error::NotLeader {
            leader_client_addr: inner.leader().map(|(_, n)| n.client_addr),
        });
    }
    inner
        .raft
        .trigger()
        .transfer_leader(target)
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))?;
    inner
        .raft
        .wait(Some(Duration::from_secs(5)))
        .metrics(|m| m.current_leader == Some(target), "leadership moved")
        .await
        .map_err(|e| Error::Unavailable(format!("leadership did not move: {e}")))?;
    Ok(format!("ordinal {ordinal} leads"))
}

/// How long the leader waits for a leaving member's removal before it answers "ask again".
const LEAVE_WAIT: Duration = Duration::from_secs(5);

/// Leader side of `Peer.Leave`: the autopilot removes the member (one change at a time,
/// never below a reachable quorum); answers once it is gone from the membership.
pub(crate) async fn remove_leaving(inner: &Inner, node_id: u64, name: &str) -> Result<String> {
    if !inner.status().is_leader {
        return Err(Error::NotLeader {
            leader_client_addr: inner.leader().map(|(_, n)| n.client_addr),
        });
    }
    let present = inner
        .metrics()
        .membership_config
        .membership()
        .get_node(&node_id)
        .is_some();
    if !present {
        return Ok("not a member".into());
    }
    if node_id == inner.node_id {
        return Err(Error::InvalidArgument(
            "the leader cannot remove itself; it hands off leadership first".into(),
        ));
    }
    tracing::info!(member = %name, node_id, "a member asks to leave (scaled down)");
    inner.leave_requests.ask(node_id);
    let removed = inner
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
pub(crate) async fn leave_if_scaled_away(inner: &Inner) {
    let intent = inner.intent.fresh().await;
    let ordinal = inner.identity.ordinal;
    let Some(replicas) = intent.replicas().filter(|_| intent.removes(ordinal)) else {
        return;
    };
    tracing::info!(
        replicas,
        ordinal,
        "leaving: scaled to {replicas}, my ordinal is {ordinal}"
    );
    let deadline = tokio::time::Instant::now() + inner.config.leave_timeout;
    let mut last_error = String::new();
    while tokio::time::Instant::now() < deadline {
        match inner.leader() {
            Some((leader, _)) if leader == inner.node_id => {
                // The autopilot hands off to a member that stays; wait for it.
                inner.leave_requests.ask(inner.node_id);
                let _ = inner
                    .raft
                    .wait(Some(Duration::from_secs(2)))
                    .metrics(
                        |m| m.current_leader != Some(inner.node_id),
                        "leadership handed off",
                    )
                    .await;
                continue;
            }
            Some((_, leader)) => match inner.peer.leave(&leader, LEAVE_WAIT).await {
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
        timeout = ?inner.config.leave_timeout,
        error = %last_error,
        "not removed before stopping; the leader removes this member by scale intent once it is gone"
    );
}

/// On shutdown: if this node leads, hand leadership to the most caught-up voter.
pub(crate) async fn hand_off_leadership(inner: &Inner) {
    let m = inner.metrics();
    if m.current_leader != Some(inner.node_id) {
        return;
    }
    let matched = m.replication.clone().unwrap_or_default();
    let reached = crate::autopilot::recently_acked(&m);
    let best = m
        .membership_config
        .membership()
        .voter_ids()
        .filter(|id| *id != inner.node_id && reached.contains(id))
        .filter_map(|id| matched.get(&id).cloned().flatten().map(|l| (l.index, id)))
        .max();
    let Some((_, target)) = best else { return };
    if inner.raft.trigger().transfer_leader(target).await.is_ok() {
        let moved = inner
            .raft
            .wait(Some(Duration::from_secs(3)))
            .metrics(
                |m| m.current_leader != Some(inner.node_id),
                "leadership handed off",
            )
            .await;
        tracing::info!(to = target, ok = moved.is_ok(), "handed off leadership");
    }
}
