//! A cluster of real `ordkv serve` processes on loopback, shaped like a StatefulSet:
//! members `kv-0..kv-N`, each a [`NodeProcess`] with its own temp data dir and ports that
//! are picked before any member starts, so every member's `--peers` map names them all.
//!
//! [`Cluster::start`] launches the members together (ordinal 0 bootstraps once every listed
//! peer answered; the others join) and waits until each is ready. A cluster can be planned
//! larger than it starts ([`Cluster::start_planned`]): members added later with
//! [`Cluster::add_member`] get a `--peers` map of every planned member, while the first
//! ones list only themselves (ordinal 0 waits for every listed peer before bootstrapping).
//!
//! Every wait has a deadline and polls a condition ([`Cluster::wait_until`]); a wait that
//! runs out panics with what it waited for, the last reason it was not met, and every
//! member's logs.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ordkv_proto::v1::{
    Consistency, KeyValue, PutRequest, RangeRequest, StatusRequest, StatusResponse,
    cluster_client::ClusterClient, kv_client::KvClient,
};
use tonic::transport::{Channel, Endpoint};

use crate::{NodeProcess, Ports};

/// How long a cluster may take to converge after a change (election, catch-up, heal).
pub const CONVERGE: Duration = Duration::from_secs(30);
/// The per-request deadline of the harness's own probes (status, ranges).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often [`Cluster::wait_until`] looks again.
const POLL: Duration = Duration::from_millis(50);

/// The name of the member with ordinal `i`.
pub fn member_name(i: usize) -> String {
    format!("kv-{i}")
}

/// What a member's `member.json` records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    /// The cluster the data dir belongs to (empty before bootstrap/join).
    pub cluster_id: String,
    /// The Raft node id of the data dir.
    pub node_id: u64,
    /// The member name that created it.
    pub name: String,
}

/// Members `kv-0..` of one cluster.
pub struct Cluster {
    /// By ordinal; members not added yet are absent.
    nodes: Vec<Option<NodeProcess>>,
    /// Ports of every planned member, by ordinal.
    ports: Vec<Ports>,
    /// How many members the cluster started with (their `--peers` map lists only them).
    initial: usize,
    /// `serve` flags of every member (besides identity, addresses and peers); `{name}` in a
    /// flag stands for the member's name (e.g. its own `--tls-dir`).
    args: Vec<String>,
    /// TLS for the harness's own client connections.
    client_tls: Option<tonic::transport::ClientTlsConfig>,
    /// Environment of every member.
    env: Vec<(String, String)>,
    /// Another `ordkv` binary the members start with (see [`Cluster::start_on`]).
    bin: Option<PathBuf>,
}

/// `count` sets of free ports, no port used twice.
fn distinct_ports(count: usize) -> Vec<Ports> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    while out.len() < count {
        let p = Ports::free();
        if [p.client, p.peer, p.http]
            .iter()
            .all(|port| seen.insert(*port))
        {
            out.push(p);
        }
    }
    out
}

impl Cluster {
    /// Starts `members` members (`kv-0..`) with `args` and waits until every one is ready.
    pub async fn start(members: usize, args: &[&str]) -> Cluster {
        Cluster::start_planned(members, members, args).await
    }

    /// Like [`Cluster::start`], with ports reserved for `planned` members in all, so that
    /// [`Cluster::add_member`] can add the rest later.
    pub async fn start_planned(members: usize, planned: usize, args: &[&str]) -> Cluster {
        Cluster::launch(members, planned, args)
            .formed(members)
            .await
    }

    /// [`Cluster::start`] with every member running `bin`, another build of `ordkv`.
    pub async fn start_on(bin: &std::path::Path, members: usize, args: &[&str]) -> Cluster {
        let mut c = Cluster::unstarted(members, members, args, &[], Some(bin.to_path_buf()));
        for i in 0..members {
            c.create(i);
            c.spawn(i);
        }
        c.formed(members).await
    }

