//! A small StatefulSet controller over the Docker engine, to run the `ordkv:dev` image the way
//! Kubernetes runs the StatefulSet in `deploy/kubernetes/`.
//!
//! [`StatefulSet::new`] creates a user-defined network `<prefix>-net`. Member `i` is the
//! container `<prefix>-ordkv-i` with hostname `ordkv-i`, the pod's environment
//! (`POD_NAME=ordkv-i`, `POD_NAMESPACE=default`, `ORDKV_SERVICE=ordkv`, `/data`, the three
//! listen addresses on `0.0.0.0`), the network aliases Kubernetes DNS would give the pod
//! (`ordkv-i.ordkv.default.svc.cluster.local`, plus the headless Service
//! `ordkv.default.svc.cluster.local` and the read Service
//! `ordkv-read.default.svc.cluster.local`, which therefore resolve to every member), the
//! search domains of a pod in `default` (so `ordkv-0.ordkv` and `ordkv-read` resolve too),
//! and one named volume `<prefix>-data-ordkv-i` on `/data` (its PVC) that outlives the
//! container. Containers run like the manifests' pods: read-only root fs, no capabilities,
//! no new privileges. Each ordinal's client and HTTP ports are also published on fixed
//! loopback ports (picked free once per ordinal, kept across re-creations), so the test
//! process can probe `/readyz` and drive gRPC load from outside.
//!
//! Like the controller: [`StatefulSet::scale_to`] creates missing ordinals in order and
//! deletes extra ones from the highest down, each gracefully (SIGTERM, then removed), keeping
//! their volumes; [`StatefulSet::delete_pod`] removes a container at once and recreates it
//! with the same name and volume; [`StatefulSet::replace_pod`] does it gracefully (a rolling
//! update). Faults: [`StatefulSet::kill`], [`StatefulSet::stop_all`] /
//! [`StatefulSet::start_all`], [`StatefulSet::wipe_volume`] (a lost PVC),
//! [`StatefulSet::disconnect`] / [`StatefulSet::connect`] (a network partition); from the
//! host, inside a member's network namespace (`nsenter`): [`StatefulSet::drop_from`] /
//! [`StatefulSet::undrop_from`] (a one-way partition, iptables), [`StatefulSet::shape`] /
//! [`StatefulSet::unshape`] (delay and loss: tc netem, or an NFQUEUE delayer); [`StatefulSet::pause`] /
//! [`StatefulSet::unpause`] (a frozen process).
//!
//! Clients: [`StatefulSet::client`] is `docker run --rm --network <net> ordkv:dev <args>`
//! (the walkthrough's `kubectl run nettool`); [`StatefulSet::exec`] runs the CLI inside a
//! member against its own loopback (works while it is disconnected);
//! [`StatefulSet::lookup`] lists a name's A records from inside the network. The image is
//! `FROM scratch` with no DNS tool, so `lookup` runs the host's `getent` in a throwaway
//! container with the host's loader and libc mounted read-only (`getent_available` says
//! whether the host has them).
//!
//! Every docker command has a deadline. A test that panics prints the last lines of every
//! member's logs (also of containers removed earlier, captured before removal) and keeps
//! the full logs in `$TMPDIR/ordkv-containers/<prefix>/`; dropping the set removes its
//! containers, volumes and network, also on panic. The image is built once per
//! test process by `deploy/docker/build.sh` (a no-op when up to date); set
//! `ORDKV_TEST_SKIP_IMAGE_BUILD=1` to use an existing image as is, `ORDKV_TEST_IMAGE` to
//! use another tag. At most `ORDKV_TEST_CONTAINER_CLUSTERS` (default 2) sets exist at once
//! in one process. Leftovers of a process that was SIGKILLed:
//! `docker rm -f $(docker ps -aq --filter label=ordkv-test)`, then the same for
//! `docker volume ls -q` and `docker network ls -q` with that filter.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::http_get;
use ordkv_proto::v1::cluster_client::ClusterClient;
use ordkv_proto::v1::kv_client::KvClient;
use ordkv_proto::v1::{
    Consistency, GetRequest, PutRequest, RangeRequest, Role, StatusRequest, StatusResponse,
};
use tonic::transport::{Channel, Endpoint};

use crate::kube_api::FakeKubeApi;
use crate::{Output, free_port};

/// Where Kubernetes mounts a pod's service account.
const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The headless Service.
pub const SERVICE: &str = "ordkv";
/// The namespace the members believe they run in.
pub const NAMESPACE: &str = "default";
/// The headless Service's DNS name: resolves to every member.
pub const SERVICE_DNS: &str = "ordkv.default.svc.cluster.local";
/// The read Service's DNS name: resolves to every member.
pub const READ_SERVICE_DNS: &str = "ordkv-read.default.svc.cluster.local";
/// Search domains of a pod in `default`.
const DNS_SEARCH: [&str; 3] = [
    "default.svc.cluster.local",
    "svc.cluster.local",
    "cluster.local",
];

/// Deadline of one docker command (create, exec, inspect, rm...).
pub const DOCKER_DEADLINE: Duration = Duration::from_secs(60);
/// `docker stop -t`: like `terminationGracePeriodSeconds: 30`.
pub const STOP_GRACE_SECS: u32 = 30;
/// Deadline of a graceful stop (grace period plus slack).
const STOP_DEADLINE: Duration = Duration::from_secs(STOP_GRACE_SECS as u64 + 30);
/// How long a member may take to answer `/readyz` with 200.
pub const READY_DEADLINE: Duration = Duration::from_secs(60);
/// How long the cluster may take to converge after a change (election, catch-up, heal,
/// membership change).
pub const CONVERGE: Duration = Duration::from_secs(60);
/// The per-request deadline of the harness's own CLI and gRPC probes.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often [`StatefulSet::wait_until`] looks again.
const POLL: Duration = Duration::from_millis(200);
/// Log lines per container incarnation in failure messages (full logs go to files).
const LOG_TAIL: usize = 60;

/// The pod name of ordinal `i`.
pub fn pod_name(i: usize) -> String {
    format!("ordkv-{i}")
}

/// The stable DNS name of ordinal `i` (headless Service record).
pub fn pod_dns(i: usize) -> String {
    format!("ordkv-{i}.{SERVICE}.{NAMESPACE}.svc.cluster.local")
}

/// `pod_dns(i):7379`, the client endpoint inside the network.
pub fn pod_endpoint(i: usize) -> String {
    format!("{}:7379", pod_dns(i))
}

/// The image under test: `ORDKV_TEST_IMAGE`, else `ordkv:dev`.
pub fn image() -> String {
    std::env::var("ORDKV_TEST_IMAGE").unwrap_or_else(|_| "ordkv:dev".into())
}

// ---------------------------------------------------------------------------------------
// Commands with deadlines
// ---------------------------------------------------------------------------------------

/// Runs `cmd` to completion, or kills it and returns `Err` after `deadline`.
pub fn run_cmd(mut cmd: Command, deadline: Duration) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let until = Instant::now() + deadline;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(format!("wait for {cmd:?}: {e}")),
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out.join().unwrap_or_default();
            let stderr = err.join().unwrap_or_default();
            return Err(format!(
                "{cmd:?} did not finish within {deadline:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned(),
    })
}

/// `docker <args>` with `deadline`; `Err` only when it could not run or timed out.
pub fn try_docker(args: &[&str], deadline: Duration) -> Result<Output, String> {
    let mut cmd = Command::new("docker");
    cmd.args(args);
    run_cmd(cmd, deadline)
}

/// `docker <args>` within [`DOCKER_DEADLINE`]; panics if it timed out (not on failure).
pub fn docker(args: &[&str]) -> Output {
    try_docker(args, DOCKER_DEADLINE).unwrap_or_else(|e| panic!("{e}"))
}

/// `docker <args>`; panics unless it exited 0.
fn docker_ok(args: &[&str]) -> Output {
    let out = docker(args);
    assert!(out.status.success(), "docker {args:?} failed\n{out}");
    out
}

/// Removes ANSI escape sequences (colours) from logs.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
}

