//! Cluster lifecycle: how a member finds its cluster at start-up, joins it, notices it was
//! removed, and runs the leader's autopilot (one task, owned by the node). Membership
//! changes themselves are in `membership`.
//!
//! Start-up is a small state machine over (local data) × (what peers answer):
//!
//! | local data                  | peers answer                           | decision            |
//! |-----------------------------|----------------------------------------|---------------------|
//! | Raft state present          | (not asked)                            | restart as is       |
//! | empty                       | some member reports a cluster          | join that cluster   |
//! | empty, ordinal 0            | every peer answered, none in a cluster | bootstrap           |
//! | empty                       | otherwise                              | wait and ask again  |
//! | belongs to cluster A        | a member reports cluster B             | stop: wrong volume  |
//!
//! "Every peer" is every ordinal below the StatefulSet's `spec.replicas` when the Kubernetes
//! API gives it (a pod that exists but has no DNS record yet is waited for: after a recovery
//! the survivor may be the last pod to get one), else every peer whose name resolves.
//!
//! A joining member asks the leader to admit it: the leader removes any older incarnation
//! of the same name (a wiped volume comes back under a new node id), adds the member as a
//! learner, waits until it has caught up, and promotes it while voters < `max_voters`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ordkv_store::MemberNode;
use tokio_util::sync::CancellationToken;

use crate::autopilot::Autopilot;
use crate::config::{Identity, NodeConfig, Peers};
use crate::datadir::DataDir;
use crate::error::{Error, Result, node_stopped};
use crate::intent::{NOT_READ_YET, ScaleIntent};
use crate::membership::Membership;
use crate::pb;
use crate::peer::{PEER_CALL_TIMEOUT, from_status, peer_member};
use crate::replica::Replica;
use crate::retention::Retention;

/// How long a join may take: the leader waits for the learner to catch up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the lifecycle loop looks around.
const TICK: Duration = Duration::from_millis(500);

/// This member as the cluster records it.
pub(crate) fn member_record(identity: &Identity, config: &NodeConfig) -> MemberNode {
    MemberNode {
        name: identity.name.clone(),
        peer_addr: config.effective_advertise_peer_addr(),
        client_addr: config.advertise_client_addr.clone(),
    }
}

/// What the lifecycle task needs of the node.
pub(crate) struct Lifecycle {
    replica: Replica,
    membership: Membership,
    autopilot: Autopilot,
    /// Records the cluster id this data dir belongs to.
    data_dir: Arc<DataDir>,
    identity: Identity,
    /// This member as the cluster records it.
    me: MemberNode,
    peers: Peers,
    /// How much Raft log to keep behind the snapshot (this task purges it).
    retention: Retention,
    last_wait_log: Instant,
}

impl Lifecycle {
    pub(crate) fn new(
        replica: Replica,
        membership: Membership,
        data_dir: Arc<DataDir>,
        identity: &Identity,
        config: &NodeConfig,
    ) -> Lifecycle {
        let dead_member_timeout =
            matches!(config.peers, Peers::Dns { .. }).then_some(config.dead_member_timeout);
        Lifecycle {
            autopilot: Autopilot::new(membership.clone(), dead_member_timeout),
            replica,
            membership,
            data_dir,
            me: member_record(identity, config),
            identity: identity.clone(),
            peers: config.peers.clone(),
            retention: Retention::for_snapshot_every(config.snapshot_every_entries),
            last_wait_log: Instant::now() - Duration::from_secs(60),
        }
    }