    /// [`Cluster::start`] with environment variables for every member.
    pub async fn start_with_env(
        members: usize,
        args: &[&str],
        env: &[(String, String)],
    ) -> Cluster {
        Cluster::launch_with_env(members, members, args, env)
            .formed(members)
            .await
    }

    /// [`Cluster::start`] with TLS on the client port: the harness connects with
    /// `client_tls` (members need `--http-plaintext`: readiness is polled over plain HTTP).
    pub async fn start_tls(
        members: usize,
        planned: usize,
        args: &[&str],
        client_tls: tonic::transport::ClientTlsConfig,
    ) -> Cluster {
        let mut c = Cluster::launch(members, planned, args);
        c.client_tls = Some(client_tls);
        c.formed(members).await
    }

    /// Waits until every started member is ready and `members` vote.
    async fn formed(mut self, members: usize) -> Cluster {
        self.wait_ready_all().await;
        // Ready means serving, which a learner already does; the scenarios assume the first
        // members vote (a partition right after start must leave a majority that can elect).
        self.wait_voters(members).await;
        self.wait_settled().await;
        self
    }

    /// Waits until every running member has applied everything the leader committed, in two
    /// polls in a row: the membership changes that formed the cluster are behind every
    /// member (a crash point armed after start must not fire on one of them).
    pub async fn wait_settled(&self) {
        let leader = self.leader().await;
        let last = std::cell::Cell::new(None);
        let last = &last;
        self.wait_until(
            "every member applied the leader's log",
            Duration::from_secs(30),
            || async move {
                let commit = self.try_status(leader).await?.commit_index;
                for i in self.running() {
                    let applied = self.try_status(i).await?.applied_index;
                    if applied < commit {
                        last.set(None);
                        return Err(format!("kv-{i} applied {applied} of {commit}"));
                    }
                }
                if last.replace(Some(commit)) == Some(commit) {
                    Ok(())
                } else {
                    Err(format!("committed {commit}; checking once more"))
                }
            },
        )
        .await
    }

    /// Waits until the leader counts `n` voters.
    pub async fn wait_voters(&self, n: usize) {
        let leader = self.leader().await;
        self.wait_until(
            &format!("{n} voters"),
            Duration::from_secs(30),
            || async move {
                let s = self.try_status(leader).await?;
                let voters = s
                    .members
                    .iter()
                    .filter(|m| m.role == ordkv_proto::v1::Role::Voter as i32)
                    .count();
                if voters >= n {
                    Ok(())
                } else {
                    Err(format!("kv-{leader} counts {voters} voters"))
                }
            },
        )
        .await
    }

    /// Spawns the first `members` members without waiting for them.
    pub fn launch(members: usize, planned: usize, args: &[&str]) -> Cluster {
        Cluster::launch_with_env(members, planned, args, &[])
    }

    /// [`Cluster::launch`] with environment variables for every member.
    pub fn launch_with_env(
        members: usize,
        planned: usize,
        args: &[&str],
        env: &[(String, String)],
    ) -> Cluster {
        assert!(members >= 1 && planned >= members);
        let mut cluster = Cluster::unstarted(members, planned, args, env, None);
        for i in 0..members {
            cluster.create(i);
            cluster.spawn(i);
        }
        cluster
    }

    fn unstarted(
        members: usize,
        planned: usize,
        args: &[&str],
        env: &[(String, String)],
        bin: Option<PathBuf>,
    ) -> Cluster {
        Cluster {
            nodes: (0..planned).map(|_| None).collect(),
            ports: distinct_ports(planned),
            initial: members,
            args: args.iter().map(|s| s.to_string()).collect(),
            client_tls: None,
            env: env.to_vec(),
            bin,
        }
    }