/// Makes sure the image exists and is up to date: runs `deploy/docker/build.sh` once per
/// process (it builds a static release binary the first time: minutes).
pub fn ensure_image() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        let version = try_docker(&["version", "-f", "{{.Server.Version}}"], DOCKER_DEADLINE)?;
        if !version.status.success() {
            return Err(format!("the docker engine is not reachable\n{version}"));
        }
        let image = image();
        if std::env::var_os("ORDKV_TEST_SKIP_IMAGE_BUILD").is_some() {
            eprintln!("[containers] ORDKV_TEST_SKIP_IMAGE_BUILD set: using {image} as is");
        } else {
            let started = Instant::now();
            eprintln!("[containers] deploy/docker/build.sh ({image}; minutes on a cold cache)");
            let mut cmd = Command::new(workspace_root().join("deploy/docker/build.sh"));
            cmd.current_dir(workspace_root()).env("IMAGE", &image);
            let out = run_cmd(cmd, Duration::from_secs(45 * 60))?;
            if !out.status.success() {
                return Err(format!("deploy/docker/build.sh failed\n{out}"));
            }
            eprintln!(
                "[containers] image ready after {:.1}s:\n{}",
                started.elapsed().as_secs_f64(),
                out.stderr.trim_end()
            );
        }
        let inspect = try_docker(
            &["image", "inspect", "-f", "{{.Id}}", &image],
            DOCKER_DEADLINE,
        )?;
        if !inspect.status.success() {
            return Err(format!("image {image} missing\n{inspect}"));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("the ordkv image is not available: {e}");
    }
}

// ---------------------------------------------------------------------------------------
// A process-wide limit on concurrent sets
// ---------------------------------------------------------------------------------------

struct Slots {
    used: Mutex<usize>,
    freed: Condvar,
}

fn slots() -> &'static Slots {
    static SLOTS: OnceLock<Slots> = OnceLock::new();
    SLOTS.get_or_init(|| Slots {
        used: Mutex::new(0),
        freed: Condvar::new(),
    })
}

fn max_sets() -> usize {
    std::env::var("ORDKV_TEST_CONTAINER_CLUSTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(2)
}

/// One of the [`max_sets`] slots; freed on drop.
struct Permit;

impl Permit {
    fn acquire() -> Permit {
        let s = slots();
        let mut used = s.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used >= max_sets() {
            used = s.freed.wait(used).unwrap_or_else(|p| p.into_inner());
        }
        *used += 1;
        Permit
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let s = slots();
        let mut used = s.used.lock().unwrap_or_else(|p| p.into_inner());
        *used -= 1;
        s.freed.notify_one();
    }
}

// ---------------------------------------------------------------------------------------
// Status, as `ordkv cluster status -o json` prints it
// ---------------------------------------------------------------------------------------

/// One member in a status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// StatefulSet ordinal.
    pub ordinal: u32,
    /// Pod name.
    pub name: String,
    /// `voter` or `learner`.
    pub role: String,
    /// Raft node id.
    pub node_id: u64,
    /// Whether the answering member reaches it.
    pub reachable: bool,
    /// Its applied index as the answering member knows it (`None`: unknown to it; the
    /// leader knows it of the members it reaches).
    pub applied_index: Option<u64>,
    /// How many entries it trails the leader's last log index (`None`: unknown; only the
    /// leader knows).
    pub lag: Option<u64>,
}

/// `ordkv cluster status -o json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The cluster the answering member belongs to.
    pub cluster_id: String,
    /// Ordinal of the leader, when known.
    pub leader: Option<u32>,
    /// Raft term.
    pub term: u64,
    /// The answering member.
    pub member: String,
    /// Store revision.
    pub revision: u64,
    /// Commit index.
    pub commit_index: u64,
    /// The answering member's own applied index.
    pub applied_index: u64,
    /// Members, sorted by ordinal.
    pub members: Vec<MemberStatus>,
    /// What the answering member knows of its StatefulSet's `spec.replicas`.
    pub scale_intent: String,
}

impl Status {
    /// Parses the JSON status.
    pub fn parse(text: &str) -> Result<Status, String> {
        let v: serde_json::Value = serde_json::from_str(text.trim())
            .map_err(|e| format!("bad status JSON {e}: {text}"))?;
        let u64_of = |v: &serde_json::Value, k: &str| {
            v[k].as_u64()
                .ok_or_else(|| format!("status field {k} missing: {text}"))
        };
        let mut members = Vec::new();
        for m in v["members"]
            .as_array()
            .ok_or_else(|| format!("no members: {text}"))?
        {
            members.push(MemberStatus {
                ordinal: u64_of(m, "ordinal")? as u32,
                name: m["name"].as_str().unwrap_or_default().to_string(),
                role: m["role"].as_str().unwrap_or_default().to_string(),
                node_id: u64_of(m, "node_id")?,
                reachable: m["reachable"].as_bool().unwrap_or(false),
                applied_index: m["applied_index"].as_u64(),
                lag: m["lag"].as_u64(),
            });
        }
        members.sort_by_key(|m| m.ordinal);
        Ok(Status {
            cluster_id: v["cluster_id"].as_str().unwrap_or_default().to_string(),
            leader: v["leader"].as_u64().map(|l| l as u32),
            term: u64_of(&v, "term")?,
            member: v["member"].as_str().unwrap_or_default().to_string(),
            revision: u64_of(&v, "revision")?,
            commit_index: u64_of(&v, "commit_index")?,
            applied_index: v["applied_index"].as_u64().unwrap_or(0),
            members,
            scale_intent: v["scale_intent"].as_str().unwrap_or_default().to_string(),
        })
    }

    /// From the gRPC answer (the answering member's own view).
    pub fn from_proto(r: &StatusResponse) -> Status {
        let mut members: Vec<MemberStatus> = r
            .members
            .iter()
            .map(|m| MemberStatus {
                ordinal: m.ordinal,
                name: m.name.clone(),
                role: match m.role() {
                    Role::Voter => "voter",
                    Role::Learner => "learner",
                    Role::Unspecified => "unknown",
                }
                .to_string(),
                node_id: m.node_id,
                reachable: m.reachable,
                applied_index: m.applied_index,
                lag: m.lag,
            })
            .collect();
        members.sort_by_key(|m| m.ordinal);
        Status {
            cluster_id: r.cluster_id.clone(),
            leader: r.leader,
            term: r.term,
            member: r.member.clone(),
            revision: r.revision,
            commit_index: r.commit_index,
            applied_index: r.applied_index,
            members,
            scale_intent: r.scale_intent.clone(),
        }
    }

    /// `(ordinal, name, role)` of every member, by ordinal.
    pub fn roles(&self) -> Vec<(u32, String, String)> {
        self.members
            .iter()
            .map(|m| (m.ordinal, m.name.clone(), m.role.clone()))
            .collect()
    }

    /// `(ordinal, node id)` of every member, by ordinal.
    pub fn node_ids(&self) -> Vec<(u32, u64)> {
        self.members
            .iter()
            .map(|m| (m.ordinal, m.node_id))
            .collect()
    }

    /// The member with this ordinal.
    pub fn get(&self, ordinal: usize) -> Option<&MemberStatus> {
        self.members.iter().find(|m| m.ordinal as usize == ordinal)
    }
}

