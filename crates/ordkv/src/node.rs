//! The node: an openraft instance over the ordkv store, its data dir, its identity and its
//! peer service.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{Raft, RaftMetrics, ServerState, SnapshotPolicy};
use ordkv_store::{Command, MemberNode, SnapshotSummary, StateMachine, StoreOptions, TypeConfig};
use tokio_util::sync::CancellationToken;

use crate::config::{Identity, Limits, NodeConfig, Peers};
use crate::datadir::DataDir;
use crate::error::{Error, Result};
use crate::kv::Kv;
use crate::pb;
use crate::peer::PeerShared;
use crate::peer::client::PeerNetwork;

pub(crate) type OrdRaft = Raft<TypeConfig, StateMachine>;

pub(crate) struct Inner {
    pub(crate) identity: Identity,
    pub(crate) config: NodeConfig,
    pub(crate) node_id: u64,
    pub(crate) peer: Arc<PeerShared>,
    pub(crate) raft: OrdRaft,
    pub(crate) sm: StateMachine,
    pub(crate) data_dir: DataDir,
    /// Cancelled on shutdown: stops the peer server and the lifecycle task.
    pub(crate) stop: CancellationToken,
    /// Set when the node cannot go on (e.g. its data belongs to another cluster).
    pub(crate) fatal: OnceLock<String>,
    /// Concurrent linearizable reads share read indexes.
    pub(crate) reads: Arc<crate::read_index::ReadBatcher>,
    /// The StatefulSet's intended size, polled from the Kubernetes API.
    pub(crate) intent: crate::intent::IntentWatch,
    /// Admits, removes and hands off (see `membership`).
    pub(crate) membership: crate::membership::Membership,
    /// What the leader committed, as this follower learned it (readiness).
    pub(crate) leader_commits: crate::catch_up::LeaderCommits,
    /// The tasks the node runs (peer server, cluster lifecycle), joined on shutdown.
    tasks: std::sync::Mutex<tokio::task::JoinSet<()>>,
}

/// An open replica. Cloning is cheap; every clone is the same node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

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

