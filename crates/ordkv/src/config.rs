//! Configuration of an embedded node: one struct, validated once at open.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// Request limits. Every request is checked against them before it reaches Raft, so an
/// oversized request changes nothing. Reported in `Cluster.Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest key accepted.
    pub max_key_bytes: usize,
    /// Longest value accepted.
    pub max_value_bytes: usize,
    /// Most compares plus ops in one Txn.
    pub max_txn_ops: usize,
    /// Most keys returned by one Range (and the default when a request says 0).
    pub max_range_limit: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key_bytes: 4 * 1024,
            max_value_bytes: 1024 * 1024,
            max_txn_ops: 128,
            max_range_limit: 10_000,
        }
    }
}

/// A member's name split into its StatefulSet parts: `kv-2` is ordinal 2 of `kv`.
/// A name without a trailing `-<N>` is ordinal 0 of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The full member name, e.g. `kv-2`.
    pub name: String,
    /// The StatefulSet name, e.g. `kv`.
    pub set: String,
    /// The ordinal, e.g. 2.
    pub ordinal: u32,
}

impl Identity {
    /// Parses a pod name. Fails on an empty name or one that is not a DNS label.
    pub fn parse(name: &str) -> Result<Identity> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if !valid {
            return Err(Error::InvalidArgument(format!(
                "member name {name:?} must be a DNS label (lowercase letters, digits, '-', at most 63)"
            )));
        }
        if let Some((set, n)) = name.rsplit_once('-')
            && !n.is_empty()
            && n.bytes().all(|b| b.is_ascii_digit())
            && let Ok(ordinal) = n.parse::<u32>()
        {
            return Ok(Identity {
                name: name.to_string(),
                set: set.to_string(),
                ordinal,
            });
        }
        Ok(Identity {
            name: name.to_string(),
            set: name.to_string(),
            ordinal: 0,
        })
    }
}

/// How a member finds the other members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peers {
    /// A cluster of one: no peers, no peer port.
    None,
    /// A fixed map of member names to peer addresses (`host:port`), this member included:
    /// for processes on one host, like etcd's `--initial-cluster`.
    Static(BTreeMap<String, String>),
    /// StatefulSet DNS: member `{set}-{i}` is at
    /// `{set}-{i}.{service}.{namespace}.svc.{cluster_domain}:{peer_port}`.
    Dns {
        /// The headless Service.
        service: String,
        /// The namespace.
        namespace: String,
        /// The cluster DNS domain, e.g. `cluster.local`.
        cluster_domain: String,
        /// The peer port every member listens on.
        peer_port: u16,
    },
}

impl Peers {
    /// The peer address of member `name`, if this discovery can name it.
    pub fn address_of(&self, identity: &Identity, ordinal: u32) -> Option<(String, String)> {
        let name = format!("{}-{ordinal}", identity.set);
        match self {
            Peers::None => None,
            Peers::Static(map) => map.get(&name).map(|a| (name, a.clone())),
            Peers::Dns {
                service,
                namespace,
                cluster_domain,
                peer_port,
            } => {
                let addr = format!("{name}.{service}.{namespace}.svc.{cluster_domain}:{peer_port}");
                Some((name, addr))
            }
        }
    }
}

/// Everything [`crate::Node::open`] needs. Start from [`NodeConfig::new`] and set fields.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where this member keeps its data (the pod's PVC mount).
    pub data_dir: PathBuf,
    /// Member name, e.g. `kv-0`; its trailing ordinal names the member.
    pub name: String,
    /// Client address advertised to others (status, leader hints).
    pub advertise_client_addr: String,
    /// Peer address advertised to others.
    pub advertise_peer_addr: String,
    /// Request limits.
    pub limits: Limits,
    /// How many revisions of watch history to keep before compacting automatically.
    pub watch_history_revisions: u64,
    /// sled's page cache size.
    pub cache_capacity_bytes: u64,
    /// Refuse writes on followers instead of forwarding them to the leader.
    pub reject_follower_writes: bool,
    /// Members beyond this many voters join as learners (read replicas).
    pub max_voters: usize,
    /// Raft log entries between snapshots (after which the log is purged).
    pub snapshot_every_entries: u64,
    /// How this member finds the others.
    pub peers: Peers,
    /// Where the peer service listens; required unless `peers` is [`Peers::None`].
    pub peer_listen_addr: Option<SocketAddr>,
    /// How long a member's DNS name must stay unresolvable before the leader removes it.
    pub dead_member_timeout: Duration,
    /// How long a request waits for a leader, a read index or `min_revision`.
    pub request_wait: Duration,
    /// Where to read the StatefulSet's `spec.replicas` (scale intent), or why it cannot be
    /// read: then scale-down waits for `dead_member_timeout`, as without Kubernetes.
    pub kubernetes: std::result::Result<crate::KubernetesApi, String>,
    /// How long a member scaled away waits on shutdown for the leader to remove it (keep it
    /// below the pod's termination grace period).
    pub leave_timeout: Duration,
    /// Writes that add data are refused (`Error::NoSpace`) once the store is this large on
    /// disk; 0 for no quota. Deletes and compactions still pass.
    pub quota_bytes: u64,
    /// Writes that add data are refused while the data dir's filesystem has less free space.
    pub min_free_bytes: u64,
    /// Size of a Raft log segment (64 MiB); two are preallocated on disk. A multiple of
    /// 4 KiB, at least 1 MiB: small embedded uses and tests can take less.
    pub wal_segment_bytes: u64,
    /// TLS for the peer port (and, through [`crate::Node::tls`], the servers an application
    /// runs): a directory with `tls.crt`, `tls.key` and `ca.crt`, re-read when they change.
    /// Peers must then present certificates from that CA naming a member.
    pub tls_dir: Option<PathBuf>,
    /// Scheduled backups written by this member (`None`: none).
    pub backup: Option<crate::backup::BackupSchedule>,
}