/// `(ordinal, "ordkv-<ordinal>", "voter")` for each of `ordinals`.
pub fn voters(ordinals: impl IntoIterator<Item = usize>) -> Vec<(u32, String, String)> {
    ordinals
        .into_iter()
        .map(|i| (i as u32, pod_name(i), "voter".to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The StatefulSet
// ---------------------------------------------------------------------------------------

/// The NFQUEUE number [`StatefulSet::shape`] uses (queues are per network namespace).
const NFQUEUE: u16 = 7;

/// Delay and loss on one member, from [`StatefulSet::shape`].
pub struct Shaping {
    ordinal: usize,
    /// The NFQUEUE delayer, when the kernel has no `sch_netem`.
    delayer: Option<crate::netdelay::Delayer>,
}

/// The loopback ports one ordinal's client and HTTP ports are published on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPorts {
    /// Published client gRPC port (container 7379).
    pub client: u16,
    /// Published HTTP port (container 7381).
    pub http: u16,
}

impl HostPorts {
    fn free() -> HostPorts {
        loop {
            let (client, http) = (free_port(), free_port());
            if client != http {
                return HostPorts { client, http };
            }
        }
    }
}

/// A StatefulSet `ordkv` of `ordkv:dev` containers on its own Docker network.
pub struct StatefulSet {
    prefix: String,
    network: String,
    env: Vec<(String, String)>,
    /// Published ports by ordinal, kept for the ordinal's life.
    ports: BTreeMap<usize, HostPorts>,
    /// Ordinals whose container exists (running or stopped).
    pods: BTreeSet<usize>,
    /// Ordinals whose volume exists.
    volumes: BTreeSet<usize>,
    /// `docker volume create --opt` values of every volume (see [`StatefulSet::small_volumes`]).
    volume_opts: Vec<String>,
    /// Full logs of removed containers, captured before removal: (title, logs).
    past_logs: Mutex<Vec<(String, String)>>,
    /// Set once a panic message carried the logs (so drop does not print them again).
    logs_shown: AtomicBool,
    /// Counts throwaway client containers (names them).
    clients: AtomicUsize,
    /// The Kubernetes API slice the pods read their StatefulSet from, if they get one.
    kube_api: Option<FakeKubeApi>,
    /// The mounted TLS Secret and how the harness trusts it (see [`StatefulSet::with_tls`]).
    tls: Option<SetTls>,
    /// Runs the harness's gRPC probes (one worker thread).
    rt: tokio::runtime::Runtime,
    _permit: Permit,
}

/// Where the pods mount their TLS Secret.
const TLS_MOUNT: &str = "/etc/ordkv/tls";

/// The TLS Secret of a set: a host directory laid out as the kubelet mounts a Secret.
struct SetTls {
    dir: tempfile::TempDir,
    client: tonic::transport::ClientTlsConfig,
}

impl StatefulSet {
    /// An empty set (replicas 0) for test `test`: builds the image if needed, waits for a
    /// slot, and creates the network `ordkv-t<pid>-<test>-net`.
    pub fn new(test: &str) -> StatefulSet {
        ensure_image();
        let permit = Permit::acquire();
        let test: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        let prefix = format!("ordkv-t{}-{test}", std::process::id());
        let network = format!("{prefix}-net");
        let set = StatefulSet {
            prefix: prefix.clone(),
            network: network.clone(),
            env: Vec::new(),
            ports: BTreeMap::new(),
            pods: BTreeSet::new(),
            volumes: BTreeSet::new(),
            volume_opts: Vec::new(),
            past_logs: Mutex::new(Vec::new()),
            logs_shown: AtomicBool::new(false),
            clients: AtomicUsize::new(0),
            kube_api: None,
            tls: None,
            // A worker thread keeps polling connections between calls: a connection left
            // unpolled would not answer the server's GOAWAY/PING on SIGTERM.
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("tokio runtime"),
            _permit: permit,
        };
        // Leftovers of an earlier process with the same pid: drop them first.
        set.cleanup();
        docker_ok(&[
            "network",
            "create",
            "--label",
            "ordkv-test",
            "--label",
            &format!("ordkv-test-set={prefix}"),
            &network,
        ]);
        set.say(&format!("network {network} created"));
        // `ORDKV_TEST_CONTAINER_TLS=1` runs every scenario with TLS on (`.ci/run` does).
        match std::env::var("ORDKV_TEST_CONTAINER_TLS") {
            Ok(v) if !v.is_empty() && v != "0" => set.with_tls(),
            _ => set,
        }
    }

    /// Adds an environment variable to every member created from now on (like editing the
    /// pod template).
    pub fn env(mut self, key: &str, value: &str) -> StatefulSet {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Data volumes of `size_mb` MiB each (tmpfs volumes: a small disk that fills up). Their
    /// content is gone when the pod stops, so not for restart scenarios.
    pub fn small_volumes(mut self, size_mb: u64) -> StatefulSet {
        self.volume_opts = vec![
            "type=tmpfs".into(),
            "device=tmpfs".into(),
            format!("o=size={size_mb}m"),
        ];
        self
    }

    /// Ordinal `i`'s data volume as the host sees it, through the running container's root
    /// (`/proc/<pid>/root/data`): files put there take its space (the image has no tools).
    pub fn data_path(&self, i: usize) -> std::path::PathBuf {
        let out = docker(&["inspect", "-f", "{{.State.Pid}}", &self.container(i)]);
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(pid != "0" && !pid.is_empty(), "ordkv-{i} is not running");
        std::path::PathBuf::from(format!("/proc/{pid}/root/data"))
    }

    /// Serves the pods the Kubernetes API slice they read their StatefulSet from
    /// ([`FakeKubeApi`], on the network's gateway), mounts the service account into every
    /// pod created from now on as Kubernetes does, and makes [`StatefulSet::scale_to`]
    /// change `spec.replicas` before it creates or terminates pods.
    pub fn with_kube_api(mut self) -> StatefulSet {
        let out = docker_ok(&[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Gateway}}",
            &self.network,
        ]);
        let gateway: IpAddr = out
            .stdout_str()
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("gateway of {}: {e}: {out}", self.network));
        let api = self
            .rt
            .block_on(FakeKubeApi::start_at(gateway, NAMESPACE, SERVICE, 0));
        let (host, port) = api.host_and_port();
        self.say(&format!("Kubernetes API at https://{host}:{port}"));
        self.kube_api = Some(api);
        self.env("KUBERNETES_SERVICE_HOST", &host)
            .env("KUBERNETES_SERVICE_PORT", &port.to_string())
    }

    /// TLS on every pod created from now on, as `deploy/kubernetes/tls/` sets it up with
    /// cert-manager: one Secret (`tls.crt`, `tls.key`, `ca.crt`) for every member, whose
    /// certificate carries the member wildcard `*.ordkv.default.svc.cluster.local`, the read
    /// Service's name, localhost and 127.0.0.1; the HTTP port stays plaintext. The harness's
    /// clients (gRPC from the host, the CLI in pods) trust the CA.
    pub fn with_tls(mut self) -> StatefulSet {
        use std::os::unix::fs::PermissionsExt;
        if self.tls.is_some() {
            return self;
        }
        let ca = crate::certs::TestCa::new("ordkv test CA (as cert-manager's)");
        // The names of deploy/kubernetes/tls/certificates.yaml.
        let wildcard = format!("*.{SERVICE}.{NAMESPACE}.svc.cluster.local");
        let mut names = vec![
            wildcard.clone(),
            format!("*.{SERVICE}.{NAMESPACE}.svc"),
            "ordkv-read".into(),
            "ordkv-read.default.svc".into(),
            READ_SERVICE_DNS.into(),
            "localhost".into(),
            "127.0.0.1".into(),
        ];
        names.extend((0..9).map(|i| format!("{}.{SERVICE}", pod_name(i))));
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let leaf = ca.issue(&names);
        let dir = tempfile::Builder::new()
            .prefix("ordkv-tls-secret-")
            .tempdir()
            .expect("secret dir");
        crate::certs::write_secret(dir.path(), &leaf, &ca.pem());
        // The pods run as uid 65532; a Secret volume is world-readable by default (0644).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod secret dir");
        self.say(&format!("TLS on: one Secret for every member, {wildcard}"));
        self.tls = Some(SetTls {
            dir,
            client: crate::certs::client_tls(&ca.pem(), None),
        });
        self.env("ORDKV_TLS_DIR", TLS_MOUNT)
            .env("ORDKV_HTTP_PLAINTEXT", "true")
    }

    /// How the harness reaches the client ports: TLS trusting the set's CA, if it has TLS.
    pub fn client_tls(&self) -> Option<tonic::transport::ClientTlsConfig> {
        self.tls.as_ref().map(|t| t.client.clone())
    }

    /// `-v` and `-e` arguments that give a container the Secret and `ORDKV_CACERT`.
    fn tls_args(&self) -> Vec<String> {
        match &self.tls {
            Some(t) => vec![
                "-v".into(),
                format!("{}:{TLS_MOUNT}:ro", t.dir.path().display()),
                "-e".into(),
                format!("ORDKV_CACERT={TLS_MOUNT}/ca.crt"),
            ],
            None => Vec::new(),
        }
    }

    /// The Kubernetes API slice of [`StatefulSet::with_kube_api`].
    pub fn kube_api(&self) -> &FakeKubeApi {
        self.kube_api
            .as_ref()
            .expect("the set has no Kubernetes API")
    }

    /// Prints a progress line prefixed with the set's name.
    pub fn say(&self, what: &str) {
        println!("[{}] {what}", self.prefix);
    }

    /// The Docker network.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// The container of ordinal `i`.
    pub fn container(&self, i: usize) -> String {
        format!("{}-ordkv-{i}", self.prefix)
    }

    /// The volume (PVC) of ordinal `i`.
    pub fn volume(&self, i: usize) -> String {
        format!("{}-data-ordkv-{i}", self.prefix)
    }

    /// Ordinals whose container exists.
    pub fn pods(&self) -> Vec<usize> {
        self.pods.iter().copied().collect()
    }

    /// Ordinals whose volume exists, as Docker reports them.
    pub fn volumes(&self) -> Vec<usize> {
        let out = docker_ok(&[
            "volume",
            "ls",
            "-q",
            "--filter",
            &format!("label=ordkv-test-set={}", self.prefix),
        ]);
        let prefix = format!("{}-data-ordkv-", self.prefix);
        let mut v: Vec<usize> = out
            .stdout_str()
            .lines()
            .filter_map(|l| l.trim().strip_prefix(&prefix)?.parse().ok())
            .collect();
        v.sort();
        v
    }

    /// The published ports of ordinal `i`.
    pub fn host_ports(&self, i: usize) -> HostPorts {
        *self
            .ports
            .get(&i)
            .unwrap_or_else(|| panic!("ordkv-{i} was never created"))
    }

    /// `127.0.0.1:<published HTTP port>` of ordinal `i`.
    pub fn http_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.host_ports(i).http))
    }

    /// `127.0.0.1:<published client port>` of ordinal `i`.
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.host_ports(i).client))
    }

    fn labels(&self) -> Vec<String> {
        vec![
            "--label".into(),
            "ordkv-test".into(),
            "--label".into(),
            format!("ordkv-test-set={}", self.prefix),
        ]
    }

    fn create_volume(&mut self, i: usize) {
        if self.volumes.insert(i) {
            let mut args = vec!["volume".to_string(), "create".into()];
            args.extend(self.labels());
            for opt in &self.volume_opts {
                args.extend(["--opt".to_string(), opt.clone()]);
            }
            args.push(self.volume(i));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            docker_ok(&args);
        }
    }

    /// `docker run -d` the pod of ordinal `i` (its volume is created if missing).
    fn create_pod(&mut self, i: usize) {
        assert!(!self.pods.contains(&i), "ordkv-{i} exists already");
        self.create_volume(i);
        let name = self.container(i);
        for attempt in 1.. {
            let ports = *self.ports.entry(i).or_insert_with(HostPorts::free);
            let mut args: Vec<String> = vec![
                "run".into(),
                "-d".into(),
                "--name".into(),
                name.clone(),
                "--hostname".into(),
                pod_name(i),
                "--network".into(),
                self.network.clone(),
            ];
            for alias in [pod_dns(i).as_str(), SERVICE_DNS, READ_SERVICE_DNS] {
                args.extend(["--network-alias".into(), alias.to_string()]);
            }
            for domain in DNS_SEARCH {
                args.extend(["--dns-search".into(), domain.to_string()]);
            }
            args.extend(self.labels());
            args.extend([
                "-v".into(),
                format!("{}:/data", self.volume(i)),
                "--read-only".into(),
                "--cap-drop".into(),
                "ALL".into(),
                "--security-opt".into(),
                "no-new-privileges:true".into(),
                "-p".into(),
                format!("127.0.0.1:{}:7379", ports.client),
                "-p".into(),
                format!("127.0.0.1:{}:7381", ports.http),
            ]);
            args.extend(self.tls_args());
            if let Some(api) = &self.kube_api {
                args.extend([
                    "-v".into(),
                    format!(
                        "{}:{SERVICE_ACCOUNT_MOUNT}:ro",
                        api.service_account_dir().display()
                    ),
                ]);
            }
            let mut env = vec![
                ("POD_NAME".to_string(), pod_name(i)),
                ("POD_NAMESPACE".into(), NAMESPACE.into()),
                ("ORDKV_SERVICE".into(), SERVICE.into()),
                ("ORDKV_DATA_DIR".into(), "/data".into()),
                ("ORDKV_CLIENT_ADDR".into(), "0.0.0.0:7379".into()),
                ("ORDKV_PEER_ADDR".into(), "0.0.0.0:7380".into()),
                ("ORDKV_HTTP_ADDR".into(), "0.0.0.0:7381".into()),
            ];
            env.extend(self.env.iter().cloned());
            for (k, v) in env {
                args.extend(["-e".into(), format!("{k}={v}")]);
            }
            args.extend([image(), "serve".into()]);
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = docker(&argv);
            if out.status.success() {
                break;
            }
            // The published port was taken since it was picked: pick others.
            let taken = out.stderr.contains("port is already allocated")
                || out.stderr.contains("address already in use");
            let _ = try_docker(&["rm", "-f", &name], DOCKER_DEADLINE);
            if taken && attempt < 5 {
                self.ports.insert(i, HostPorts::free());
                continue;
            }
            panic!("docker run {name} failed\n{out}\n{}", self.logs_all());
        }
        self.pods.insert(i);
        self.say(&format!(
            "created pod {} (volume {})",
            pod_name(i),
            self.volume(i)
        ));
    }

    /// Keeps the full logs of ordinal `i`'s current container for failure reports.
    fn archive_logs(&self, i: usize, why: &str) {
        let logs = self.logs(i);
        self.past_logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((format!("{}.before-{why}", pod_name(i)), logs));
    }

    /// Scales to `n` replicas as the controller does with `podManagementPolicy: Parallel`:
    /// sets `spec.replicas` first (with [`StatefulSet::with_kube_api`]), creates missing
    /// ordinals `0..n` (without waiting for them; see [`StatefulSet::wait_ready`]), then
    /// terminates every ordinal `>= n` at the same time (SIGTERM, SIGKILL after the grace
    /// period) and deletes the pods. Volumes stay.
    pub fn scale_to(&mut self, n: usize) {
        if let Some(api) = &self.kube_api {
            api.set_replicas(n as u32);
        }
        for i in 0..n {
            if !self.pods.contains(&i) {
                self.create_pod(i);
            }
        }
        let extra: Vec<usize> = self.pods.range(n..).rev().copied().collect();
        if extra.is_empty() {
            return;
        }
        self.stop_pods(&extra);
        for i in extra {
            self.remove_container(i, "scale-down");
            self.say(&format!("deleted pod {} (volume kept)", pod_name(i)));
        }
    }

    fn remove_container(&mut self, i: usize, why: &str) {
        self.archive_logs(i, why);
        docker_ok(&["rm", "-f", &self.container(i)]);
        self.pods.remove(&i);
    }

    /// Deletes the pod at once (`docker rm -f`: SIGKILL) and recreates it with the same name
    /// and volume, like the controller after `kubectl delete pod --force`.
    pub fn delete_pod(&mut self, i: usize) {
        self.remove_container(i, "delete_pod");
        self.create_pod(i);
    }

    /// Replaces the pod gracefully (SIGTERM, wait, remove, recreate): one step of a rolling
    /// update.
    pub fn replace_pod(&mut self, i: usize) {
        self.stop(i);
        self.remove_container(i, "replace_pod");
        self.create_pod(i);
    }

    /// `docker kill` (SIGKILL); the container stays, stopped.
    pub fn kill(&self, i: usize) {
        docker_ok(&["kill", &self.container(i)]);
    }

    /// `docker stop -t 30`: SIGTERM, SIGKILL after the grace period.
    pub fn stop(&self, i: usize) {
        let c = self.container(i);
        let grace = STOP_GRACE_SECS.to_string();
        let out = try_docker(&["stop", "-t", &grace, &c], STOP_DEADLINE)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs_all()));
        assert!(out.status.success(), "docker stop {c}\n{out}");
    }

    /// `docker start` a stopped member.
    pub fn start(&self, i: usize) {
        docker_ok(&["start", &self.container(i)]);
    }

    /// Stops every member at once.
    pub fn stop_all(&self) {
        self.stop_pods(&self.pods());
    }

    /// Stops `ordinals` at once (one `docker stop`, which stops them in parallel).
    fn stop_pods(&self, ordinals: &[usize]) {
        let grace = STOP_GRACE_SECS.to_string();
        let mut args = vec!["stop".to_string(), "-t".into(), grace];
        args.extend(ordinals.iter().map(|i| self.container(*i)));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out =
            try_docker(&argv, STOP_DEADLINE).unwrap_or_else(|e| panic!("{e}\n{}", self.logs_all()));
        assert!(out.status.success(), "docker stop\n{out}");
    }

    /// Starts every member at once (one `docker start`).
    pub fn start_all(&self) {
        let mut args = vec!["start".to_string()];
        args.extend(self.pods.iter().map(|i| self.container(*i)));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        docker_ok(&argv);
    }

    /// A lost PVC: deletes the pod (at once) and its volume, then recreates the pod, which
    /// gets a fresh empty volume.
    pub fn wipe_volume(&mut self, i: usize) {
        if self.pods.contains(&i) {
            self.remove_container(i, "wipe_volume");
        }
        docker_ok(&["volume", "rm", &self.volume(i)]);
        self.volumes.remove(&i);
        self.create_pod(i);
    }

    /// Cuts ordinal `i` off the network (`docker network disconnect`): no peer or client in
    /// the network reaches it, its DNS names stop resolving, its published ports too.
    pub fn disconnect(&self, i: usize) {
        docker_ok(&["network", "disconnect", &self.network, &self.container(i)]);
    }

    /// Puts ordinal `i` back on the network with the same aliases.
    pub fn connect(&self, i: usize) {
        let dns = pod_dns(i);
        docker_ok(&[
            "network",
            "connect",
            "--alias",
            &dns,
            "--alias",
            SERVICE_DNS,
            "--alias",
            READ_SERVICE_DNS,
            &self.network,
            &self.container(i),
        ]);
    }

    /// `docker inspect`: `(state, exit code)` of ordinal `i`'s container.
    pub fn state(&self, i: usize) -> (String, i64) {
        let out = docker(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{.State.ExitCode}}",
            &self.container(i),
        ]);
        let text = out.stdout_str();
        let mut parts = text.split_whitespace();
        let state = parts.next().unwrap_or("missing").to_string();
        let code = parts.next().and_then(|c| c.parse().ok()).unwrap_or(-1);
        (state, code)
    }

    /// Ordinal `i`'s IP on the network, if it is attached and running.
    pub fn ip(&self, i: usize) -> Option<Ipv4Addr> {
        let format = format!(
            "{{{{with index .NetworkSettings.Networks \"{}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}",
            self.network
        );
        docker(&["inspect", "-f", &format, &self.container(i)])
            .stdout_str()
            .trim()
            .parse()
            .ok()
    }

    // -----------------------------------------------------------------------------------
    // Faults from the host: one-way partitions, delay and loss, a frozen process
    // -----------------------------------------------------------------------------------

    /// The host tools the network faults run (`nsenter`, `iptables`, `tc`): `Err` names the
    /// missing ones. Needs root as well.
    pub fn fault_tools() -> Result<(), String> {
        let missing: Vec<&str> = ["nsenter", "iptables", "tc"]
            .into_iter()
            .filter(|tool| {
                !std::env::var_os("PATH").is_some_and(|path| {
                    std::env::split_paths(&path).any(|dir| dir.join(tool).is_file())
                })
            })
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "missing on the host: {missing:?} (.ci/run installs them)"
            ))
        }
    }

    /// The host pid of ordinal `i`'s container process (0 when it is not running).
    pub fn pid(&self, i: usize) -> u32 {
        let out = docker_ok(&["inspect", "-f", "{{.State.Pid}}", &self.container(i)]);
        out.stdout_str().trim().parse().unwrap_or(0)
    }

    /// Runs `args` on the host inside ordinal `i`'s network namespace (`nsenter -t <pid>
    /// -n`; the image is `FROM scratch`, so the tools are the host's); panics unless it exits
    /// 0.
    pub fn in_netns(&self, i: usize, args: &[&str]) -> Output {
        let out = self.try_in_netns(i, args);
        assert!(
            out.status.success(),
            "nsenter -n {args:?} in {} failed\n{out}",
            pod_name(i)
        );
        out
    }

    /// [`StatefulSet::in_netns`] without the check of the exit status.
    pub fn try_in_netns(&self, i: usize, args: &[&str]) -> Output {
        let pid = self.pid(i);
        assert!(pid != 0, "{} is not running", pod_name(i));
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &pid.to_string(), "-n"]).args(args);
        run_cmd(cmd, DOCKER_DEADLINE).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A one-way partition: ordinal `i` drops every packet from each of `from` (`iptables
    /// -A INPUT -s <ip> -j DROP` in its network namespace). It still sends to them, and hears
    /// nothing back; clients on the published ports still reach it.
    pub fn drop_from(&self, i: usize, from: &[usize]) {
        self.input_rules(i, from, "-A");
    }

    /// Deletes the rules of [`StatefulSet::drop_from`].
    pub fn undrop_from(&self, i: usize, from: &[usize]) {
        self.input_rules(i, from, "-D");
    }

    fn input_rules(&self, i: usize, from: &[usize], op: &str) {
        for &j in from {
            let ip = self
                .ip(j)
                .unwrap_or_else(|| panic!("{} has no IP", pod_name(j)))
                .to_string();
            self.in_netns(i, &["iptables", "-w", op, "INPUT", "-s", &ip, "-j", "DROP"]);
        }
    }

    /// Delays everything ordinal `i` sends on `eth0` (peers and clients alike) by `delay ±
    /// jitter` and drops `loss_percent` % of it: `tc qdisc replace dev eth0 root netem delay
    /// D J loss L%` in its network namespace, or, on a kernel without `sch_netem`, the same
    /// done by an NFQUEUE listener in this process ([`crate::netdelay`]) fed by an iptables
    /// rule. Undo with [`StatefulSet::unshape`].
    pub fn shape(&self, i: usize, delay: Duration, jitter: Duration, loss_percent: f64) -> Shaping {
        let tc = self.try_in_netns(
            i,
            &[
                "tc",
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "netem",
                "delay",
                &format!("{}ms", delay.as_millis()),
                &format!("{}ms", jitter.as_millis()),
                "loss",
                &format!("{loss_percent}%"),
            ],
        );
        if tc.status.success() {
            return Shaping {
                ordinal: i,
                delayer: None,
            };
        }
        assert!(
            tc.stderr.contains("qdisc kind is unknown"),
            "tc netem in {}\n{tc}",
            pod_name(i)
        );
        let delayer = crate::netdelay::Delayer::start(
            self.pid(i),
            NFQUEUE,
            delay,
            jitter,
            loss_percent / 100.0,
            crate::SplitMix64::seed_from_env_or_clock() ^ i as u64,
        )
        .unwrap_or_else(|e| panic!("NFQUEUE delayer for {}: {e}", pod_name(i)));
        self.nfqueue_rule(i, "-A");
        Shaping {
            ordinal: i,
            delayer: Some(delayer),
        }
    }

    /// Adds (`-A`) or deletes (`-D`) the rule that sends ordinal `i`'s outgoing packets to
    /// the delayer's queue.
    fn nfqueue_rule(&self, i: usize, action: &str) {
        let q = NFQUEUE.to_string();
        self.in_netns(
            i,
            &[
                "iptables",
                "-w",
                action,
                "OUTPUT",
                "-o",
                "eth0",
                "-j",
                "NFQUEUE",
                "--queue-num",
                &q,
                "--queue-bypass",
            ],
        );
    }

    /// Undoes [`StatefulSet::shape`]; says how (`tc netem`, or the delayer's counts).
    pub fn unshape(&self, shaping: Shaping) -> String {
        let i = shaping.ordinal;
        match shaping.delayer {
            None => {
                self.in_netns(i, &["tc", "qdisc", "del", "dev", "eth0", "root"]);
                "tc netem".into()
            }
            Some(delayer) => {
                self.nfqueue_rule(i, "-D");
                let stats = delayer
                    .stop()
                    .unwrap_or_else(|e| panic!("NFQUEUE delayer for {}: {e}", pod_name(i)));
                format!(
                    "NFQUEUE delayer (no sch_netem): {} packets delayed, {} dropped",
                    stats.delayed, stats.dropped
                )
            }
        }
    }

    /// `docker pause`: freezes every process of ordinal `i` (the cgroup freezer, like
    /// SIGSTOP); its sockets stay open and queue what arrives.
    pub fn pause(&self, i: usize) {
        docker_ok(&["pause", &self.container(i)]);
    }

    /// `docker unpause`.
    pub fn unpause(&self, i: usize) {
        docker_ok(&["unpause", &self.container(i)]);
    }

    // -----------------------------------------------------------------------------------
    // Clients
    // -----------------------------------------------------------------------------------

    /// `docker run --rm --network <net> ordkv:dev <args>`: a throwaway client pod in the
    /// namespace (the walkthrough's `kubectl run nettool`), with the pod search domains.
    pub fn client(&self, args: &[&str]) -> Output {
        let n = self.clients.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-client-{n}", self.prefix);
        let mut argv: Vec<String> = vec![
            "run".into(),
            "--rm".into(),
            "--name".into(),
            name,
            "--network".into(),
            self.network.clone(),
        ];
        for domain in DNS_SEARCH {
            argv.extend(["--dns-search".into(), domain.to_string()]);
        }
        argv.extend(self.labels());
        argv.extend(self.tls_args());
        argv.push(image());
        argv.extend(args.iter().map(|a| a.to_string()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        docker(&argv)
    }

    /// A one-off pod on ordinal `i`'s volume, with its pod's identity and `/data`, running
    /// `ordkv <args>` to completion (`kubectl run` with the PVC mounted, as the quorum-loss
    /// runbook does while the StatefulSet is scaled to 0). It has no DNS alias of its own.
    pub fn run_on_volume(&self, i: usize, args: &[&str]) -> Output {
        assert!(
            !self.pods.contains(&i),
            "{} still runs on its volume",
            pod_name(i)
        );
        let n = self.clients.fetch_add(1, Ordering::Relaxed);
        let mut argv: Vec<String> = vec![
            "run".into(),
            "--rm".into(),
            "--name".into(),
            format!("{}-oneoff-{n}", self.prefix),
            "--network".into(),
            self.network.clone(),
            "-v".into(),
            format!("{}:/data", self.volume(i)),
        ];
        for domain in DNS_SEARCH {
            argv.extend(["--dns-search".into(), domain.to_string()]);
        }
        argv.extend(self.labels());
        argv.extend(self.tls_args());
        for (k, v) in [
            ("POD_NAME", pod_name(i)),
            ("POD_NAMESPACE", NAMESPACE.to_string()),
            ("ORDKV_SERVICE", SERVICE.to_string()),
            ("ORDKV_DATA_DIR", "/data".to_string()),
        ] {
            argv.extend(["-e".into(), format!("{k}={v}")]);
        }
        argv.push(image());
        argv.extend(args.iter().map(|a| a.to_string()));
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        docker(&argv)
    }

    /// A node lost with its PVC: the pod is deleted at once and its volume too; nothing is
    /// recreated until the next [`StatefulSet::scale_to`].
    pub fn lose_pod_and_volume(&mut self, i: usize) {
        if self.pods.contains(&i) {
            self.remove_container(i, "lose_pod_and_volume");
        }
        docker_ok(&["volume", "rm", &self.volume(i)]);
        self.volumes.remove(&i);
        self.say(&format!("lost {} and its volume", pod_name(i)));
    }

    /// Runs the CLI inside ordinal `i`'s container against its own client port
    /// (`docker exec ... /ordkv --endpoints 127.0.0.1:7379 <args>`).
    pub fn exec(&self, i: usize, args: &[&str]) -> Output {
        let c = self.container(i);
        let cacert = format!("ORDKV_CACERT={TLS_MOUNT}/ca.crt");
        let mut argv = vec!["exec"];
        if self.tls.is_some() {
            argv.extend(["-e", cacert.as_str()]);
        }
        argv.extend([c.as_str(), "/ordkv", "--endpoints", "127.0.0.1:7379"]);
        argv.extend_from_slice(args);
        docker(&argv)
    }

    /// Whether the host has what [`StatefulSet::lookup`] mounts: `getent`, the loader, libc.
    pub fn getent_available() -> bool {
        [
            "/usr/bin/getent",
            "/lib64/ld-linux-x86-64.so.2",
            "/lib/x86_64-linux-gnu/libc.so.6",
        ]
        .iter()
        .all(|p| Path::new(p).exists())
    }

    /// The IPv4 A records of `name` as a pod in the namespace resolves it (Docker's embedded
    /// DNS, pod search domains): the host's `getent ahostsv4` run in a throwaway container.
    pub fn lookup(&self, name: &str) -> Result<BTreeSet<Ipv4Addr>, String> {
        let n = self.clients.fetch_add(1, Ordering::Relaxed);
        let cname = format!("{}-nettool-{n}", self.prefix);
        let mut argv: Vec<String> = vec![
            "run".into(),
            "--rm".into(),
            "--name".into(),
            cname,
            "--network".into(),
            self.network.clone(),
        ];
        for domain in DNS_SEARCH {
            argv.extend(["--dns-search".into(), domain.to_string()]);
        }
        argv.extend(self.labels());
        for mount in [
            "/usr/bin/getent:/getent:ro",
            "/lib64:/lib64:ro",
            "/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu:ro",
        ] {
            argv.extend(["-v".into(), mount.into()]);
        }
        argv.extend([
            "--entrypoint".into(),
            "/getent".into(),
            image(),
            "ahostsv4".into(),
            name.into(),
        ]);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = docker(&argv);
        if !out.status.success() {
            return Err(format!("getent ahostsv4 {name}: {out}"));
        }
        Ok(out
            .stdout_str()
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect())
    }

    /// `ordkv cluster status -o json` run inside ordinal `i`'s container against its own
    /// client port. The CLI shows the leader's view when the member knows a reachable
    /// leader (a follower knows only itself and the leader), else the member's own.
    pub fn try_status(&self, i: usize) -> Result<Status, String> {
        let out = self.exec(i, &["--timeout", "3s", "cluster", "status", "-o", "json"]);
        if !out.status.success() {
            return Err(format!(
                "{}: cluster status: {}",
                pod_name(i),
                out.stderr.trim()
            ));
        }
        Status::parse(&out.stdout_str())
    }

    /// [`StatefulSet::try_status`], panicking with the logs.
    pub fn status(&self, i: usize) -> Status {
        self.try_status(i)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs_all()))
    }

    /// `Cluster.Status` of ordinal `i` itself, over gRPC on its published client port: the
    /// member's own view (`member` is always `ordkv-<i>`).
    pub fn try_own_status(&self, i: usize) -> Result<Status, String> {
        let mut c = ClusterClient::new(self.channel(i, PROBE_TIMEOUT));
        self.rt.block_on(async move {
            c.status(StatusRequest {})
                .await
                .map(|r| Status::from_proto(&r.into_inner()))
                .map_err(|e| {
                    format!(
                        "{}: Cluster.Status: {:?} {}",
                        pod_name(i),
                        e.code(),
                        e.message()
                    )
                })
        })
    }

    /// One look: every one of `among` answers (its own view, over gRPC) and all report the
    /// same leader, one of them, and the same term; then the leader's `ordkv cluster status`
    /// (run inside it) is its own view in that term. Returns the leader and that status.
    fn agreed_leader(&self, among: &[usize]) -> Result<(usize, Status), String> {
        let mut seen = Vec::new();
        for &i in among {
            let s = self.try_own_status(i)?;
            seen.push((i, s.leader, s.term));
        }
        let (_, leader, term) = seen[0];
        let leader = leader.ok_or_else(|| format!("no leader known: {seen:?}"))? as usize;
        if !among.contains(&leader) {
            return Err(format!("the leader is not among them: {seen:?}"));
        }
        if seen
            .iter()
            .any(|(_, l, t)| *l != Some(leader as u32) || *t != term)
        {
            return Err(format!("they disagree (ordinal, leader, term): {seen:?}"));
        }
        let s = self.try_status(leader)?;
        if s.member != pod_name(leader) || s.leader != Some(leader as u32) || s.term != term {
            return Err(format!(
                "the leader moved: {seen:?}, then {} said leader {:?} term {}",
                s.member, s.leader, s.term
            ));
        }
        Ok((leader, s))
    }

    /// Waits until every one of `among` agrees on one leader among them and the term (see
    /// `agreed_leader`); returns the leader's ordinal and its `ordkv cluster status` (the
    /// view that knows the whole membership).
    pub fn wait_leader(&self, among: &[usize]) -> (usize, Status) {
        self.wait_until(
            &format!("members {among:?} agree on a leader among them"),
            CONVERGE,
            || self.agreed_leader(among),
        )
    }

    /// Waits until `among` agree on a leader and its status lists exactly `expected`
    /// `(ordinal, name, role)` members, all reachable; returns the leader and its status.
    pub fn wait_membership(
        &self,
        among: &[usize],
        expected: &[(u32, String, String)],
    ) -> (usize, Status) {
        self.wait_until(
            &format!("the leader lists the members {expected:?}, all reachable"),
            CONVERGE,
            || {
                let (leader, s) = self.agreed_leader(among)?;
                if s.roles() != expected {
                    return Err(format!("leader ordkv-{leader} lists {:?}", s.roles()));
                }
                if let Some(m) = s.members.iter().find(|m| !m.reachable) {
                    return Err(format!("leader ordkv-{leader}: {} unreachable", m.name));
                }
                Ok((leader, s))
            },
        )
    }

    /// Polls `probe` until it returns `Ok` (returned) or `within` ran out (a panic naming
    /// `what`, the last reason, and every member's logs).
    pub fn wait_until<T>(
        &self,
        what: &str,
        within: Duration,
        mut probe: impl FnMut() -> Result<T, String>,
    ) -> T {
        let until = Instant::now() + within;
        loop {
            let why = match probe() {
                Ok(v) => return v,
                Err(why) => why,
            };
            if Instant::now() >= until {
                panic!(
                    "timed out after {within:?} waiting until {what}; last: {why}\n{}",
                    self.logs_all()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until ordinal `i` answers `/readyz` with 200 on its published HTTP port; panics
    /// with the logs if its container exits or [`READY_DEADLINE`] passes.
    pub fn wait_ready(&self, i: usize) -> Duration {
        let started = Instant::now();
        let addr = SocketAddr::from(([127, 0, 0, 1], self.host_ports(i).http));
        let mut polls = 0u32;
        self.wait_until(&format!("{} is ready", pod_name(i)), READY_DEADLINE, || {
            polls += 1;
            if polls.is_multiple_of(10) {
                let (state, code) = self.state(i);
                if state != "running" {
                    panic!(
                        "{} is {state} (exit code {code}) instead of becoming ready\n{}",
                        pod_name(i),
                        self.logs_all()
                    );
                }
            }
            match http_get(addr, "/readyz") {
                Ok((200, _)) => Ok(()),
                Ok((code, body)) => Err(format!("/readyz {code} {}", body.trim())),
                Err(e) => Err(format!("/readyz: {e}")),
            }
        });
        started.elapsed()
    }

    /// [`StatefulSet::wait_ready`] for every existing pod.
    pub fn wait_all_ready(&self) {
        for i in self.pods() {
            self.wait_ready(i);
        }
    }

    // -----------------------------------------------------------------------------------
    // gRPC through the published ports
    // -----------------------------------------------------------------------------------

    /// A lazily connecting channel to ordinal `i`'s published client port.
    fn channel(&self, i: usize, timeout: Duration) -> Channel {
        let _guard = self.rt.enter();
        channel_to_with(self.client_addr(i), timeout, self.client_tls())
    }

    /// Puts `key = value` through ordinal `i`; returns the revision.
    pub fn try_put(&self, i: usize, key: &str, value: &str) -> Result<u64, String> {
        let mut kv = KvClient::new(self.channel(i, PROBE_TIMEOUT));
        self.rt.block_on(async move {
            kv.put(PutRequest {
                key: Bytes::from(key.to_string()),
                value: Bytes::from(value.to_string()),
                prev_kv: false,
                lease: 0,
            })
            .await
            .map(|r| r.into_inner().header.map_or(0, |h| h.revision))
            .map_err(|e| format!("put {key} via ordkv-{i}: {:?} {}", e.code(), e.message()))
        })
    }

    /// Writes `<prefix>/00000..` = `<prefix>-value-<n>` through ordinal `i` with 8 concurrent
    /// clients; panics unless every one is acknowledged. Returns what was written.
    pub fn put_many(&self, i: usize, prefix: &str, count: usize) -> BTreeMap<String, String> {
        let written = self.put_values(i, prefix, count, |prefix, n| {
            format!("{prefix}-value-{n}").into_bytes()
        });
        written
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v).expect("UTF-8 values")))
            .collect()
    }

    /// Writes `<prefix>/00000..` = [`blob`]`(n, size)` through ordinal `i` with 8 concurrent
    /// clients; panics unless every one is acknowledged. Returns the keys.
    pub fn put_blobs(&self, i: usize, prefix: &str, count: usize, size: usize) -> Vec<String> {
        self.put_values(i, prefix, count, move |_, n| blob(n, size))
            .into_keys()
            .collect()
    }

    fn put_values(
        &self,
        i: usize,
        prefix: &str,
        count: usize,
        value_of: impl Fn(&str, usize) -> Vec<u8> + Send + Sync + 'static,
    ) -> BTreeMap<String, Vec<u8>> {
        let channel = self.channel(i, Duration::from_secs(10));
        let prefix = prefix.to_string();
        let value_of = Arc::new(value_of);
        let result = self.rt.block_on(async move {
            let tasks = 8;
            let mut handles = Vec::new();
            for t in 0..tasks {
                let mut kv = KvClient::new(channel.clone());
                let (prefix, value_of) = (prefix.clone(), value_of.clone());
                handles.push(tokio::spawn(async move {
                    let mut written = Vec::new();
                    for n in (t..count).step_by(tasks) {
                        let key = format!("{prefix}/{n:05}");
                        let value = value_of(&prefix, n);
                        kv.put(PutRequest {
                            key: Bytes::from(key.clone()),
                            value: Bytes::from(value.clone()),
                            prev_kv: false,
                            lease: 0,
                        })
                        .await
                        .map_err(|e| format!("put {key}: {:?} {}", e.code(), e.message()))?;
                        written.push((key, value));
                    }
                    Ok::<_, String>(written)
                }));
            }
            let mut out = BTreeMap::new();
            for h in handles {
                out.extend(h.await.map_err(|e| e.to_string())??);
            }
            Ok::<_, String>(out)
        });
        let written = result.unwrap_or_else(|e| panic!("{e}\n{}", self.logs_all()));
        assert_eq!(written.len(), count);
        written
    }

    /// How many keys under `prefix` ordinal `i` serves with `consistency` (a count-only
    /// range: nothing is transferred).
    pub fn try_count(
        &self,
        i: usize,
        prefix: &str,
        consistency: Consistency,
    ) -> Result<u64, String> {
        let mut kv = KvClient::new(self.channel(i, Duration::from_secs(10)));
        self.rt.block_on(async move {
            kv.range(RangeRequest {
                prefix: Bytes::from(prefix.to_string()),
                count_only: true,
                consistency: consistency as i32,
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().count)
            .map_err(|e| format!("count via ordkv-{i}: {:?} {}", e.code(), e.message()))
        })
    }

    /// Gets `key`'s raw value through ordinal `i` (large values too): `Ok(None)` when absent.
    pub fn try_get_bytes(
        &self,
        i: usize,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<Bytes>, String> {
        let mut kv = KvClient::new(self.channel(i, Duration::from_secs(10)));
        self.rt.block_on(async move {
            kv.get(GetRequest {
                key: Bytes::from(key.to_string()),
                consistency: consistency as i32,
                min_revision: 0,
            })
            .await
            .map(|r| r.into_inner().kv.map(|kv| kv.value))
            .map_err(|e| format!("get {key} via ordkv-{i}: {:?} {}", e.code(), e.message()))
        })
    }

    /// Gets `key` through ordinal `i`: `Ok(None)` when absent.
    pub fn try_get(
        &self,
        i: usize,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<String>, String> {
        let mut kv = KvClient::new(self.channel(i, PROBE_TIMEOUT));
        self.rt.block_on(async move {
            kv.get(GetRequest {
                key: Bytes::from(key.to_string()),
                consistency: consistency as i32,
                min_revision: 0,
            })
            .await
            .map(|r| {
                r.into_inner()
                    .kv
                    .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
            })
            .map_err(|e| format!("get {key} via ordkv-{i}: {:?} {}", e.code(), e.message()))
        })
    }

    /// Every key under `prefix` (all pages) as ordinal `i` serves it with `consistency`.
    pub fn try_scan(
        &self,
        i: usize,
        prefix: &str,
        consistency: Consistency,
    ) -> Result<BTreeMap<String, String>, String> {
        let mut kv = KvClient::new(self.channel(i, Duration::from_secs(10)));
        self.rt.block_on(async move {
            let mut out = BTreeMap::new();
            let mut start = Bytes::new();
            loop {
                let resp = kv
                    .range(RangeRequest {
                        start: start.clone(),
                        prefix: Bytes::from(prefix.to_string()),
                        consistency: consistency as i32,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| format!("scan via ordkv-{i}: {:?} {}", e.code(), e.message()))?
                    .into_inner();
                for kv in resp.kvs {
                    out.insert(
                        String::from_utf8_lossy(&kv.key).into_owned(),
                        String::from_utf8_lossy(&kv.value).into_owned(),
                    );
                }
                if !resp.more {
                    return Ok(out);
                }
                start = resp.next_start;
            }
        })
    }

    /// [`StatefulSet::try_scan`], panicking with the logs.
    pub fn scan(
        &self,
        i: usize,
        prefix: &str,
        consistency: Consistency,
    ) -> BTreeMap<String, String> {
        self.try_scan(i, prefix, consistency)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.logs_all()))
    }

    // -----------------------------------------------------------------------------------
    // Logs and cleanup
    // -----------------------------------------------------------------------------------

    /// The full logs of ordinal `i`'s current container (colours removed).
    pub fn logs(&self, i: usize) -> String {
        match try_docker(&["logs", &self.container(i)], DOCKER_DEADLINE) {
            Ok(out) => strip_ansi(&format!("{}{}", out.stdout_str(), out.stderr)),
            Err(e) => format!("(no logs: {e})"),
        }
    }

    /// Every log of ordinal `i`: its removed containers' first, then the current one's.
    pub fn logs_of(&self, i: usize) -> String {
        let name = format!("{}.", pod_name(i));
        self.all_logs()
            .into_iter()
            .filter(|(title, _)| title.starts_with(&name))
            .map(|(_, logs)| logs)
            .collect()
    }

    /// Every container's logs, removed ones first: `(title, full logs)`.
    fn all_logs(&self) -> Vec<(String, String)> {
        let mut all = self
            .past_logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for i in &self.pods {
            all.push((format!("{}.now", pod_name(*i)), self.logs(*i)));
        }
        all
    }

    /// For failure messages: writes every container's full logs (removed ones too) to
    /// `$TMPDIR/ordkv-containers/<prefix>/`, and returns the last lines of each plus where
    /// the files are.
    pub fn logs_all(&self) -> String {
        self.logs_shown.store(true, Ordering::SeqCst);
        let dir = std::env::temp_dir()
            .join("ordkv-containers")
            .join(&self.prefix);
        let _ = std::fs::create_dir_all(&dir);
        let mut out = String::new();
        for (n, (title, logs)) in self.all_logs().into_iter().enumerate() {
            let file = dir.join(format!("{n:02}-{title}.log"));
            let _ = std::fs::write(&file, &logs);
            let lines: Vec<&str> = logs.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
            out.push_str(&format!(
                "===== {title}: last {} of {} lines (all in {}) =====\n{}\n",
                tail.len(),
                lines.len(),
                file.display(),
                tail.join("\n")
            ));
        }
        out
    }

    /// Removes every container, volume and the network of this set (best effort).
    fn cleanup(&self) {
        let filter = format!("label=ordkv-test-set={}", self.prefix);
        let list = |args: &[&str]| -> Vec<String> {
            try_docker(args, DOCKER_DEADLINE)
                .map(|o| o.stdout_str().lines().map(str::to_string).collect())
                .unwrap_or_default()
        };
        let containers = list(&["ps", "-aq", "--filter", &filter]);
        if !containers.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(containers.iter().map(String::as_str));
            let _ = try_docker(&args, DOCKER_DEADLINE);
        }
        let volumes = list(&["volume", "ls", "-q", "--filter", &filter]);
        if !volumes.is_empty() {
            let mut args = vec!["volume", "rm", "-f"];
            args.extend(volumes.iter().map(String::as_str));
            let _ = try_docker(&args, DOCKER_DEADLINE);
        }
        let networks = list(&["network", "ls", "-q", "--filter", &filter]);
        if !networks.is_empty() {
            let mut args = vec!["network", "rm"];
            args.extend(networks.iter().map(String::as_str));
            let _ = try_docker(&args, DOCKER_DEADLINE);
        }
    }
}

impl Drop for StatefulSet {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.logs_shown.load(Ordering::SeqCst) {
            eprintln!("{}", self.logs_all());
        }
        self.cleanup();
    }
}

