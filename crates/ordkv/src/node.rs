//! The node: assembles a replica (openraft over the ordkv store) with its data dir, its
//! write and read paths, its peer service and its lifecycle task, and owns them. The
//! modules it assembles take narrow handles (`Replica`, `Writer`, `Reads`, `Membership`),
//! never the node.

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::{Raft, SnapshotPolicy};
use ordkv_store::{SnapshotSummary, StoreOptions};
use tokio_util::sync::CancellationToken;

use crate::cluster::{Lifecycle, member_record};
use crate::config::{Identity, Limits, NodeConfig, Peers};
use crate::datadir::DataDir;
use crate::error::{Error, Result};
use crate::intent::IntentWatch;
use crate::kv::Kv;
use crate::leader_log::{LeaderChange, LeaderLog};
use crate::lease::LeaseClock;
use crate::membership::Membership;
use crate::pb;
use crate::peer::PeerShared;
use crate::peer::client::PeerNetwork;
use crate::read_index::Reads;
use crate::replica::{NodeStatus, Replica};
use crate::retention::Retention;
use crate::revocable::Revocable;
use crate::tls::{ClientAuth, PeerNames, TlsMaterial};
use crate::writes::Writer;

struct Inner {
    identity: Identity,
    config: NodeConfig,
    /// Node id, name and cluster id as peers see them.
    peer: Arc<PeerShared>,
    /// What holds the store, until `shutdown` takes it back.
    live: Revocable<Live>,
    kv: Kv,
    /// The StatefulSet's intended size, polled from the Kubernetes API.
    intent: IntentWatch,
    /// Holds the data dir's lock; `shutdown` lets go of it once the store is closed.
    data_dir: std::sync::Mutex<Option<Arc<DataDir>>>,
    /// The TLS material of `tls_dir`, re-read on change.
    tls: Option<TlsMaterial>,
    /// The leader changes this member saw lately.
    leader_log: LeaderLog,
    /// Cancelled on shutdown: stops every task in `tasks`.
    stop: CancellationToken,
    /// The tasks the node runs (peer server, cluster lifecycle, intent poller, lease clock,
    /// leader log, backups, TLS reloader), joined on shutdown.
    tasks: std::sync::Mutex<tokio::task::JoinSet<()>>,
    /// Tasks that had not ended [`TASKS_STOP_WAIT`] after the stop (tests expect none).
    #[cfg(test)]
    aborted_at_stop: std::sync::atomic::AtomicUsize,
}

/// The node's parts that hold the store.
struct Live {
    replica: Replica,
    /// Admits, removes and hands off (see `membership`).
    membership: Membership,
}

