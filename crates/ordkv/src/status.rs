//! The `Cluster.Status` answer: membership, roles, progress and reachability as this member
//! sees them, its store's figures, and what it knows of its StatefulSet's scale.

use std::collections::BTreeSet;

use crate::config::{Identity, NodeConfig};
use crate::intent::ScaleIntent;
use crate::pb;
use crate::replica::{Replica, recently_acked};

/// The `Cluster.Status` answer, as this member sees the cluster.
pub(crate) fn build(
    replica: &Replica,
    intent: ScaleIntent,
    config: &NodeConfig,
) -> pb::StatusResponse {
    let m = replica.metrics();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let last_index = m.last_log_index.unwrap_or(0);
    let matched = m.replication.clone().unwrap_or_default();
    let reached = recently_acked(&m);
    let mut members = Vec::new();
    let mut leader = None;
    for (id, node) in membership.nodes() {
        let ordinal = Identity::parse(&node.name).map_or(0, |i| i.ordinal);
        if m.current_leader == Some(*id) {
            leader = Some(ordinal);
        }
        // What this member knows of the other's progress now: its own applied index; on the
        // leader, what replication reported of a member it currently reaches; nothing
        // otherwise (a follower does not see other followers; the last report of a member
        // the leader no longer reaches is not its progress; no report is not 0).
        let is_leader = m.state == openraft::ServerState::Leader;
        let (applied, reachable) = if *id == replica.node_id() {
            (m.last_applied.as_ref().map(|l| l.index), true)
        } else {
            match matched.get(id) {
                Some(matched) => {
                    let reachable = reached.contains(id);
                    let applied = matched.as_ref().filter(|_| reachable).map(|l| l.index);
                    (applied, reachable)
                }
                // Followers see the leader through its heartbeats.
                None if m.current_leader == Some(*id) && !is_leader => (None, true),
                None => (None, false),
            }
        };
        // Lag is counted from the leader's last log index: only the leader has it.
        let lag = applied
            .filter(|_| is_leader)
            .map(|a| last_index.saturating_sub(a));
        members.push(pb::Member {
            ordinal,
            name: node.name.clone(),
            role: if voters.contains(id) {
                pb::Role::Voter as i32
            } else {
                pb::Role::Learner as i32
            },
            peer_addr: node.peer_addr.clone(),
            client_addr: node.client_addr.clone(),
            applied_index: applied,
            reachable,
            node_id: *id,
            lag,
        });
    }
    members.sort_by_key(|m| (m.ordinal, m.node_id));
    let limits = config.limits;
    let revision = replica.sm.revision();
    pb::StatusResponse {
        header: Some(pb::ResponseHeader {
            revision,
            member: replica.name().to_string(),
            raft_term: m.current_term,
            cluster_id: replica.peer.cluster_id().to_string(),
        }),
        cluster_id: replica.peer.cluster_id().to_string(),
        leader,
        term: m.current_term,
        commit_index: m.local_committed.as_ref().map_or(0, |l| l.index),
        applied_index: m.last_applied.as_ref().map_or(0, |l| l.index),
        members,
        member: replica.name().to_string(),
        revision,
        compact_revision: replica.sm.compact_revision(),
        db_size_bytes: replica.sm.size_on_disk(),
        limits: Some(pb::Limits {
            max_key_bytes: limits.max_key_bytes as u64,
            max_value_bytes: limits.max_value_bytes as u64,
            max_txn_ops: limits.max_txn_ops as u64,
            max_range_limit: limits.max_range_limit as u64,
            watch_history_revisions: config.watch_history_revisions,
        }),
        version: env!("CARGO_PKG_VERSION").to_string(),
        statefulset_replicas: intent.replicas(),
        // Access control is the client port's (`ordkv-server`), which fills this in.
        access_control: String::new(),
        scale_intent: match (&intent, &config.kubernetes) {
            (ScaleIntent::Replicas(_), Ok(api)) => {
                format!("{intent} (statefulset {})", api.statefulset)
            }
            _ => intent.to_string(),
        },
    }
}