/// Value `n` of [`StatefulSet::put_blobs`]: `size` bytes, `blob-<n>:` then bytes that vary
/// with `n`.
pub fn blob(n: usize, size: usize) -> Vec<u8> {
    let mut v = format!("blob-{n:05}:").into_bytes();
    v.extend((0..size.saturating_sub(v.len())).map(|j| (j.wrapping_mul(31) ^ n) as u8));
    v.truncate(size);
    v
}

/// A lazily connecting channel to `addr` with a per-request deadline (needs a runtime).
pub fn channel_to(addr: SocketAddr, timeout: Duration) -> Channel {
    channel_to_with(addr, timeout, None)
}

/// [`channel_to`] with TLS when `tls` is given.
pub fn channel_to_with(
    addr: SocketAddr,
    timeout: Duration,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Channel {
    let endpoint = match tls {
        Some(tls) => Endpoint::from_shared(format!("https://{addr}"))
            .expect("valid endpoint")
            .tls_config(tls)
            .expect("client TLS"),
        None => Endpoint::from_shared(format!("http://{addr}")).expect("valid endpoint"),
    };
    endpoint
        .connect_timeout(Duration::from_millis(500))
        .timeout(timeout)
        .connect_lazy()
}

// ---------------------------------------------------------------------------------------
// A steady write load from the host
// ---------------------------------------------------------------------------------------

/// One acknowledged write of a [`WriteLoad`].
#[derive(Debug, Clone)]
pub struct Ack {
    /// The key written (unique per write).
    pub key: String,
    /// The value written.
    pub value: String,
    /// When it was acknowledged, since the load started.
    pub at: Duration,
    /// The revision it created.
    pub revision: u64,
}

/// What a [`WriteLoad`] did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Acknowledged writes, in order.
    pub acked: Vec<Ack>,
    /// Attempts that failed (error or deadline: outcome unknown; retried).
    pub failed_attempts: usize,
    /// The first few failures.
    pub sample_errors: Vec<String>,
    /// How long the load ran.
    pub ran: Duration,
}