/// `advertise_peer_addr` of [`NodeConfig::new`]: left so, it is derived (see
/// [`NodeConfig::effective_advertise_peer_addr`]).
const DEFAULT_ADVERTISE_PEER_ADDR: &str = "127.0.0.1:7380";

impl NodeConfig {
    /// The peer address this member gives the others: `advertise_peer_addr` when it was set;
    /// left at its default, this member's own entry in a [`Peers::Static`] map, else
    /// `peer_listen_addr` when that names a specific address.
    pub fn effective_advertise_peer_addr(&self) -> String {
        if self.advertise_peer_addr != DEFAULT_ADVERTISE_PEER_ADDR {
            return self.advertise_peer_addr.clone();
        }
        if let Peers::Static(map) = &self.peers
            && let Some(own) = map.get(&self.name)
        {
            return own.clone();
        }
        match self.peer_listen_addr {
            Some(addr) if !addr.ip().is_unspecified() => addr.to_string(),
            _ => self.advertise_peer_addr.clone(),
        }
    }

    /// Defaults for a single member named `ordkv` in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> NodeConfig {
        NodeConfig {
            data_dir: data_dir.into(),
            name: "ordkv".to_string(),
            advertise_client_addr: "127.0.0.1:7379".to_string(),
            advertise_peer_addr: DEFAULT_ADVERTISE_PEER_ADDR.to_string(),
            limits: Limits::default(),
            watch_history_revisions: 100_000,
            cache_capacity_bytes: 128 * 1024 * 1024,
            reject_follower_writes: false,
            max_voters: 5,
            snapshot_every_entries: 50_000,
            peers: Peers::None,
            peer_listen_addr: None,
            dead_member_timeout: Duration::from_secs(600),
            request_wait: Duration::from_secs(5),
            kubernetes: Err("no Kubernetes API configured".into()),
            leave_timeout: Duration::from_secs(20),
            quota_bytes: 8 << 30,
            min_free_bytes: 128 << 20,
            wal_segment_bytes: ordkv_store::DEFAULT_WAL_SEGMENT_BYTES,
            tls_dir: None,
            backup: None,
        }
    }

    /// A member of a StatefulSet, configured from the pod's environment: the name from
    /// `$POD_NAME`, the namespace from `$POD_NAMESPACE` (else the service-account file, else
    /// `default`), peers found through the headless `service` in `cluster.local`, listening
    /// for peers on `0.0.0.0:peer_port`, advertised under the pod's stable DNS name.
    pub fn from_pod_env(
        data_dir: impl Into<PathBuf>,
        service: &str,
        peer_port: u16,
        client_port: u16,
    ) -> Result<NodeConfig> {
        let name = std::env::var("POD_NAME")
            .ok()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                Error::InvalidArgument("$POD_NAME is not set (use the downward API)".into())
            })?;
        let namespace = pod_namespace();
        let host = format!("{name}.{service}.{namespace}.svc.cluster.local");
        let mut c = NodeConfig::new(data_dir);
        c.name = name;
        c.advertise_peer_addr = format!("{host}:{peer_port}");
        c.advertise_client_addr = format!("{host}:{client_port}");
        c.peers = Peers::Dns {
            service: service.to_string(),
            namespace,
            cluster_domain: "cluster.local".to_string(),
            peer_port,
        };
        c.peer_listen_addr = Some(SocketAddr::from(([0, 0, 0, 0], peer_port)));
        let set = Identity::parse(&c.name)?.set;
        c.kubernetes = crate::KubernetesApi::in_cluster(&set, &pod_namespace(), None);
        c.validate()?;
        Ok(c)
    }

    /// Checks every field; the error names the field and the accepted range.
    pub fn validate(&self) -> Result<Identity> {
        let identity = Identity::parse(&self.name)?;
        let bad = |msg: String| Err(Error::InvalidArgument(msg));
        if self.data_dir.as_os_str().is_empty() {
            return bad("data dir must not be empty".into());
        }
        let l = &self.limits;
        if l.max_key_bytes == 0 || l.max_key_bytes > 64 * 1024 {
            return bad(format!(
                "max key bytes {} must be in 1..=65536",
                l.max_key_bytes
            ));
        }
        if l.max_value_bytes > 64 * 1024 * 1024 {
            return bad(format!(
                "max value bytes {} must be at most 64 MiB",
                l.max_value_bytes
            ));
        }
        if l.max_txn_ops == 0 || l.max_range_limit == 0 {
            return bad("max txn ops and max range limit must be positive".into());
        }
        if self.watch_history_revisions == 0 {
            return bad("watch history revisions must be positive".into());
        }
        if let Some(backup) = &self.backup {
            backup.validate()?;
        }
        if !(1..=9).contains(&self.max_voters) {
            return bad(format!("max voters {} must be in 1..=9", self.max_voters));
        }
        if self.wal_segment_bytes < 1 << 20 || !self.wal_segment_bytes.is_multiple_of(4096) {
            return bad(format!(
                "wal_segment_bytes {} must be a multiple of 4096 and at least 1 MiB",
                self.wal_segment_bytes
            ));
        }
        if self.snapshot_every_entries < 100 {
            return bad(format!(
                "snapshot every {} entries is too often; use at least 100",
                self.snapshot_every_entries
            ));
        }
        match &self.peers {
            Peers::None => {}
            _ if self.peer_listen_addr.is_none() => {
                return bad("a member with peers needs a peer listen address".into());
            }
            Peers::Static(map) => {
                for name in map.keys() {
                    Identity::parse(name)?;
                }
                let Some(own) = map.get(&identity.name) else {
                    return bad(format!(
                        "the peer map does not list this member {:?}",
                        identity.name
                    ));
                };
                let advertised = self.effective_advertise_peer_addr();
                if advertised != *own {
                    return bad(format!(
                        "advertise_peer_addr {advertised} is not this member's own entry in the \
                         peer map ({own}): the others would dial another address; set it to \
                         {own}, or leave it at its default to use the map's"
                    ));
                }
            }
            Peers::Dns { service, .. } => {
                Identity::parse(service)?;
            }
        }
        Ok(identity)
    }
}