fn raft_config(config: &NodeConfig) -> Result<Arc<openraft::Config>> {
    let c = openraft::Config {
        cluster_name: "ordkv".into(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        // Bounds one append message: 64 entries of the largest values.
        max_payload_entries: 64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
        // Entries kept behind a snapshot, so a briefly lagging follower catches up from the
        // log rather than a whole snapshot.
        max_in_snapshot_log_to_keep: config.snapshot_every_entries.min(1000),
        // A member that was cut off must not raise the term and depose a healthy leader
        // when it comes back.
        enable_pre_vote: Some(true),
        // A leader that restarts leads again only after an election, in a new term. Restored
        // in its old term it would take read indexes from the commit index it saved, which
        // lags (it is saved without a sync), and serve stale linearizable reads until its
        // first replication round (ARCHITECTURE.md, "Reads after a restart").
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    c.validate()
        .map(Arc::new)
        .map_err(|e| Error::InvalidArgument(format!("raft config: {e}")))
}

impl Node {
    /// Opens (or creates) the member in `config.data_dir`.
    ///
    /// With no peers, a fresh data dir bootstraps a cluster of one, and this returns once it
    /// leads. With peers, the peer service starts and the member finds its cluster in the
    /// background (restart, join, or bootstrap as ordinal 0; see `ARCHITECTURE.md`): it is
    /// not ready until it is a member and caught up.
    pub async fn open(config: NodeConfig) -> Result<Node> {
        let identity = config.validate()?;
        let data_dir = DataDir::open(&config.data_dir, &identity)?;
        let opts = StoreOptions {
            cache_capacity_bytes: config.cache_capacity_bytes,
            history_revisions: config.watch_history_revisions,
            max_range_limit: config.limits.max_range_limit,
        };
        let (log, sm) = ordkv_store::open(&data_dir.path, &opts).map_err(|e| Error::DataDir {
            path: data_dir.path.display().to_string(),
            reason: format!("cannot open the store: {e}"),
        })?;
        let node_id = data_dir.record.node_id;
        let cluster_id = Some(data_dir.record.cluster_id.clone()).filter(|c| !c.is_empty());
        let peer = Arc::new(PeerShared::new(node_id, identity.name.clone(), cluster_id));
        let network = PeerNetwork {
            shared: peer.clone(),
        };
        let raft = Raft::new(node_id, raft_config(&config)?, network, log, sm.clone())
            .await
            .map_err(|e| Error::Storage(format!("starting raft: {e}")))?;
        let stop = CancellationToken::new();
        let api = match config.peers {
            Peers::None => Err("a cluster of one".to_string()),
            _ => config.kubernetes.clone(),
        };
        let intent = crate::intent::IntentWatch::new(api);
        let membership = crate::membership::Membership::new(
            raft.clone(),
            &identity,
            &config,
            intent.clone(),
            peer.clone(),
        );
        let inner = Arc::new(Inner {
            identity,
            node_id,
            peer,
            raft,
            sm,
            data_dir,
            stop,
            fatal: OnceLock::new(),
            reads: Default::default(),
            intent,
            membership,
            leader_commits: Default::default(),
            tasks: Default::default(),
            config,
        });
        let node = Node { inner };
        node.inner
            .spawn(node.inner.intent.clone().poll(node.inner.stop.clone()));
        if let Some(addr) = node.inner.config.peer_listen_addr {
            crate::cluster::serve_peers(node.inner.clone(), addr).await?;
        }
        if node.inner.config.peers == Peers::None {
            crate::cluster::bootstrap_alone(&node.inner).await?;
        } else {
            node.inner.spawn(crate::cluster::run(node.inner.clone()));
        }
        tracing::info!(
            member = %node.inner.identity.name,
            node_id,
            data_dir = %node.inner.config.data_dir.display(),
            "node open"
        );
        Ok(node)
    }

    /// The KV handle.
    pub fn kv(&self) -> Kv {
        Kv {
            inner: self.inner.clone(),
        }
    }

    /// This member's identity.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// The Raft node id of this data dir.
    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    /// The cluster this member belongs to (empty until it bootstrapped or joined one).
    pub fn cluster_id(&self) -> String {
        self.inner.peer.cluster_id().to_string()
    }

    /// The request limits in force.
    pub fn limits(&self) -> Limits {
        self.inner.config.limits
    }

    /// Health and metrics snapshot.
    pub fn status(&self) -> NodeStatus {
        self.inner.status()
    }

    /// Ready = no fatal error, a member, a leader is known, and everything committed applied.
    pub fn is_ready(&self) -> bool {
        self.status().not_ready_reason().is_none()
    }

    /// Waits until [`Node::is_ready`] (a member that knows its leader and has applied what
    /// is committed), up to `timeout`.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_ready() {
            if let Some(fatal) = self.status().fatal {
                return Err(Error::Unavailable(format!("the node stopped: {fatal}")));
            }
            if tokio::time::Instant::now() >= deadline {
                let why = self.status().not_ready_reason().unwrap_or_default();
                return Err(Error::Unavailable(format!(
                    "not ready after {timeout:?}: {why}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// The `Cluster.Status` answer.
    pub async fn cluster_status(&self) -> Result<pb::StatusResponse> {
        Ok(crate::status::build(&self.inner))
    }

    /// Removes the member with this ordinal from the cluster (scale-down). Runs on the
    /// leader; refused when it would leave the remaining voters without a quorum.
    pub async fn remove_member(&self, ordinal: u32) -> Result<String> {
        self.inner.membership.remove_ordinal(ordinal).await
    }

    /// Hands leadership to the member with this ordinal.
    pub async fn transfer_leader(&self, ordinal: u32) -> Result<String> {
        self.inner.membership.transfer_to_ordinal(ordinal).await
    }

    /// A consistent backup: builds a fresh snapshot of everything applied here and opens it.
    /// The file is ordkv's checksummed snapshot format (`ordkv snapshot restore` reads it).
    pub async fn backup(&self) -> Result<(SnapshotSummary, std::fs::File)> {
        let inner = &self.inner;
        let applied = inner.status().applied_index;
        inner
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        inner
            .raft
            .wait(Some(Duration::from_secs(120)))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied),
                "a snapshot covering the applied state",
            )
            .await
            .map_err(|e| Error::Unavailable(format!("building the snapshot: {e}")))?;
        // A newer snapshot may replace the file between finding and opening it: retry.
        for _ in 0..3 {
            let storage = |e: std::io::Error| Error::Storage(e.to_string());
            let Some(path) = inner.sm.current_snapshot_file().map_err(storage)? else {
                continue;
            };
            if let Ok(file) = std::fs::File::open(&path) {
                let summary = ordkv_store::verify_snapshot(&path).map_err(storage)?;
                return Ok((summary, file));
            }
        }
        Err(Error::Unavailable(
            "the snapshot file kept changing; retry".into(),
        ))
    }

    #[cfg(test)]
    pub(crate) fn peer(&self) -> &PeerShared {
        &self.inner.peer
    }

    /// Test fault injection: act as if the named peers were unreachable (both directions).
    pub fn set_partitioned_from(&self, peers: &[String]) {
        let mut blocked = self
            .inner
            .peer
            .blocked
            .write()
            .unwrap_or_else(|p| p.into_inner());
        *blocked = peers.iter().cloned().collect();
        tracing::warn!(peers = ?peers, "fault injection: peer traffic blocked");
    }

    /// Resolves when the node hits a fatal error (a failed fsync, a corrupt log, data of
    /// another cluster), with its description. The process should then exit.
    pub async fn fatal(&self) -> String {
        // Server metrics change on role and membership changes only, not on every write (a
        // wake-up per write costs a worker hand-off); their sender drops when Raft stops,
        // fatally or not, and the storage flags are checked once a second.
        let mut rx = self.inner.raft.server_metrics();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            // Not `status()`: that reads sled's directory for its size.
            if let Some(f) = self.inner.fatal_reason(&self.inner.metrics()) {
                return f;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() {
                    return self
                        .inner
                        .fatal_reason(&self.inner.metrics())
                        .unwrap_or_else(|| "raft stopped".into());
                },
                _ = tick.tick() => {}
            }
        }
    }

    /// Stops the node: hands leadership to a caught-up voter when this node leads (so a
    /// restart or rolling update does not wait for an election timeout), stops Raft and the
    /// peer service, and flushes storage. Membership is unchanged (a restart, a rolling
    /// update or a drain keeps it), unless the StatefulSet was scaled below this member's
    /// ordinal: then it first asks the leader to remove it and waits for that, up to
    /// `leave_timeout`.
    pub async fn shutdown(&self) -> Result<()> {
        self.inner.membership.leave_if_scaled_away().await;
        self.inner.membership.hand_off_leadership().await;
        self.inner.stop.cancel();
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| Error::Internal(format!("raft shutdown: {e}")))?;
        self.inner.join_tasks().await;
        self.inner
            .sm
            .flush()
            .await
            .map_err(|e| Error::Storage(format!("final flush: {e}")))?;
        tracing::info!(member = %self.inner.identity.name, "node stopped");
        Ok(())
    }
}

fn no_leader_accepted(waited: Duration) -> Error {
    Error::Unavailable(format!(
        "no leader accepted the write within {waited:?}; the cluster may be partitioned or electing"
    ))
}

/// The leader's id and node record in `m`, when one is known.
pub(crate) fn leader_of(m: &RaftMetrics<TypeConfig>) -> Option<(u64, MemberNode)> {
    let id = m.current_leader?;
    let node = m.membership_config.membership().get_node(&id)?.clone();
    Some((id, node))
}

/// How long shutdown waits for the node's tasks to see the stop before it aborts them (the
/// peer server's graceful stop would wait for the leader's append stream to end).
const TASKS_STOP_WAIT: Duration = Duration::from_secs(1);

pub(crate) fn fatal(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("the node stopped: {e}"))
}

impl Inner {
    /// Runs `task` until the node stops (it must end when `stop` is cancelled).
    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .spawn(task);
    }

    /// Waits for the node's tasks after `stop` was cancelled; aborts what is left after
    /// [`TASKS_STOP_WAIT`].
    async fn join_tasks(&self) {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let joined = tokio::time::timeout(TASKS_STOP_WAIT, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if joined.is_err() {
            tracing::debug!(
                left = tasks.len(),
                "aborting tasks still running at shutdown"
            );
            tasks.shutdown().await;
        }
    }

    pub(crate) fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    /// Why the node must stop, if it must.
    fn fatal_reason(&self, m: &RaftMetrics<TypeConfig>) -> Option<String> {
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
        NodeStatus {
            member: self.identity.name.clone(),
            term: m.current_term,
            commit_index: m.local_committed.as_ref().map_or(0, |l| l.index),
            applied_index: m.last_applied.as_ref().map_or(0, |l| l.index),
            last_log_index: m.last_log_index.unwrap_or(0),
            revision: sm.revision(),
            compact_revision: sm.compact_revision(),
            is_leader: m.state == ServerState::Leader,
            leader_known: m.current_leader.is_some(),
            // A member told it was removed is not one until re-admitted.
            is_member: membership.get_node(&self.node_id).is_some()
                && !self.peer.removed.load(std::sync::atomic::Ordering::SeqCst),
            is_voter: membership.voter_ids().any(|id| id == self.node_id),
            db_size_bytes: sm.size_on_disk(),
            fatal,
            leader_commit_index: self.leader_commits.target(m.current_leader),
        }
    }

    /// The leader's node record, when one is known.
    pub(crate) fn leader(&self) -> Option<(u64, MemberNode)> {
        leader_of(&self.metrics())
    }

    /// Waits (up to the request wait) until some leader is known.
    pub(crate) async fn wait_for_leader(&self) -> Result<()> {
        self.raft
            .wait(Some(self.config.request_wait))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await
            .map(|_| ())
            .map_err(|_| {
                Error::Unavailable(format!(
                    "no leader is known after {:?}; the cluster may have lost its quorum",
                    self.config.request_wait
                ))
            })
    }

    /// Proposes a command on this node; fails with `NotLeader` (not applied) when another
    /// node leads, and with `OutcomeUnknown` when its entry may or may not commit.
    pub(crate) async fn write_here(&self, cmd: pb::Command) -> Result<pb::CommandResponse> {
        match self.raft.client_write(Command(cmd)).await {
            Ok(r) => Ok(r.data.0),
            // Refused before its entry was appended.
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(Error::NotLeader {
                    leader_client_addr: f.leader_node.map(|n| n.client_addr),
                })
            }
            // Appended here, then this member lost the leadership: another leader may have
            // the entry and commit it.
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
                Err(Error::OutcomeUnknown(
                    "the leader changed while the write was in its log; it may or may not commit"
                        .into(),
                ))
            }
            Err(RaftError::APIError(e)) => Err(Error::Internal(e.to_string())),
            Err(RaftError::Fatal(f)) => Err(Error::OutcomeUnknown(format!(
                "the node stopped during the write ({f}); it may or may not commit"
            ))),
        }
    }

    /// Proposes a command: here when this node leads, otherwise forwarded to the leader (or
    /// refused with `NotLeader` under `--reject-follower-writes`).
    pub(crate) async fn write(&self, cmd: pb::Command) -> Result<pb::CommandResponse> {
        let deadline = tokio::time::Instant::now() + self.config.request_wait;
        loop {
            let resp = match self.write_here(cmd.clone()).await {
                Err(Error::NotLeader { .. }) => match self.leader() {
                    None => {
                        self.wait_for_leader().await?;
                        if tokio::time::Instant::now() >= deadline {
                            return Err(no_leader_accepted(self.config.request_wait));
                        }
                        continue;
                    }
                    Some((_, leader)) if self.config.reject_follower_writes => {
                        return Err(Error::NotLeader {
                            leader_client_addr: Some(leader.client_addr),
                        });
                    }
                    // Metrics still name this node, but it no longer leads (it lost its
                    // quorum): wait for the cluster to settle instead of asking itself.
                    Some((id, _)) if id == self.node_id => {
                        if tokio::time::Instant::now() >= deadline {
                            return Err(no_leader_accepted(self.config.request_wait));
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Some((_, leader)) => {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        if left.is_zero() {
                            return Err(no_leader_accepted(self.config.request_wait));
                        }
                        match self.peer.forward(&leader, cmd.clone(), left).await {
                            // Not applied (the leader changed, or could not be reached): wait
                            // for the next leader and try again within the deadline.
                            Err(e @ (Error::NotLeader { .. } | Error::Unavailable(_))) => {
                                if tokio::time::Instant::now() >= deadline {
                                    return Err(match e {
                                        Error::NotLeader { .. } => {
                                            no_leader_accepted(self.config.request_wait)
                                        }
                                        e => e,
                                    });
                                }
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                            other => other?,
                        }
                    }
                },
                other => other?,
            };
            if !resp.error.is_empty() {
                return Err(Error::InvalidArgument(resp.error));
            }
            return Ok(resp);
        }
    }
}

/// Creates `config.data_dir` from a backup (`ordkv snapshot restore`): a new cluster whose
/// only voter is this member, holding the snapshot's keys and revision. The data dir must
/// not hold a store yet. Other members join the restored one with empty data dirs.
pub async fn restore_snapshot(
    file: &std::path::Path,
    config: NodeConfig,
) -> Result<SnapshotSummary> {
    let identity = config.validate()?;
    let data_dir = DataDir::open(&config.data_dir, &identity)?;
    let dir_err = |reason: String| Error::DataDir {
        path: data_dir.path.display().to_string(),
        reason,
    };
    if data_dir.path.join("sled").exists() || !data_dir.record.cluster_id.is_empty() {
        return Err(dir_err(
            "it already holds a store; restore into an empty data dir".into(),
        ));
    }
    data_dir.set_cluster_id(&uuid::Uuid::new_v4().to_string())?;
    let opts = StoreOptions {
        cache_capacity_bytes: config.cache_capacity_bytes,
        history_revisions: config.watch_history_revisions,
        max_range_limit: config.limits.max_range_limit,
    };
    let me = MemberNode {
        name: identity.name.clone(),
        peer_addr: config.advertise_peer_addr.clone(),
        client_addr: config.advertise_client_addr.clone(),
    };
    ordkv_store::restore(&data_dir.path, &opts, file, data_dir.record.node_id, me)
        .await
        .map_err(|e| dir_err(format!("restoring {}: {e}", file.display())))
}

/// Makes a fresh single member the voter of a new cluster of one (under the cluster id it
/// recorded before a crash, if any).
pub(crate) async fn initialize_alone(inner: &Inner) -> Result<()> {
    let cluster_id = match inner.peer.cluster_id() {
        "" => uuid::Uuid::new_v4().to_string(),
        known => known.to_string(),
    };
    let cluster_id = cluster_id.as_str();
    inner.data_dir.set_cluster_id(cluster_id)?;
    let _ = inner.peer.cluster_id.set(cluster_id.to_string());
    let me = crate::cluster::member_node(inner);
    tracing::info!(member = %inner.identity.name, node_id = inner.node_id, cluster_id, "bootstrapping a new cluster");
    inner
        .raft
        .initialize(BTreeMap::from([(inner.node_id, me)]))
        .await
        .map_err(|e| Error::Internal(format!("bootstrap: {e}")))
}