impl LoadReport {
    /// The longest time without an acknowledged write (between two acks, or from the last
    /// ack to the end), and when it began (since the load started).
    pub fn longest_gap(&self) -> (Duration, Duration) {
        let mut best = (Duration::ZERO, Duration::ZERO);
        let mut prev = Duration::ZERO;
        for t in self.acked.iter().map(|a| a.at).chain([self.ran]) {
            if t.saturating_sub(prev) > best.0 {
                best = (t.saturating_sub(prev), prev);
            }
            prev = t;
        }
        best
    }
}

/// A sequential writer running on its own thread: puts `<prefix>/<n>` = `v<n>` through one
/// member at a time (rotating to the next published client port on any failure, retrying
/// the same key) until stopped.
pub struct WriteLoad {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    handle: Option<std::thread::JoinHandle<LoadReport>>,
}

impl WriteLoad {
    /// Starts writing through `endpoints` (the first one first), each request with
    /// `op_timeout`.
    pub fn start(endpoints: Vec<SocketAddr>, prefix: &str, op_timeout: Duration) -> WriteLoad {
        WriteLoad::start_with(endpoints, prefix, op_timeout, None)
    }

    /// [`WriteLoad::start`] over TLS when `tls` is given (see [`StatefulSet::client_tls`]).
    pub fn start_with(
        endpoints: Vec<SocketAddr>,
        prefix: &str,
        op_timeout: Duration,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> WriteLoad {
        assert!(!endpoints.is_empty());
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let prefix = prefix.to_string();
        let handle = {
            let (stop, acked) = (stop.clone(), acked.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                rt.block_on(write_loop(endpoints, prefix, op_timeout, tls, stop, acked))
            })
        };
        WriteLoad {
            stop,
            acked,
            handle: Some(handle),
        }
    }

