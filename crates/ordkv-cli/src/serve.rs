//! `ordkv serve`: flags (each with an `ORDKV_*` environment twin), validation, and running a
//! node with its servers until SIGTERM/SIGINT or a fatal storage error.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::ValueEnum;

/// Flags of `ordkv serve`. Every flag is validated at start; an invalid one is an error that
/// names it.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Where this member keeps its data (the pod's PVC mount).
    #[arg(long, env = "ORDKV_DATA_DIR", default_value = "./ordkv-data")]
    pub data_dir: PathBuf,
    /// Member name; a trailing `-<N>` is the StatefulSet ordinal. Default: $POD_NAME, else
    /// the hostname.
    #[arg(long, env = "ORDKV_NAME")]
    pub name: Option<String>,
    /// Headless Service name used to find peers by DNS.
    #[arg(long, env = "ORDKV_SERVICE")]
    pub service: Option<String>,
    /// Namespace. Default: $POD_NAMESPACE, else the service-account namespace file, else
    /// `default`.
    #[arg(long, env = "ORDKV_NAMESPACE")]
    pub namespace: Option<String>,
    /// Cluster DNS domain.
    #[arg(long, env = "ORDKV_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Host name advertised to peers and clients. Default: the pod's stable DNS name
    /// `{name}.{service}.{namespace}.svc.{cluster-domain}` when --service is set, else the
    /// client address's host.
    #[arg(long, env = "ORDKV_ADVERTISE_HOST")]
    pub advertise_host: Option<String>,
    /// Client gRPC listen address. Default 127.0.0.1:7379, or 0.0.0.0:7379 in a pod.
    #[arg(long, env = "ORDKV_CLIENT_ADDR")]
    pub client_addr: Option<SocketAddr>,
    /// Peer gRPC listen address. Default 127.0.0.1:7380, or 0.0.0.0:7380 in a pod.
    #[arg(long, env = "ORDKV_PEER_ADDR")]
    pub peer_addr: Option<SocketAddr>,
    /// HTTP listen address for /livez, /readyz, /metrics. Default 127.0.0.1:7381, or
    /// 0.0.0.0:7381 in a pod.
    #[arg(long, env = "ORDKV_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Members beyond this many voters join as learners (read replicas).
    #[arg(long, env = "ORDKV_MAX_VOTERS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub max_voters: u32,
    /// Refuse writes on followers (FAILED_PRECONDITION naming the leader) instead of
    /// forwarding them.
    #[arg(long, env = "ORDKV_REJECT_FOLLOWER_WRITES")]
    pub reject_follower_writes: bool,
    /// Static peer map `kv-0=host:port,kv-1=host:port` that replaces DNS discovery.
    #[arg(long, env = "ORDKV_PEERS", value_parser = parse_peer, value_delimiter = ',')]
    pub peers: Vec<(String, String)>,
    /// How long a member's DNS name must stay gone before the leader removes it (scale-down).
    #[arg(long, env = "ORDKV_DEAD_MEMBER_TIMEOUT", default_value = "10m", value_parser = crate::duration::parse_duration)]
    pub dead_member_timeout: Duration,
    /// The StatefulSet whose `spec.replicas` (read from the Kubernetes API with the pod's
    /// service account) says which members are scaled away. Default: the member name
    /// without its `-N`.
    #[arg(long, env = "ORDKV_STATEFULSET")]
    pub statefulset: Option<String>,
    /// Where the service account's `token` and `ca.crt` are mounted.
    #[arg(long, env = "ORDKV_SERVICE_ACCOUNT_DIR", default_value = ordkv::SERVICE_ACCOUNT_DIR, hide = true)]
    pub service_account_dir: PathBuf,
    /// How long a member scaled away waits on SIGTERM for the leader to remove it; keep it
    /// below the pod's terminationGracePeriodSeconds less 5 s of client draining.
    #[arg(long, env = "ORDKV_LEAVE_TIMEOUT", default_value = "20s", value_parser = crate::duration::parse_duration)]
    pub leave_timeout: Duration,
    /// Refuse writes that add data (RESOURCE_EXHAUSTED) once the store is this many bytes on
    /// disk (8 GiB); 0 for no quota. Deletes and compactions still pass.
    #[arg(long, env = "ORDKV_QUOTA_BYTES", default_value_t = 8 << 30)]
    pub quota_bytes: u64,
    /// Refuse writes that add data while the data dir's filesystem has fewer bytes free
    /// (128 MiB), so that the disk never fills under the Raft log and the store.
    #[arg(long, env = "ORDKV_MIN_FREE_BYTES", default_value_t = 128 << 20)]
    pub min_free_bytes: u64,
    /// Longest key accepted.
    #[arg(long, env = "ORDKV_MAX_KEY_BYTES", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub max_key_bytes: u64,
    /// Longest value accepted.
    #[arg(long, env = "ORDKV_MAX_VALUE_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u64).range(0..=64 * 1024 * 1024))]
    pub max_value_bytes: u64,
    /// Most compares plus ops in one transaction.
    #[arg(long, env = "ORDKV_MAX_TXN_OPS", default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_txn_ops: u64,
    /// Revisions of watch history kept before automatic compaction.
    #[arg(long, env = "ORDKV_WATCH_HISTORY", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub watch_history: u64,
    /// sled page cache in MiB. Reads of keys outside it go to the OS page cache and cost
    /// sled's decoding (1 M keys, random gets: 128 MiB is 4% slower than 256, 64 is 15%).
    #[arg(long, env = "ORDKV_CACHE_MB", default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub cache_mb: u64,
    /// Raft log entries between snapshots; the log is then purged up to the snapshot, less
    /// the last min(this, 1000) entries (kept for followers that lag a little).
    #[arg(long, env = "ORDKV_SNAPSHOT_EVERY", default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub snapshot_every: u64,
    /// Threads that run the node's tasks. Default: the CPUs this process may use (its cgroup
    /// CPU limit in a pod). Where several members share a few cores, one thread each wastes
    /// less CPU on waking idle threads (3 members on 2 cores: 1 thread each did 24% more puts
    /// at 64 clients, with 28% less CPU per put).
    #[arg(long, env = "ORDKV_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,
    /// Write scheduled backups (snapshot files, as `ordkv snapshot save` writes them) to this
    /// directory, e.g. a second volume. Only the leader writes them unless
    /// --backup-on-followers.
    #[arg(long, env = "ORDKV_BACKUP_DIR", value_name = "DIR")]
    pub backup_dir: Option<PathBuf>,
    /// Time between scheduled backups.
    #[arg(long, env = "ORDKV_BACKUP_EVERY", default_value = "1h", value_parser = crate::duration::parse_duration, requires = "backup_dir")]
    pub backup_every: Duration,
    /// How many scheduled backups to keep (the newest; older ones are deleted).
    #[arg(
        long,
        env = "ORDKV_BACKUP_KEEP",
        default_value_t = 24,
        requires = "backup_dir"
    )]
    pub backup_keep: usize,
    /// Write scheduled backups while this member follows too (its own applied state).
    #[arg(long, env = "ORDKV_BACKUP_ON_FOLLOWERS", requires = "backup_dir")]
    pub backup_on_followers: bool,
    /// Before starting, make this member the only voter of its cluster (`ordkv recover`: for a
    /// quorum lost for good; refused while other members answer). Run it once, then remove
    /// the flag: every start with it would drop the members that rejoined since. No
    /// `ORDKV_*` twin on purpose: set on a StatefulSet it would reach every pod.
    #[arg(long)]
    pub recover: bool,
    /// TLS on every port: a directory with `tls.crt`, `tls.key` and `ca.crt` (a mounted
    /// `kubernetes.io/tls` Secret, as cert-manager writes it), re-read when it changes. Peers
    /// must then present a certificate from that CA that names a member.
    #[arg(long, env = "ORDKV_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// With --tls-dir: clients must present a certificate signed by the CA.
    #[arg(long, env = "ORDKV_CLIENT_CERT_AUTH", requires = "tls_dir")]
    pub client_cert_auth: bool,
    /// With --tls-dir: keep the HTTP port (health, metrics) in plaintext, for probes and a
    /// Prometheus without TLS settings.
    #[arg(long, env = "ORDKV_HTTP_PLAINTEXT", requires = "tls_dir")]
    pub http_plaintext: bool,
    /// Access control: a YAML list of grants (`- name: app`, `read: ["app/"]`,
    /// `write: ["app/"]`, `admin: true`) by key prefix, re-read when it changes. Without it,
    /// any client the client port admits may read, write and administer.
    #[arg(long, env = "ORDKV_AUTH_POLICY", value_name = "FILE")]
    pub auth_policy: Option<PathBuf>,
    /// Bearer tokens for clients without certificates: `token,name` lines (the first two
    /// columns of Kubernetes' static token file), re-read when it changes; never logged.
    #[arg(
        long,
        env = "ORDKV_AUTH_TOKEN_FILE",
        value_name = "FILE",
        requires = "auth_policy"
    )]
    pub auth_token_file: Option<PathBuf>,
    /// Client connections open at once from one IP address; more are closed at once.
    #[arg(long, env = "ORDKV_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_address: u32,
    /// Tests only: let the tests cut this member off from named peers over the HTTP port
    /// (builds with the `fault-injection` feature only).
    #[arg(long, env = "ORDKV_ENABLE_FAULT_INJECTION", hide = true)]
    pub enable_fault_injection: bool,
    /// Log format.
    #[arg(long, env = "ORDKV_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How logs are printed.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn parse_peer(s: &str) -> Result<(String, String), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected name=host:port, e.g. kv-0=127.0.0.1:7380"))?;
    ordkv::Identity::parse(name).map_err(|e| e.to_string())?;
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr:?}: expected host:port"))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!(
            "{addr:?}: expected host:port with a port in 1..=65535"
        ));
    }
    Ok((name.to_string(), addr.to_string()))
}

