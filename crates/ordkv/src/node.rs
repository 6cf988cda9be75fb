//! The node: an openraft instance over the ordkv store, its data dir and its identity.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use openraft::{Raft, ServerState, SnapshotPolicy};
use ordkv_store::{Command, MemberNode, StateMachine, StoreOptions, TypeConfig};

use crate::config::{Identity, Limits, NodeConfig};
use crate::datadir::DataDir;
use crate::error::{Error, Result};
use crate::kv::Kv;
use crate::network::NoPeers;
use crate::pb;

pub(crate) type OrdRaft = Raft<TypeConfig, StateMachine>;

pub(crate) struct Inner {
    pub(crate) identity: Identity,
    pub(crate) config: NodeConfig,
    pub(crate) node_id: u64,
    pub(crate) cluster_id: String,
    pub(crate) raft: OrdRaft,
    pub(crate) sm: StateMachine,
    /// How long a read waits for `min_revision` or a write for a leader.
    pub(crate) wait_timeout: Duration,
    _data_dir: DataDir,
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
    /// sled's size on disk.
    pub db_size_bytes: u64,
    /// Set once the node hit a fatal error (e.g. a failed fsync).
    pub fatal: Option<String>,
}

fn raft_config(config: &NodeConfig) -> Result<Arc<openraft::Config>> {
    let c = openraft::Config {
        cluster_name: "ordkv".into(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
        max_in_snapshot_log_to_keep: 1000,
        ..Default::default()
    };
    c.validate()
        .map(Arc::new)
        .map_err(|e| Error::InvalidArgument(format!("raft config: {e}")))
}

impl Node {
    /// Opens (or creates) the member in `config.data_dir`. A fresh single member bootstraps
    /// a cluster of one and becomes its leader before this returns.
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
        let raft = Raft::new(node_id, raft_config(&config)?, NoPeers, log, sm.clone())
            .await
            .map_err(|e| Error::Storage(format!("starting raft: {e}")))?;
        let me = MemberNode {
            name: identity.name.clone(),
            peer_addr: config.advertise_peer_addr.clone(),
            client_addr: config.advertise_client_addr.clone(),
        };
        if !raft.is_initialized().await.map_err(fatal)? {
            tracing::info!(member = %identity.name, node_id, "bootstrapping a new cluster");
            raft.initialize(BTreeMap::from([(node_id, me)]))
                .await
                .map_err(|e| Error::Internal(format!("bootstrap: {e}")))?;
        }
        let inner = Arc::new(Inner {
            cluster_id: data_dir.record.cluster_id.clone(),
            identity,
            node_id,
            raft,
            sm,
            wait_timeout: Duration::from_secs(5),
            config,
            _data_dir: data_dir,
        });
        let node = Node { inner };
        node.inner
            .raft
            .wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.current_leader.is_some(), "a leader is elected")
            .await
            .map_err(|e| Error::Unavailable(format!("no leader after start: {e}")))?;
        tracing::info!(
            member = %node.inner.identity.name,
            node_id,
            cluster_id = %node.inner.cluster_id,
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

    /// The cluster this member belongs to.
    pub fn cluster_id(&self) -> &str {
        &self.inner.cluster_id
    }

    /// The request limits in force.
    pub fn limits(&self) -> Limits {
        self.inner.config.limits
    }

    /// Health and metrics snapshot.
    pub fn status(&self) -> NodeStatus {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        let sm = &self.inner.sm;
        let fatal = match (&m.running_state, sm.storage_failed()) {
            (Err(e), _) => Some(e.to_string()),
            (Ok(()), true) => Some("a storage flush failed".into()),
            _ => None,
        };
        NodeStatus {
            member: self.inner.identity.name.clone(),
            term: m.current_term,
            commit_index: m.local_committed.as_ref().map_or(0, |l| l.index),
            applied_index: m.last_applied.as_ref().map_or(0, |l| l.index),
            last_log_index: m.last_log_index.unwrap_or(0),
            revision: sm.revision(),
            compact_revision: sm.compact_revision(),
            is_leader: m.state == ServerState::Leader,
            leader_known: m.current_leader.is_some(),
            is_member: m
                .membership_config
                .membership()
                .get_node(&self.inner.node_id)
                .is_some(),
            db_size_bytes: sm.size_on_disk(),
            fatal,
        }
    }

    /// Ready = no fatal error, a member, a leader is known, and everything committed applied.
    pub fn is_ready(&self) -> bool {
        let s = self.status();
        s.fatal.is_none() && s.is_member && s.leader_known && s.applied_index >= s.commit_index
    }

    /// The `Cluster.Status` answer.
    pub async fn cluster_status(&self) -> Result<pb::StatusResponse> {
        let inner = &self.inner;
        let m = inner.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let last_index = m.last_log_index.unwrap_or(0);
        let matched = m.replication.clone().unwrap_or_default();
        let mut members = Vec::new();
        let mut leader = None;
        for (id, node) in membership.nodes() {
            let ordinal = Identity::parse(&node.name).map(|i| i.ordinal).unwrap_or(0);
            if m.current_leader == Some(*id) {
                leader = Some(ordinal);
            }
            let (applied, reachable) = if *id == inner.node_id {
                (m.last_applied.as_ref().map_or(0, |l| l.index), true)
            } else {
                match matched.get(id) {
                    Some(Some(l)) => (l.index, true),
                    _ => (0, false),
                }
            };
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
                lag: last_index.saturating_sub(applied),
            });
        }
        members.sort_by_key(|m| m.ordinal);
        let limits = inner.config.limits;
        Ok(pb::StatusResponse {
            header: Some(self.kv().header(inner.sm.revision())),
            cluster_id: inner.cluster_id.clone(),
            leader,
            term: m.current_term,
            commit_index: m.local_committed.as_ref().map_or(0, |l| l.index),
            applied_index: m.last_applied.as_ref().map_or(0, |l| l.index),
            members,
            member: inner.identity.name.clone(),
            revision: inner.sm.revision(),
            compact_revision: inner.sm.compact_revision(),
            db_size_bytes: inner.sm.size_on_disk(),
            limits: Some(pb::Limits {
                max_key_bytes: limits.max_key_bytes as u64,
                max_value_bytes: limits.max_value_bytes as u64,
                max_txn_ops: limits.max_txn_ops as u64,
                max_range_limit: limits.max_range_limit as u64,
                watch_history_revisions: inner.config.watch_history_revisions,
            }),
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
    }

    /// Resolves when the node hits a fatal error (a failed fsync, a corrupt log), with its
    /// description. The process should then exit: the node no longer serves writes.
    pub async fn fatal(&self) -> String {
        let mut rx = self.inner.raft.metrics();
        loop {
            if let Some(f) = self.status().fatal {
                return f;
            }
            if rx.changed().await.is_err() {
                return "raft stopped".into();
            }
        }
    }

    /// Stops the node: Raft shut down, storage flushed. Requests fail afterwards.
    pub async fn shutdown(&self) -> Result<()> {
        self.inner
            .raft
            .shutdown()
            .await
            .map_err(|e| Error::Internal(format!("raft shutdown: {e}")))?;
        tracing::info!(member = %self.inner.identity.name, "node stopped");
        Ok(())
    }
}

fn fatal(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("the node stopped: {e}"))
}