/// An open replica. Cloning is cheap; every clone is the same node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
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
        // log rather than a whole snapshot. With peers the lifecycle purges instead, keeping
        // what followers need next (`retention`).
        max_in_snapshot_log_to_keep: match config.peers {
            Peers::None => Retention::for_snapshot_every(config.snapshot_every_entries).keep,
            _ => u64::MAX,
        },
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
        if let Some(schedule) = &config.backup {
            std::fs::create_dir_all(&schedule.dir).map_err(|e| {
                Error::InvalidArgument(format!(
                    "backup dir {} (--backup-dir): {e}",
                    schedule.dir.display()
                ))
            })?;
        }
        let tls =
            match &config.tls_dir {
                Some(dir) => Some(TlsMaterial::load(dir).map_err(|e| {
                    Error::InvalidArgument(format!("TLS (`tls_dir`, --tls-dir): {e}"))
                })?),
                None => None,
            };
        let data_dir = Arc::new(DataDir::open(&config.data_dir, &identity)?);
        let (log, sm) =
            ordkv_store::open(&data_dir.path, &store_options(&config)).map_err(|e| {
                Error::DataDir {
                    path: data_dir.path.display().to_string(),
                    reason: format!("cannot open the store: {e}"),
                }
            })?;
        let node_id = data_dir.record.node_id;
        let cluster_id = Some(data_dir.record.cluster_id.clone()).filter(|c| !c.is_empty());
        let peer = Arc::new(PeerShared::new(
            node_id,
            identity.name.clone(),
            cluster_id,
            tls.clone(),
        ));
        let network = PeerNetwork {
            shared: peer.clone(),
        };
        let log_reader = log.clone();
        let raft = Raft::new(node_id, raft_config(&config)?, network, log, sm.clone())
            .await
            .map_err(|e| Error::Storage(format!("starting raft: {e}")))?;
        let replica = Replica::new(raft.clone(), sm, log_reader, peer.clone());
        let space = crate::space::SpaceGuard::new(
            replica.sm.clone(),
            data_dir.path.clone(),
            config.quota_bytes,
            config.min_free_bytes,
        );
        let writer = Writer::new(
            replica.clone(),
            config.request_wait,
            config.reject_follower_writes,
            Arc::new(space),
        );
        let reads = Reads::new(replica.clone(), config.request_wait);
        let leases = Arc::new(LeaseClock::new(
            replica.clone(),
            writer.clone(),
            config.request_wait,
        ));
        let kv = Kv::new(
            replica.clone(),
            writer.clone(),
            reads,
            config.limits,
            config.request_wait,
            leases.clone(),
        );
        let api = match config.peers {
            Peers::None => Err("a cluster of one".to_string()),
            _ => config.kubernetes.clone(),
        };
        let intent = IntentWatch::new(api);
        let membership = Membership::new(raft, &identity, &config, intent.clone(), peer.clone());
        let stop = CancellationToken::new();
        let lifecycle = Lifecycle::new(
            replica.clone(),
            membership.clone(),
            data_dir.clone(),
            &identity,
            &config,
        );
        let snapshots_dir = data_dir.path.join("snapshots");
        let live = Live {
            replica: replica.clone(),
            membership: membership.clone(),
        };
        let node = Node {
            inner: Arc::new(Inner {
                live: Revocable::new(&identity.name, live),
                identity,
                peer,
                kv,
                intent: intent.clone(),
                data_dir: std::sync::Mutex::new(Some(data_dir)),
                tls: tls.clone(),
                leader_log: LeaderLog::default(),
                stop: stop.clone(),
                tasks: Default::default(),
                #[cfg(test)]
                aborted_at_stop: Default::default(),
                config,
            }),
        };
        let inner = &node.inner;
        inner.spawn(intent.poll(stop.clone()));
        inner.spawn(
            inner
                .leader_log
                .clone()
                .follow(replica.clone(), stop.clone()),
        );
        inner.spawn(leases.clone().run(stop.clone()));
        if let Some(schedule) = inner.config.backup.clone() {
            inner.spawn(crate::backup::run(replica.clone(), schedule, stop.clone()));
        }
        if let Some(tls) = &tls {
            inner.spawn(tls.clone().watch(stop.clone()));
        }
        if let Some(addr) = inner.config.peer_listen_addr {
            let tls = tls
                .as_ref()
                .zip(PeerNames::of(&inner.identity, &inner.config.peers));
            let tls = tls.map(|(t, names)| t.server_config(ClientAuth::Peers(names), &[b"h2"]));
            let service = crate::peer::server::PeerService {
                replica,
                writer,
                membership,
                snapshots_dir,
                leases,
                stop: stop.clone(),
            };
            inner.spawn(crate::peer::server::serve(service, addr, tls, stop.clone()).await?);
        }
        if inner.config.peers == Peers::None {
            lifecycle.bootstrap_alone().await?;
        } else {
            inner.spawn(lifecycle.run(stop));
        }
        tracing::info!(
            member = %inner.identity.name,
            node_id,
            data_dir = %inner.config.data_dir.display(),
            "node open"
        );
        Ok(node)
    }

    /// The TLS material of `tls_dir`, kept current; `ordkv-server` serves the client and HTTP
    /// ports with it.
    pub fn tls(&self) -> Option<&TlsMaterial> {
        self.inner.tls.as_ref()
    }

    /// The leader changes this member saw lately (up to 20), oldest first.
    pub fn leader_changes(&self) -> Vec<LeaderChange> {
        self.inner.leader_log.recent()
    }

    /// The KV handle.
    pub fn kv(&self) -> Kv {
        self.inner.kv.clone()
    }

    /// This member's identity.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// The Raft node id of this data dir.
    pub fn node_id(&self) -> u64 {
        self.inner.peer.node_id
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
        match self.inner.live.get() {
            Ok(live) => live.replica.status(),
            Err(stopped) => NodeStatus {
                member: self.inner.identity.name.clone(),
                fatal: Some(stopped.to_string()),
                ..Default::default()
            },
        }
    }

    /// Ready = no fatal error, a member, a leader is known, everything committed here applied
    /// and, on a follower, the leader's recent commit index applied too.
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
        let inner = &self.inner;
        Ok(crate::status::build(
            &inner.live.get()?.replica,
            inner.intent.current(),
            &inner.config,
        ))
    }

    /// Removes the member with this ordinal from the cluster (scale-down). Runs on the
    /// leader; refused when it would leave the remaining voters without a quorum.
    pub async fn remove_member(&self, ordinal: u32) -> Result<String> {
        self.inner
            .live
            .get()?
            .membership
            .remove_ordinal(ordinal)
            .await
    }

    /// Hands leadership to the member with this ordinal.
    pub async fn transfer_leader(&self, ordinal: u32) -> Result<String> {
        self.inner
            .live
            .get()?
            .membership
            .transfer_to_ordinal(ordinal)
            .await
    }

    /// A consistent backup: builds a fresh snapshot of everything applied here and opens it.
    /// The file is ordkv's checksummed snapshot format (`ordkv snapshot restore` reads it).
    pub async fn backup(&self) -> Result<(SnapshotSummary, std::fs::File)> {
        crate::backup::fresh_snapshot(&self.inner.live.get()?.replica).await
    }

    #[cfg(test)]
    pub(crate) fn peer(&self) -> &PeerShared {
        &self.inner.peer
    }

    /// Test fault injection: act as if the named peers were unreachable (both directions).
    #[cfg(feature = "fault-injection")]
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
        let replica = match self.inner.live.get() {
            Ok(live) => live.replica.clone(),
            Err(stopped) => return stopped.to_string(),
        };
        let mut rx = replica.raft.server_metrics();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            // Not `status()`: that reads sled's directory for its size.
            if let Some(f) = replica.fatal_reason(&replica.metrics()) {
                return f;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() {
                    return replica
                        .fatal_reason(&replica.metrics())
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
    /// `leave_timeout`. Returns once the node's tasks have ended (the streams peers hold open
    /// included), storage is flushed and closed, and the data dir's lock is released: it can
    /// be opened again at once. The `Node` and `Kv` handles left refuse requests from then on
    /// (`UNAVAILABLE`, "was shut down"), and their watches end. A second call does nothing.
    pub async fn shutdown(&self) -> Result<()> {
        let Ok(live) = self.inner.live.get() else {
            return Ok(()); // shut down already
        };
        live.membership.leave_if_scaled_away().await;
        live.membership.hand_off_leadership().await;
        // From here on the handles the application keeps are refused: a stopped member's last
        // metrics still name a leader, and its session keepalives must not reach it.
        self.inner.kv.revoke();
        self.inner.stop.cancel();
        let stopped = live
            .replica
            .raft
            .shutdown()
            .await
            .map_err(|e| Error::Internal(format!("raft shutdown: {e}")));
        self.inner.join_tasks().await;
        let flushed = live
            .replica
            .sm
            .flush()
            .await
            .map_err(|e| Error::Storage(format!("final flush: {e}")));
        self.inner.live.revoke();
        drop(live);
        self.inner.release_data_dir().await;
        tracing::info!(member = %self.inner.identity.name, "node stopped");
        stopped.and(flushed)
    }
}

/// Whether sled let go of its lock on `db` (a lock taken here conflicts with sled's own).
fn store_closed(db: &std::path::Path) -> bool {
    use fs2::FileExt;
    match std::fs::File::open(db) {
        Ok(f) => f.try_lock_exclusive().is_ok(), // unlocked when `f` closes
        Err(_) => true,                          // no store was ever created
    }
}

/// How long shutdown waits for requests still in flight to let go of the store.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// How long shutdown waits for the node's tasks to see the stop before it aborts them.
const TASKS_STOP_WAIT: Duration = Duration::from_secs(1);

impl Inner {
    /// Waits until the store is closed (requests in flight hold it until they end, and sled
    /// lets go of its lock from its own threads), then releases the data dir's lock. If the
    /// store is still held after [`RELEASE_WAIT`], the lock stays until the last handle goes.
    async fn release_data_dir(&self) {
        let taken = self
            .data_dir
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(data_dir) = taken else { return };
        let sled = data_dir.path.join("sled").join("db");
        let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
        while Arc::strong_count(&data_dir) > 1 || !store_closed(&sled) {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    wait = ?RELEASE_WAIT,
                    "the store is still open after the shutdown; the data dir is released \
                     when the last request holding it ends"
                );
                *self.data_dir.lock().unwrap_or_else(|p| p.into_inner()) = Some(data_dir);
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Runs `task` until the node stops (it must end when `stop` is cancelled).
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
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
            // Not expected: each task ends on `stop`. A peer connection a task served could
            // outlive the abort and keep the store open until it closes.
            #[cfg(test)]
            self.aborted_at_stop
                .fetch_add(tasks.len(), std::sync::atomic::Ordering::SeqCst);
            tracing::warn!(
                left = tasks.len(),
                "aborting tasks still running at shutdown"
            );
            tasks.shutdown().await;
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
    let me = member_record(&identity, &config);
    let opts = store_options(&config);
    ordkv_store::restore(&data_dir.path, &opts, file, data_dir.record.node_id, me)
        .await
        .map_err(|e| dir_err(format!("restoring {}: {e}", file.display())))
}

pub(crate) fn store_options(config: &NodeConfig) -> StoreOptions {
    StoreOptions {
        cache_capacity_bytes: config.cache_capacity_bytes,
        history_revisions: config.watch_history_revisions,
        max_range_limit: config.limits.max_range_limit,
        wal_segment_bytes: config.wal_segment_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Once `shutdown` returned, the data dir is free, though the application still holds the
    /// node, a `Kv` and a watch: those refuse or end, and hold nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_releases_the_data_dir_from_the_handles_left() {
        use futures::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let config = NodeConfig::new(dir.path().join("kv-0"));
        let node = Node::open(config.clone()).await.unwrap();
        let kv = node.kv();
        kv.put_value("k", "v1").await.unwrap();
        let mut watch = kv.watch_key("k").await.unwrap();
        assert!(watch.next().await.unwrap().unwrap().created);
        node.shutdown().await.unwrap();

        let again = Node::open(config).await.unwrap();
        again.wait_ready(Duration::from_secs(10)).await.unwrap();
        let got = again.kv().get_value("k").await.unwrap();
        assert_eq!(got.as_deref(), Some(&b"v1"[..]));
        match kv.put_value("k", "v2").await {
            Err(Error::Unavailable(m)) => assert!(m.contains("was shut down"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(
            node.status()
                .fatal
                .is_some_and(|f| f.contains("was shut down"))
        );
        assert!(
            node.shutdown().await.is_ok(),
            "a second shutdown is a no-op"
        );
        let ended = tokio::time::timeout(Duration::from_secs(5), watch.next()).await;
        assert!(
            matches!(ended, Ok(None | Some(Err(_)))),
            "the old watch ends: {ended:?}"
        );
        again.shutdown().await.unwrap();
    }

    fn grant(ttl: i64) -> pb::LeaseGrantRequest {
        pb::LeaseGrantRequest {
            ttl,
            ..Default::default()
        }
    }

    /// A member stopped while peers stream to it (a follower under the leader's appends, then
    /// the leader under forwarded writes) has freed its data dir when `shutdown` returns,
    /// though the test still holds its `Node` and a `Kv`: it reopens at once, as a pod
    /// restarted in place does, and the old handles serve nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_stopped_under_peer_traffic_reopens_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["kv-0", "kv-1", "kv-2"];
        let peers: std::collections::BTreeMap<String, String> = names
            .iter()
            .map(|n| {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .unwrap();
                (n.to_string(), port.to_string())
            })
            .collect();
        let config = |name: &str| {
            let mut c = NodeConfig::new(dir.path().join(name));
            c.name = name.to_string();
            c.peers = Peers::Static(peers.clone());
            c.peer_listen_addr = Some(peers[name].parse().unwrap());
            c
        };
        let mut members = Vec::new();
        for name in names {
            members.push(Node::open(config(name)).await.unwrap());
        }
        for m in &members {
            m.wait_ready(Duration::from_secs(30)).await.unwrap();
        }
        // Writes through kv-1 (forwarded to the leader) until the test ends.
        let writing = CancellationToken::new();
        let writer = tokio::spawn({
            let (kv, writing) = (members[1].kv(), writing.clone());
            async move {
                let mut acked = 0u32;
                while !writing.is_cancelled() {
                    if kv.put_value(format!("k{acked}"), "v").await.is_ok() {
                        acked += 1;
                    }
                }
                acked
            }
        });
        for stopped in [2, 0] {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let node = members.remove(stopped);
            let (kv, lease) = (
                node.kv(),
                node.kv().lease_grant(grant(60)).await.unwrap().id,
            );
            node.shutdown().await.unwrap();
            // A handle kept by the application serves nothing more, not even through the
            // peers (the stopped member's last metrics still name a leader).
            let refused = |r: Result<_>| match r {
                Err(Error::Unavailable(m)) => assert!(m.contains("was shut down"), "{m}"),
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("a stopped member served a request"),
            };
            refused(kv.lease_keep_alive(lease).await.map(drop));
            refused(kv.put_value("after", "stop").await.map(drop));
            refused(kv.get_value("k0").await.map(drop));
            let aborted = node
                .inner
                .aborted_at_stop
                .load(std::sync::atomic::Ordering::SeqCst);
            assert_eq!(aborted, 0, "tasks of {} outlived the stop", names[stopped]);
            // Released by `shutdown` itself: the handles kept here do not hold it.
            let again = Node::open(config(names[stopped]))
                .await
                .unwrap_or_else(|e| panic!("{} does not reopen: {e}", names[stopped]));
            again.wait_ready(Duration::from_secs(30)).await.unwrap();
            refused(kv.get_value("k0").await.map(drop));
            drop((node, kv));
            members.insert(stopped, again);
        }
        writing.cancel();
        let acked = writer.await.unwrap();
        assert!(acked > 0, "no write was acknowledged");
        let last = format!("k{}", acked - 1);
        let read = members[2].kv().get_value(last.clone()).await.unwrap();
        assert_eq!(read.as_deref(), Some(&b"v"[..]), "{last}");
        for m in &members {
            m.shutdown().await.unwrap();
        }
    }
}