    /// A member with no peers: bootstrap a cluster of one on first start, then wait to lead.
    pub(crate) async fn bootstrap_alone(&self) -> Result<()> {
        let raft = &self.replica.raft;
        if !raft
            .is_initialized()
            .await
            .map_err(|e| Error::Storage(e.to_string()))?
        {
            self.initialize_alone().await?;
        } else {
            // A restarted member does not lead again without an election (see `raft_config`);
            // alone, it need not wait out an election timeout for one.
            raft.trigger().elect(true).await.map_err(node_stopped)?;
        }
        raft.wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.current_leader.is_some(), "a leader is elected")
            .await
            .map_err(|e| Error::Unavailable(format!("no leader after start: {e}")))?;
        Ok(())
    }

    /// Makes a fresh single member the voter of a new cluster of one (under the cluster id it
    /// recorded before a crash, if any).
    async fn initialize_alone(&self) -> Result<()> {
        let peer = &self.replica.peer;
        let cluster_id = match peer.cluster_id() {
            "" => uuid::Uuid::new_v4().to_string(),
            known => known.to_string(),
        };
        let cluster_id = cluster_id.as_str();
        self.data_dir.set_cluster_id(cluster_id)?;
        let _ = peer.cluster_id.set(cluster_id.to_string());
        let node_id = self.replica.node_id();
        tracing::info!(member = %self.me.name, node_id, cluster_id, "bootstrapping a new cluster");
        self.replica
            .raft
            .initialize(std::collections::BTreeMap::from([(
                node_id,
                self.me.clone(),
            )]))
            .await
            .map_err(|e| Error::Internal(format!("bootstrap: {e}")))
    }

    /// The lifecycle of a member with peers: find the cluster, then keep the membership
    /// tidy, until `stop`.
    pub(crate) async fn run(mut self, stop: CancellationToken) {
        let wake = self.membership.leave_requests.clone();
        loop {
            if stop.is_cancelled() {
                return;
            }
            if let Err(e) = self.tick().await {
                match e {
                    Error::DataDir { .. } => {
                        let msg = e.to_string();
                        tracing::error!(error = %msg, "stopping");
                        self.replica.set_fatal(msg);
                        return;
                    }
                    e => tracing::warn!(error = %e, "cluster lifecycle"),
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
                _ = wake.wake.notified() => {}
            }
        }
    }

    async fn tick(&mut self) -> Result<()> {
        let replica = &self.replica;
        let initialized = replica
            .raft
            .is_initialized()
            .await
            .map_err(|e| Error::Storage(e.to_string()))?;
        if !initialized {
            let replicas = self.replicas();
            let answers = self.ask_all().await;
            let named: Vec<(String, Answer)> = answers
                .iter()
                .map(|(n, _, a)| (n.clone(), a.clone()))
                .collect();
            match decide(
                replica.peer.cluster_id(),
                self.identity.ordinal,
                &named,
                replicas,
            ) {
                Decision::Bootstrap => self.initialize_alone().await?,
                Decision::Join { cluster_id } => {
                    self.adopt_cluster(&cluster_id)?;
                    self.join(&answers).await?;
                }
                Decision::Wait(why) => {
                    if self.last_wait_log.elapsed() > Duration::from_secs(10) {
                        tracing::info!(reason = %why, "not in a cluster yet");
                        self.last_wait_log = Instant::now();
                    }
                }
                Decision::WrongCluster(why) => {
                    return Err(Error::DataDir {
                        path: self.data_dir.path.display().to_string(),
                        reason: why,
                    });
                }
            }
            return Ok(());
        }
        if let Some(upto) = self.retention.purge_upto_from(&replica.metrics()) {
            replica
                .raft
                .trigger()
                .purge_log(upto)
                .await
                .map_err(node_stopped)?;
        }
        // Not `status()`: that also reads sled's size on disk, twice a second for nothing.
        let is_leader = replica.is_leader();
        if !is_leader && !replica.removed() {
            self.check_still_member().await;
            if let Some((leader_id, leader)) = replica.leader() {
                match replica.peer.read_index(leader_id, &leader).await {
                    Ok(index) => replica.leader_commits.record(leader_id, index),
                    Err(_) => replica.leader_commits.forget(),
                }
            }
        }
        if replica.removed() {
            if self.membership.intent().removes(self.identity.ordinal) {
                // Scaled away: the StatefulSet is about to delete this pod.
                return Ok(());
            }
            // Removed while away (scale-down, then back on the retained volume): ask to be
            // admitted again, as a learner first.
            let answers = self.ask_all().await;
            self.join(&answers).await?;
            replica
                .peer
                .removed
                .store(false, std::sync::atomic::Ordering::SeqCst);
            return Ok(());
        }
        if is_leader {
            self.autopilot.step().await?;
        }
        Ok(())
    }

    /// How many members the StatefulSet is meant to have, as far as this member knows (a
    /// `--peers` map names the members itself).
    fn replicas(&self) -> Replicas {
        if !matches!(self.peers, Peers::Dns { .. }) {
            return Replicas::Unknown;
        }
        match self.membership.intent() {
            ScaleIntent::Replicas(n) => Replicas::Known(n),
            ScaleIntent::Unavailable(why) if why == NOT_READ_YET => Replicas::Pending,
            ScaleIntent::Unavailable(_) => Replicas::Unknown,
        }
    }

    /// The peers to ask, by name and peer address.
    async fn candidates(&self) -> Vec<(String, String)> {
        let me = &self.identity;
        match &self.peers {
            Peers::None => vec![],
            Peers::Static(map) => map
                .iter()
                .filter(|(n, _)| **n != me.name)
                .map(|(n, a)| (n.clone(), a.clone()))
                .collect(),
            dns @ Peers::Dns { .. } => {
                // Ordinals below ours and below the StatefulSet's count, and above those
                // until two in a row do not resolve.
                let expected = match self.replicas() {
                    Replicas::Known(n) => n,
                    _ => 0,
                };
                let mut out = Vec::new();
                let mut misses = 0;
                for i in 0..64u32 {
                    if i == me.ordinal {
                        continue;
                    }
                    let Some((name, addr)) = dns.address_of(me, i) else {
                        break;
                    };
                    if i > me.ordinal && i >= expected {
                        if crate::resolve::resolves(&addr).await {
                            misses = 0;
                        } else {
                            misses += 1;
                            if misses == 2 {
                                break;
                            }
                            continue;
                        }
                    }
                    out.push((name, addr));
                }
                out
            }
        }
    }

    async fn ask(&self, addr: &str) -> Answer {
        if !crate::resolve::resolves(addr).await {
            return Answer::Unresolved;
        }
        let Ok(mut client) = self.replica.peer.client(addr) else {
            return Answer::Unresolved;
        };
        let req = pb::ClusterInfoRequest {
            from_name: self.me.name.clone(),
        };
        match tokio::time::timeout(PEER_CALL_TIMEOUT, client.cluster_info(req)).await {
            Ok(Ok(r)) => Answer::Info(r.into_inner()),
            _ => Answer::Silent,
        }
    }

    async fn ask_all(&self) -> Vec<(String, String, Answer)> {
        let mut out = Vec::new();
        for (name, addr) in self.candidates().await {
            if self.replica.peer.is_blocked(&name) {
                out.push((name, addr, Answer::Silent));
                continue;
            }
            let a = self.ask(&addr).await;
            out.push((name, addr, a));
        }
        out
    }

    /// A member that was removed while it was away learns it from the leader's membership:
    /// a voter would also learn it from refused votes, but a learner never asks for votes.
    async fn check_still_member(&self) {
        let me = self.replica.node_id();
        let answers: Vec<Answer> = match self.replica.leader() {
            Some((id, node)) if id != me => vec![self.ask(&node.peer_addr).await],
            _ => self
                .ask_all()
                .await
                .into_iter()
                .map(|(_, _, a)| a)
                .collect(),
        };
        for a in answers {
            if let Answer::Info(i) = a
                && i.cluster_id == self.replica.peer.cluster_id()
                && i.leader_id != 0
                && i.leader_id == i.node_id
                && !i.members.iter().any(|m| m.node_id == me)
            {
                self.replica.peer.mark_removed();
                return;
            }
        }
    }

    fn adopt_cluster(&self, cluster_id: &str) -> Result<()> {
        let peer = &self.replica.peer;
        if peer.cluster_id() != cluster_id {
            self.data_dir.set_cluster_id(cluster_id)?;
            let _ = peer.cluster_id.set(cluster_id.to_string());
            tracing::info!(cluster_id, "joining an existing cluster");
        }
        Ok(())
    }

    /// Asks the leader (found through the peers' answers) to admit this member.
    async fn join(&self, answers: &[(String, String, Answer)]) -> Result<()> {
        let mut targets: Vec<String> = answers
            .iter()
            .filter_map(|(_, _, a)| match a {
                Answer::Info(i) if !i.leader_peer_addr.is_empty() => {
                    Some(i.leader_peer_addr.clone())
                }
                _ => None,
            })
            .collect();
        targets.dedup();
        let Some(leader) = targets.first() else {
            return Err(Error::Unavailable("no peer knows a leader yet".into()));
        };
        let peer = &self.replica.peer;
        let mut client = peer.client(leader).map_err(Error::Unavailable)?;
        let node_id = self.replica.node_id();
        let req = pb::JoinRequest {
            cluster_id: peer.cluster_id().to_string(),
            member: Some(peer_member(node_id, &self.me, false)),
        };
        tracing::info!(%leader, node_id, "asking the leader to admit this member");
        let reply = tokio::time::timeout(JOIN_TIMEOUT, client.join(req))
            .await
            .map_err(|_| Error::Unavailable(format!("join through {leader} timed out")))?
            .map_err(from_status)?;
        tracing::info!(outcome = %reply.into_inner().outcome, "admitted");
        Ok(())
    }
}