/// `$POD_NAME`, else the hostname's first label, lowercased.
fn default_name() -> anyhow::Result<String> {
    if let Ok(n) = std::env::var("POD_NAME")
        && !n.is_empty()
    {
        return Ok(n);
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "ordkv".into());
    Ok(host
        .trim()
        .split('.')
        .next()
        .unwrap_or("ordkv")
        .to_lowercase())
}

/// Everything `serve` needs, resolved from flags, environment and defaults.
pub(crate) struct Resolved {
    pub(crate) node: ordkv::NodeConfig,
    pub(crate) server: ordkv_server::ServerConfig,
}

pub(crate) fn resolve(args: &ServeArgs) -> anyhow::Result<Resolved> {
    let name = match &args.name {
        Some(n) => n.clone(),
        None => default_name()?,
    };
    let identity = ordkv::Identity::parse(&name).with_context(|| {
        format!("member name {name:?} (from --name, $POD_NAME or the hostname)")
    })?;
    let in_pod = std::env::var_os("POD_NAME").is_some();
    let bind_host = if in_pod { "0.0.0.0" } else { "127.0.0.1" };
    let addr = |given: Option<SocketAddr>, port: u16| {
        given.unwrap_or_else(|| format!("{bind_host}:{port}").parse().expect("valid"))
    };
    let client_addr = addr(args.client_addr, 7379);
    let peer_addr = addr(args.peer_addr, 7380);
    let http_addr = addr(args.http_addr, 7381);
    if client_addr == peer_addr || client_addr == http_addr || peer_addr == http_addr {
        bail!("--client-addr, --peer-addr and --http-addr must differ");
    }
    let namespace = args.namespace.clone().unwrap_or_else(ordkv::pod_namespace);
    let advertise_host = match (&args.advertise_host, &args.service) {
        (Some(h), _) => h.clone(),
        (None, Some(svc)) => format!(
            "{}.{svc}.{namespace}.svc.{}",
            identity.name, args.cluster_domain
        ),
        (None, None) if client_addr.ip().is_unspecified() => "127.0.0.1".into(),
        (None, None) => client_addr.ip().to_string(),
    };
    if let Some(svc) = &args.service {
        ordkv::Identity::parse(svc).context("--service must be a DNS label")?;
    }
    if !args.peers.is_empty() && !args.peers.iter().any(|(n, _)| *n == identity.name) {
        bail!(
            "--peers does not list this member {:?}; include it, e.g. {}=127.0.0.1:7380",
            identity.name,
            identity.name
        );
    }
    let mut node = ordkv::NodeConfig::new(&args.data_dir);
    node.name = identity.name.clone();
    node.advertise_client_addr = format!("{advertise_host}:{}", client_addr.port());
    node.advertise_peer_addr = format!("{advertise_host}:{}", peer_addr.port());
    node.limits.max_key_bytes = args.max_key_bytes as usize;
    node.limits.max_value_bytes = args.max_value_bytes as usize;
    node.limits.max_txn_ops = args.max_txn_ops as usize;
    node.watch_history_revisions = args.watch_history;
    node.cache_capacity_bytes = args.cache_mb * 1024 * 1024;
    node.reject_follower_writes = args.reject_follower_writes;
    node.max_voters = args.max_voters as usize;
    node.dead_member_timeout = args.dead_member_timeout;
    node.snapshot_every_entries = args.snapshot_every;
    node.leave_timeout = args.leave_timeout;
    node.quota_bytes = args.quota_bytes;
    node.min_free_bytes = args.min_free_bytes;
    node.tls_dir = args.tls_dir.clone();
    node.backup = args.backup_dir.clone().map(|dir| ordkv::BackupSchedule {
        dir,
        every: args.backup_every,
        keep: args.backup_keep,
        on_followers: args.backup_on_followers,
    });
    let statefulset = args.statefulset.as_deref().unwrap_or(&identity.set);
    ordkv::Identity::parse(statefulset).context("--statefulset must be a DNS label")?;
    node.kubernetes = ordkv::KubernetesApi::in_cluster(
        statefulset,
        &namespace,
        Some(args.service_account_dir.clone()),
    );
    node.peers = if !args.peers.is_empty() {
        ordkv::Peers::Static(args.peers.iter().cloned().collect())
    } else if let Some(service) = &args.service {
        ordkv::Peers::Dns {
            service: service.clone(),
            namespace: namespace.clone(),
            cluster_domain: args.cluster_domain.clone(),
            peer_port: peer_addr.port(),
        }
    } else {
        ordkv::Peers::None
    };
    if node.peers != ordkv::Peers::None {
        node.peer_listen_addr = Some(peer_addr);
    }
    if let ordkv::Peers::Static(map) = &node.peers
        && let Some(mine) = map.get(&identity.name)
    {
        // The map says where peers reach this member.
        node.advertise_peer_addr = mine.clone();
        if args.advertise_host.is_none() {
            let host = mine.rsplit_once(':').map_or(mine.as_str(), |(h, _)| h);
            node.advertise_client_addr = format!("{host}:{}", client_addr.port());
        }
    }
    node.validate()?;
    let mut server = ordkv_server::ServerConfig::new(client_addr, http_addr, &node.limits);
    #[cfg(feature = "fault-injection")]
    {
        server.fault_injection = args.enable_fault_injection;
    }
    #[cfg(not(feature = "fault-injection"))]
    anyhow::ensure!(
        !args.enable_fault_injection,
        "--enable-fault-injection: this ordkv was built without fault injection (tests only: \
         cargo build -p ordkv-cli --features fault-injection)"
    );
    server.client_cert_auth = args.client_cert_auth;
    server.auth_policy = args.auth_policy.clone();
    server.auth_token_file = args.auth_token_file.clone();
    server.http_plaintext = args.http_plaintext;
    server.max_connections_per_address = args.max_connections_per_address as usize;
    Ok(Resolved { node, server })
}