    /// The `--peers` value member `i` starts with.
    pub fn peers_flag(&self, i: usize) -> String {
        let listed = if i < self.initial {
            self.initial
        } else {
            self.ports.len()
        };
        (0..listed)
            .map(|j| format!("{}=127.0.0.1:{}", member_name(j), self.ports[j].peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn create(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "kv-{i} exists already");
        let mut args = vec!["--peers".to_string(), self.peers_flag(i)];
        let name = member_name(i);
        args.extend(self.args.iter().map(|a| a.replace("{name}", &name)));
        let mut node = NodeProcess::new(&member_name(i), self.ports[i], &args);
        node.set_env(&self.env);
        node.set_bin(self.bin.clone());
        self.nodes[i] = Some(node);
    }

    /// Adds the planned member `i` (scale-up), starts it and waits until it is ready.
    pub async fn add_member(&mut self, i: usize) {
        self.launch_member(i, &[]);
        self.wait_ready(i).await;
    }

    /// Starts the planned member `i` with `extra` flags besides the cluster's, without
    /// waiting for it.
    pub fn launch_member(&mut self, i: usize, extra: &[&str]) {
        assert!(i < self.ports.len(), "kv-{i} was not planned");
        let args = std::mem::take(&mut self.args);
        self.args = args
            .iter()
            .cloned()
            .chain(extra.iter().map(|s| s.to_string()))
            .collect();
        self.create(i);
        self.args = args;
        self.spawn(i);
    }

    /// Stops and forgets member `i` (its data dir goes with it).
    pub fn remove(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    /// Ordinals of every member added so far.
    pub fn ordinals(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_some())
            .collect()
    }

    /// Ordinals of the members whose process is started (not killed).
    pub fn running(&self) -> Vec<usize> {
        self.ordinals()
            .into_iter()
            .filter(|i| self.node(*i).is_started())
            .collect()
    }

    /// Member `i`.
    pub fn node(&self, i: usize) -> &NodeProcess {
        self.nodes[i]
            .as_ref()
            .unwrap_or_else(|| panic!("kv-{i} was never added"))
    }

    /// Member `i`, mutably.
    pub fn node_mut(&mut self, i: usize) -> &mut NodeProcess {
        self.nodes[i]
            .as_mut()
            .unwrap_or_else(|| panic!("kv-{i} was never added"))
    }

    /// Starts member `i`'s process without waiting.
    pub fn spawn(&mut self, i: usize) {
        self.node_mut(i).spawn();
    }

    /// Waits until member `i` answers `/readyz` with 200.
    pub async fn wait_ready(&mut self, i: usize) {
        self.node_mut(i).wait_ready().await;
    }

    /// Waits until every started member is ready.
    pub async fn wait_ready_all(&mut self) {
        for i in self.running() {
            self.wait_ready(i).await;
        }
    }

    /// SIGKILLs member `i`.
    pub fn kill_9(&mut self, i: usize) {
        self.node_mut(i).kill_9();
    }

    /// Starts member `i` again on its data dir (SIGKILLing it first if it runs) and waits
    /// until it is ready.
    pub async fn restart(&mut self, i: usize) {
        self.node_mut(i).restart().await;
    }

    /// SIGKILLs member `i` if it runs and deletes its data dir (a lost volume).
    pub fn wipe_data(&mut self, i: usize) {
        if self.node(i).is_started() {
            self.kill_9(i);
        }
        self.node_mut(i).wipe_data_dir();
    }

    /// [`Cluster::wipe_data`], then starts the member on the empty dir and waits for ready.
    pub async fn wipe(&mut self, i: usize) {
        self.wipe_data(i);
        self.spawn(i);
        self.wait_ready(i).await;
    }

    /// Makes member `i` and each of `others` drop peer traffic between them (both sides
    /// are told, so the cut holds in both directions). Needs `--enable-fault-injection`.
    pub async fn partition(&self, i: usize, others: &[usize]) {
        let names: Vec<String> = others.iter().map(|o| member_name(*o)).collect();
        self.post_partition(i, &names.join(",")).await;
        for o in others {
            self.post_partition(*o, &member_name(i)).await;
        }
    }

    /// Lifts every partition on every running member.
    pub async fn heal(&self) {
        for i in self.running() {
            self.post_partition(i, "").await;
        }
    }

    async fn post_partition(&self, i: usize, peers: &str) {
        let path = format!("/debug/partition?peers={peers}");
        match self.node(i).http_post(&path).await {
            Ok((200, _)) => {}
            other => panic!("POST {path} on kv-{i}: {other:?}\n{}", self.logs()),
        }
    }

    /// A lazily connecting channel to member `i`'s client port with a per-request deadline.
    pub fn channel(&self, i: usize, timeout: Duration) -> Channel {
        let scheme = if self.client_tls.is_some() {
            "https"
        } else {
            "http"
        };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{}", self.node(i).client_addr()))
            .expect("valid endpoint");
        let endpoint = match &self.client_tls {
            Some(tls) => endpoint.tls_config(tls.clone()).expect("client TLS"),
            None => endpoint,
        };
        endpoint
            .connect_timeout(Duration::from_secs(2))
            .timeout(timeout)
            .connect_lazy()
    }

    /// A KV client to member `i` on a new connection.
    pub fn kv(&self, i: usize) -> KvClient<Channel> {
        KvClient::new(self.channel(i, crate::RPC_TIMEOUT))
    }

    /// A Cluster client to member `i` on a new connection.
    pub fn cluster_client(&self, i: usize) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel(i, crate::RPC_TIMEOUT))
    }