impl Inner {
    /// Proposes a command and returns the state machine's answer.
    pub(crate) async fn write(&self, cmd: pb::Command) -> Result<pb::CommandResponse> {
        match self.raft.client_write(Command(cmd)).await {
            Ok(r) => {
                let resp = r.data.0;
                if !resp.error.is_empty() {
                    return Err(Error::InvalidArgument(resp.error));
                }
                Ok(resp)
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(self.not_leader(f))
            }
            Err(RaftError::APIError(e)) => Err(Error::Internal(e.to_string())),
            Err(RaftError::Fatal(f)) => Err(fatal(f)),
        }
    }

    /// Waits until reads here reflect every write acknowledged before this call.
    pub(crate) async fn linearize(&self) -> Result<()> {
        use openraft::error::LinearizableReadError as L;
        match self
            .raft
            .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
            .await
        {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(L::ForwardToLeader(f))) => Err(self.not_leader(f)),
            Err(RaftError::APIError(e)) => Err(Error::Unavailable(e.to_string())),
            Err(RaftError::Fatal(f)) => Err(fatal(f)),
        }
    }

    fn not_leader(&self, f: ForwardToLeader<TypeConfig>) -> Error {
        match f.leader_node {
            Some(node) => Error::NotLeader {
                leader_client_addr: Some(node.client_addr),
            },
            None => Error::Unavailable("no leader is known yet; retry shortly".into()),
        }
    }
}