/// The log filter when neither `ORDKV_LOG` nor `RUST_LOG` is set. openraft warns on every
/// failed heartbeat and replication attempt (10 a second per peer that is down, more under
/// load); ordkv's peer transport logs such an outage once and summarizes it instead
/// (`ordkv::peer::health`).
const DEFAULT_LOG_FILTER: &str = "info,openraft::core::heartbeat::worker=error,\
    openraft::replication=error,openraft::engine::handler::replication_handler=error";

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ORDKV_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Escape codes only on a terminal: `docker logs` and `kubectl logs` stay readable.
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// How long shutdown waits for clients to finish before closing their connections.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Resolves on SIGTERM or SIGINT.
async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Runs the node until SIGTERM/SIGINT; exits with an error on a fatal storage failure.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format);
    let resolved = resolve(&args)?;
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(config = ?resolved.node, client = %resolved.server.client_addr, http = %resolved.server.http_addr, workers, "starting ordkv");
    if args.recover {
        let report = ordkv::recover(&resolved.node, false).await?;
        crate::recover_cmd::print_report(crate::output::Format::Human, &report)?;
    }
    let node = ordkv::Node::open(resolved.node).await?;

    let stop = tokio_util::sync::CancellationToken::new();
    let fatal = {
        let (node, stop) = (node.clone(), stop.clone());
        tokio::spawn(async move {
            let why = node.fatal().await;
            stop.cancel();
            why
        })
    };
    let on_signal = stop.clone();
    tokio::spawn(async move {
        signal().await;
        on_signal.cancel();
    });
    let served = {
        let serving = ordkv_server::serve(
            node.clone(),
            resolved.server,
            stop.clone().cancelled_owned(),
        );
        // Draining waits for clients to close their connections; an idle or stuck client must
        // not hold up the leadership hand-off and the flush past the pod's grace period.
        let drain_limit = async {
            stop.cancelled().await;
            tokio::time::sleep(DRAIN_LIMIT).await;
        };
        tokio::select! {
            served = serving => served,
            () = drain_limit => {
                tracing::warn!(limit = ?DRAIN_LIMIT, "clients still connected; closing them");
                Ok(())
            }
        }
    };
    stop.cancel();
    if fatal.is_finished() {
        let why = fatal.await.unwrap_or_else(|e| e.to_string());
        bail!("fatal: {why}");
    }
    node.shutdown().await?;
    served?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_reject_garbage() {
        assert_eq!(
            parse_peer("kv-0=127.0.0.1:7380").unwrap(),
            ("kv-0".into(), "127.0.0.1:7380".into())
        );
        assert!(parse_peer("kv-0").is_err());
        assert!(parse_peer("kv-0=host").is_err());
        assert!(parse_peer("KV=host:1").is_err());
        assert!(parse_peer("kv-0=host:99999").is_err());
    }
}