    /// `Cluster.Status` of member `i`, or why it did not answer.
    pub async fn try_status(&self, i: usize) -> Result<StatusResponse, String> {
        ClusterClient::new(self.channel(i, PROBE_TIMEOUT))
            .status(StatusRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|e| format!("kv-{i}: Cluster.Status: {:?} {}", e.code(), e.message()))
    }

    /// `Cluster.Status` of member `i`; panics with the logs if it does not answer.
    pub async fn status(&self, i: usize) -> StatusResponse {
        match self.try_status(i).await {
            Ok(s) => s,
            Err(e) => panic!("{e}\n{}", self.logs()),
        }
    }

    /// Every key and value of member `i` (all pages) read with `consistency`.
    pub async fn try_range(
        &self,
        i: usize,
        consistency: Consistency,
    ) -> Result<Vec<KeyValue>, tonic::Status> {
        let mut client = KvClient::new(self.channel(i, crate::RPC_TIMEOUT));
        let mut out = Vec::new();
        let mut start = Bytes::new();
        loop {
            let resp = client
                .range(RangeRequest {
                    start: start.clone(),
                    consistency: consistency as i32,
                    ..Default::default()
                })
                .await?
                .into_inner();
            out.extend(resp.kvs);
            if !resp.more {
                return Ok(out);
            }
            start = resp.next_start;
        }
    }

    /// [`Cluster::try_range`], panicking with the logs on error.
    pub async fn range(&self, i: usize, consistency: Consistency) -> Vec<KeyValue> {
        match self.try_range(i, consistency).await {
            Ok(kvs) => kvs,
            Err(e) => panic!("range on kv-{i}: {e:?}\n{}", self.logs()),
        }
    }

    /// Waits until member `leader` purged its Raft log past `index` (from its log's
    /// `purge log` lines), so that a member that has only up to `index` needs a snapshot.
    pub async fn wait_purged_past(&self, leader: usize, index: u64) {
        self.wait_until(
            &format!("kv-{leader} purged its log past {index}"),
            CONVERGE,
            || async {
                match crate::purged_upto(&self.node(leader).current_log()) {
                    Some(p) if p > index => Ok(()),
                    other => Err(format!("purged up to {other:?}")),
                }
            },
        )
        .await
    }