/// The pod's namespace: `$POD_NAMESPACE`, else the service-account namespace file, else
/// `default`.
pub fn pod_namespace() -> String {
    std::env::var("POD_NAMESPACE")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "default".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_takes_the_trailing_ordinal() {
        let id = Identity::parse("kv-12").unwrap();
        assert_eq!((id.set.as_str(), id.ordinal), ("kv", 12));
        let id = Identity::parse("my-store-0").unwrap();
        assert_eq!((id.set.as_str(), id.ordinal), ("my-store", 0));
        let id = Identity::parse("ordkv").unwrap();
        assert_eq!((id.set.as_str(), id.ordinal), ("ordkv", 0));
    }

    #[test]
    fn identity_rejects_non_dns_names() {
        for bad in ["", "Kv-0", "kv_0", "-kv", "kv-", &"a".repeat(64)] {
            assert!(Identity::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn validate_rejects_out_of_range_fields() {
        let mut c = NodeConfig::new("/tmp/x");
        assert!(c.validate().is_ok());
        c.max_voters = 0;
        assert!(c.validate().is_err());
        c.max_voters = 3;
        c.limits.max_key_bytes = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn a_static_member_advertises_its_own_map_entry_and_nothing_else() {
        let mut c = NodeConfig::new("/tmp/x");
        c.name = "kv-1".into();
        c.peer_listen_addr = Some("127.0.0.1:7391".parse().unwrap());
        c.peers = Peers::Static(BTreeMap::from([
            ("kv-0".to_string(), "127.0.0.1:7381".to_string()),
            ("kv-1".to_string(), "127.0.0.1:7391".to_string()),
        ]));
        // Left at its default, the address comes from the map.
        assert!(c.validate().is_ok());
        assert_eq!(c.effective_advertise_peer_addr(), "127.0.0.1:7391");
        // Set to another member's address (or any other), it is refused, naming both.
        c.advertise_peer_addr = "127.0.0.1:7381".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("127.0.0.1:7381") && e.contains("127.0.0.1:7391"),
            "{e}"
        );
        c.advertise_peer_addr = "127.0.0.1:7391".into();
        assert!(c.validate().is_ok());
    }

    #[test]
    fn without_a_map_the_listen_address_is_advertised_when_it_names_one() {
        let mut c = NodeConfig::new("/tmp/x");
        c.peer_listen_addr = Some("10.0.0.7:7380".parse().unwrap());
        assert_eq!(c.effective_advertise_peer_addr(), "10.0.0.7:7380");
        c.peer_listen_addr = Some("0.0.0.0:7380".parse().unwrap());
        assert_eq!(c.effective_advertise_peer_addr(), "127.0.0.1:7380");
    }
}