    /// How many writes were acknowledged so far.
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::SeqCst)
    }

    /// Stops the writer (after its current request) and returns its report.
    pub fn stop(mut self) -> LoadReport {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .expect("running")
            .join()
            .expect("the load thread panicked")
    }
}

impl Drop for WriteLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

async fn write_loop(
    endpoints: Vec<SocketAddr>,
    prefix: String,
    op_timeout: Duration,
    tls: Option<tonic::transport::ClientTlsConfig>,
    stop: Arc<AtomicBool>,
    acked_count: Arc<AtomicUsize>,
) -> LoadReport {
    let channels: Vec<Channel> = endpoints
        .iter()
        .map(|a| channel_to_with(*a, op_timeout, tls.clone()))
        .collect();
    let started = Instant::now();
    let mut report = LoadReport {
        acked: Vec::new(),
        failed_attempts: 0,
        sample_errors: Vec::new(),
        ran: Duration::ZERO,
    };
    let (mut via, mut n) = (0usize, 0u64);
    while !stop.load(Ordering::SeqCst) {
        let (key, value) = (format!("{prefix}/{n:06}"), format!("v{n}"));
        let mut kv = KvClient::new(channels[via].clone());
        let result = kv
            .put(PutRequest {
                key: Bytes::from(key.clone()),
                value: Bytes::from(value.clone()),
                prev_kv: false,
                lease: 0,
            })
            .await;
        match result {
            Ok(r) => {
                report.acked.push(Ack {
                    key,
                    value,
                    at: started.elapsed(),
                    revision: r.into_inner().header.map_or(0, |h| h.revision),
                });
                acked_count.fetch_add(1, Ordering::SeqCst);
                n += 1;
            }
            Err(e) => {
                report.failed_attempts += 1;
                if report.sample_errors.len() < 10 {
                    report.sample_errors.push(format!(
                        "{:.2}s via {}: {:?} {}",
                        started.elapsed().as_secs_f64(),
                        endpoints[via],
                        e.code(),
                        e.message()
                    ));
                }
                via = (via + 1) % channels.len();
                // Back off a little so a dead endpoint does not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    report.ran = started.elapsed();
    report
}