    /// Waits until `of` serve identical full ranges (keys, values, revisions) from their local
    /// state and report the same revision, at `revision` or later; returns that range. Members that all restarted can agree on an older
    /// state for a moment: each serves what it had applied until the leader's commit index
    /// reaches them again.
    pub async fn converged_at_least(&self, of: &[usize], revision: u64) -> Vec<KeyValue> {
        self.wait_until(
            &format!("members {of:?} hold identical data at revision {revision} or later"),
            CONVERGE,
            || async {
                let mut first: Option<(usize, Vec<KeyValue>, u64)> = None;
                for &i in of {
                    let kvs = self
                        .try_range(i, Consistency::Serializable)
                        .await
                        .map_err(|e| format!("range on kv-{i}: {e:?}"))?;
                    let revision = self.try_status(i).await?.revision;
                    match &first {
                        None => first = Some((i, kvs, revision)),
                        Some((j, other, rev)) => {
                            if *other != kvs || *rev != revision {
                                return Err(format!(
                                    "kv-{j} has {} keys at revision {rev}, kv-{i} has {} keys at \
                                     revision {revision}",
                                    other.len(),
                                    kvs.len()
                                ));
                            }
                        }
                    }
                }
                match first {
                    Some((j, _, rev)) if rev < revision => {
                        Err(format!("kv-{j} and the others are at revision {rev}"))
                    }
                    first => Ok(first.map(|(_, kvs, _)| kvs).unwrap_or_default()),
                }
            },
        )
        .await
    }

    /// Waits until `members` agree on one leader: each answers, all report the same leader
    /// and term, and the leader is one of them and reports itself. Returns its ordinal.
    pub async fn leader_among(&self, members: &[usize]) -> usize {
        let members = members.to_vec();
        self.wait_until(
            &format!("members {members:?} agree on a leader"),
            CONVERGE,
            || async {
                let mut seen = Vec::new();
                for &i in &members {
                    let s = self.try_status(i).await?;
                    seen.push((i, s.leader, s.term));
                }
                let (_, leader, term) = seen[0];
                let Some(leader) = leader.map(|l| l as usize) else {
                    return Err(format!("no leader known: {seen:?}"));
                };
                if !members.contains(&leader) {
                    return Err(format!("the leader is not among them: {seen:?}"));
                }
                if seen
                    .iter()
                    .any(|(_, l, t)| *l != Some(leader as u32) || *t != term)
                {
                    return Err(format!("they disagree: {seen:?}"));
                }
                Ok(leader)
            },
        )
        .await
    }

    /// [`Cluster::leader_among`] every running member.
    pub async fn leader(&self) -> usize {
        self.leader_among(&self.running()).await
    }