/// What one peer said when asked for its cluster.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    /// Its name does not resolve (the pod does not exist).
    Unresolved,
    /// It resolves but did not answer.
    Silent,
    /// It answered.
    Info(pb::ClusterInfoReply),
}

/// The StatefulSet's intended size, as the start-up rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replicas {
    /// `spec.replicas`.
    Known(u32),
    /// The Kubernetes API is configured but not read yet.
    Pending,
    /// No API (a plain `--peers` map, or no access).
    Unknown,
}

/// The start-up decision for a member without Raft state.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Bootstrap,
    Join { cluster_id: String },
    Wait(String),
    WrongCluster(String),
}

/// The pure start-up rule: see the module documentation.
pub(crate) fn decide(
    local_cluster: &str,
    ordinal: u32,
    answers: &[(String, Answer)],
    replicas: Replicas,
) -> Decision {
    let clusters: BTreeSet<&str> = answers
        .iter()
        .filter_map(|(_, a)| match a {
            Answer::Info(i) if !i.cluster_id.is_empty() => Some(i.cluster_id.as_str()),
            _ => None,
        })
        .collect();
    if !local_cluster.is_empty() && !clusters.is_empty() && !clusters.contains(local_cluster) {
        return Decision::WrongCluster(format!(
            "this data dir belongs to cluster {local_cluster}, but the peers are in {clusters:?}; \
             point the data dir (`data_dir`, --data-dir) at this member's own volume, or wipe it so the member rejoins"
        ));
    }
    if let Some(c) = clusters.iter().next() {
        if clusters.len() > 1 {
            return Decision::Wait(format!("peers disagree on the cluster: {clusters:?}"));
        }
        return Decision::Join {
            cluster_id: c.to_string(),
        };
    }
    let silent: Vec<&str> = answers
        .iter()
        .filter(|(_, a)| matches!(a, Answer::Silent))
        .map(|(n, _)| n.as_str())
        .collect();
    if ordinal != 0 {
        return Decision::Wait("waiting for ordinal 0 to bootstrap the cluster".into());
    }
    if !silent.is_empty() {
        return Decision::Wait(format!("waiting for {} to answer", silent.join(", ")));
    }
    match replicas {
        Replicas::Pending => {
            return Decision::Wait(
                "waiting for the StatefulSet's replica count from the Kubernetes API".into(),
            );
        }
        Replicas::Known(n) => {
            // Every other ordinal below the count must have answered (an unresolvable name,
            // or one not asked yet, is a pod on its way).
            let answered: BTreeSet<u32> = answers
                .iter()
                .filter(|(_, a)| matches!(a, Answer::Info(_)))
                .filter_map(|(name, _)| Identity::parse(name).ok().map(|id| id.ordinal))
                .collect();
            let unseen: Vec<String> = (0..n)
                .filter(|i| *i != ordinal && !answered.contains(i))
                .map(|i| format!("ordinal {i}"))
                .collect();
            if !unseen.is_empty() {
                return Decision::Wait(format!(
                    "waiting for {} (the StatefulSet has {n} replicas) to answer",
                    unseen.join(", ")
                ));
            }
        }
        Replicas::Unknown => {}
    }
    Decision::Bootstrap
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(cluster: &str) -> Answer {
        Answer::Info(pb::ClusterInfoReply {
            cluster_id: cluster.into(),
            ..Default::default()
        })
    }

    fn answers(list: &[(&str, Answer)]) -> Vec<(String, Answer)> {
        list.iter()
            .map(|(n, a)| (n.to_string(), a.clone()))
            .collect()
    }

    #[test]
    fn ordinal_zero_bootstraps_only_when_every_resolvable_peer_answered_empty() {
        let all_empty = answers(&[("kv-1", info("")), ("kv-2", Answer::Unresolved)]);
        assert_eq!(
            decide("", 0, &all_empty, Replicas::Unknown),
            Decision::Bootstrap
        );
        let one_silent = answers(&[("kv-1", info("")), ("kv-2", Answer::Silent)]);
        assert!(
            matches!(decide("", 0, &one_silent, Replicas::Unknown), Decision::Wait(w) if w.contains("kv-2"))
        );
    }

    #[test]
    fn with_a_replica_count_ordinal_zero_waits_for_every_pod_below_it() {
        // kv-1 (the survivor of a recovery, say) has no DNS record yet; kv-2 is empty.
        let answers = answers(&[("kv-1", Answer::Unresolved), ("kv-2", info(""))]);
        assert!(matches!(
            decide("", 0, &answers, Replicas::Known(3)),
            Decision::Wait(w) if w.contains("ordinal 1")
        ));
        // Names not asked at all (the count was read after the peers were listed).
        assert!(matches!(
            decide("", 0, &[], Replicas::Known(3)),
            Decision::Wait(w) if w.contains("ordinal 1, ordinal 2")
        ));
        assert!(matches!(
            decide("", 0, &answers, Replicas::Pending),
            Decision::Wait(_)
        ));
        // Without the API the old rule holds: an unresolvable name is not a pod.
        assert_eq!(
            decide("", 0, &answers, Replicas::Unknown),
            Decision::Bootstrap
        );
        // kv-2 above the count does not hold it up.
        assert_eq!(
            decide("", 0, &answers, Replicas::Known(1)),
            Decision::Bootstrap
        );
    }

    #[test]
    fn other_ordinals_never_bootstrap() {
        let all_empty = answers(&[("kv-0", info("")), ("kv-2", info(""))]);
        assert!(matches!(
            decide("", 1, &all_empty, Replicas::Unknown),
            Decision::Wait(_)
        ));
        assert!(matches!(
            decide("", 1, &[], Replicas::Unknown),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn an_existing_cluster_is_joined_by_any_ordinal() {
        let found = answers(&[("kv-1", info("c1")), ("kv-2", Answer::Silent)]);
        let join = Decision::Join {
            cluster_id: "c1".into(),
        };
        assert_eq!(decide("", 0, &found, Replicas::Unknown), join);
        assert_eq!(decide("", 3, &found, Replicas::Unknown), join);
        // A member that recorded the cluster before it crashed mid-join joins it again.
        assert_eq!(decide("c1", 3, &found, Replicas::Unknown), join);
    }

    #[test]
    fn data_of_another_cluster_stops_the_member() {
        let found = answers(&[("kv-1", info("c2"))]);
        assert!(matches!(
            decide("c1", 0, &found, Replicas::Unknown),
            Decision::WrongCluster(_)
        ));
    }

    #[test]
    fn disagreeing_peers_make_the_member_wait() {
        let split = answers(&[("kv-1", info("c1")), ("kv-2", info("c2"))]);
        assert!(matches!(
            decide("", 0, &split, Replicas::Unknown),
            Decision::Wait(_)
        ));
    }
}