    /// Polls `probe` until it returns `Ok` (its value is returned) or `within` ran out (a
    /// panic naming `what`, the last `Err` reason, and every member's logs).
    pub async fn wait_until<T, F, Fut>(&self, what: &str, within: Duration, mut probe: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let until = Instant::now() + within;
        loop {
            let why = match probe().await {
                Ok(v) => return v,
                Err(why) => why,
            };
            if Instant::now() >= until {
                panic!(
                    "timed out after {within:?} waiting until {what}; last: {why}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// What member `i`'s data dir records (`member.json`).
    pub fn member_record(&self, i: usize) -> MemberRecord {
        let path: PathBuf = self.node(i).data_dir().join("member.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("parse {}: {e}: {text}", path.display()));
        MemberRecord {
            cluster_id: v["cluster_id"].as_str().unwrap_or_default().to_string(),
            node_id: v["node_id"].as_u64().expect("node_id in member.json"),
            name: v["name"].as_str().unwrap_or_default().to_string(),
        }
    }

    /// Every member's logs (every start, in order).
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .flatten()
            .map(NodeProcess::logs)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A writer that keeps putting `{prefix}NNNNN` through the given members, round robin, until
/// stopped, and records when each write was acknowledged.
pub struct BackgroundWriter {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, String, Instant)>>>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

/// What a [`BackgroundWriter`] did.
pub struct WriterReport {
    /// Acknowledged writes, key and value, in order.
    pub acked: Vec<(String, String)>,
    /// Writes that failed or timed out (their outcome is unknown).
    pub failed: u64,
    /// When each acknowledged write was acknowledged.
    pub acked_at: Vec<Instant>,
}

/// Keys and values as (lossy) strings, by key: what the members hold, to check writes against.
pub fn as_strings(kvs: &[KeyValue]) -> std::collections::BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect()
}

impl WriterReport {
    /// The acknowledged writes that `held` (see [`as_strings`]) does not have.
    pub fn missing_from<'a>(
        &'a self,
        held: &std::collections::BTreeMap<String, String>,
    ) -> Vec<&'a (String, String)> {
        self.acked
            .iter()
            .filter(|(k, v)| held.get(k) != Some(v))
            .collect()
    }

    /// The longest time without an acknowledgement within `[from, to]`.
    pub fn longest_gap_within(&self, from: Instant, to: Instant) -> Duration {
        let mut last = from;
        let mut gap = Duration::ZERO;
        for at in self.acked_at.iter().filter(|at| **at >= from && **at <= to) {
            gap = gap.max(at.duration_since(last));
            last = *at;
        }
        gap.max(to.saturating_duration_since(last))
    }

    /// The longest time without an acknowledgement from `since` to the last one.
    pub fn longest_gap(&self, since: Instant) -> Duration {
        let mut last = since;
        let mut gap = Duration::ZERO;
        for at in self.acked_at.iter().filter(|at| **at >= since) {
            gap = gap.max(at.duration_since(last));
            last = *at;
        }
        gap
    }
}

impl BackgroundWriter {
    /// Starts writing through members `via` (3 s per request).
    pub fn start(c: &Cluster, via: &[usize], prefix: &str) -> BackgroundWriter {
        let clients: Vec<KvClient<Channel>> = via
            .iter()
            .map(|i| KvClient::new(c.channel(*i, Duration::from_secs(3))))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<(String, String, Instant)>>> = Arc::default();
        let failed: Arc<AtomicU64> = Arc::default();
        let (s, a, f, prefix) = (
            stop.clone(),
            acked.clone(),
            failed.clone(),
            prefix.to_string(),
        );
        let task = tokio::spawn(async move {
            let mut n = 0usize;
            while !s.load(Ordering::SeqCst) {
                let (key, value) = (format!("{prefix}{n:05}"), format!("v-{n}"));
                let mut client = clients[n % clients.len()].clone();
                let put = client.put(PutRequest {
                    key: Bytes::from(key.clone()),
                    value: Bytes::from(value.clone()),
                    prev_kv: false,
                    lease: 0,
                });
                match put.await {
                    Ok(_) => a.lock().unwrap().push((key, value, Instant::now())),
                    Err(_) => {
                        f.fetch_add(1, Ordering::SeqCst);
                    }
                }
                n += 1;
            }
        });
        BackgroundWriter {
            stop,
            acked,
            failed,
            task,
        }
    }

    /// Writes acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `more` writes beyond `from` are acknowledged; returns how many are.
    pub async fn progresses(&self, c: &Cluster, from: usize, more: usize, phase: &str) -> usize {
        c.wait_until(
            &format!("the background writer progresses ({phase})"),
            CONVERGE,
            || async {
                let n = self.acked();
                if n >= from + more {
                    Ok(n)
                } else {
                    Err(format!(
                        "{n} acknowledged, failed {}",
                        self.failed.load(Ordering::SeqCst)
                    ))
                }
            },
        )
        .await
    }

    /// Stops writing and reports.
    pub async fn stop(self) -> WriterReport {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("background writer");
        let (acked, acked_at) = self
            .acked
            .lock()
            .unwrap()
            .drain(..)
            .map(|(k, v, at)| ((k, v), at))
            .unzip();
        WriterReport {
            acked,
            failed: self.failed.load(Ordering::SeqCst),
            acked_at,
        }
    }
}
