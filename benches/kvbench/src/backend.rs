//! The two systems under test behind one interface. Both speak gRPC over tonic channels opened
//! the same way, so the comparison measures the servers, not two different client stacks.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::etcd;

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Ordkv,
    Etcd,
}

/// Connections to one cluster: `leader` for writes, `spread` over every member for reads.
#[derive(Clone)]
pub struct Backend {
    kind: Kind,
    leader: Vec<Channel>,
    spread: Vec<Channel>,
}

/// What a watcher receives: per message, the values of its events (each starts with the
/// writer's timestamp).
pub type Events = std::pin::Pin<Box<dyn Stream<Item = anyhow::Result<Vec<Bytes>>> + Send>>;

const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// TLS for every channel (`kvbench run --cacert`), set once at start.
static TLS: std::sync::OnceLock<tonic::transport::ClientTlsConfig> = std::sync::OnceLock::new();

/// Connects over TLS from now on, trusting the PEM CA `ca`.
pub fn use_tls(ca: &[u8]) {
    let config = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca));
    let _ = TLS.set(config);
}

fn channel(endpoint: &str) -> anyhow::Result<Channel> {
    let tls = TLS.get();
    let uri = if endpoint.contains("://") {
        endpoint.to_string()
    } else if tls.is_some() {
        format!("https://{endpoint}")
    } else {
        format!("http://{endpoint}")
    };
    let endpoint_config =
        Endpoint::from_shared(uri).with_context(|| format!("bad endpoint {endpoint}"))?;
    let endpoint_config = match tls {
        Some(tls) => endpoint_config.tls_config(tls.clone())?,
        None => endpoint_config,
    };
    Ok(endpoint_config
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect_lazy())
}

impl Backend {
    /// Opens `connections` channels to the leader and `connections` spread over `endpoints`.
    pub async fn connect(
        kind: Kind,
        endpoints: &[String],
        connections: usize,
    ) -> anyhow::Result<Self> {
        let leader = find_leader(kind, endpoints).await?;
        let connections = connections.max(1);
        let leader = (0..connections)
            .map(|_| channel(&leader))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let spread = (0..connections)
            .map(|i| channel(&endpoints[i % endpoints.len()]))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Backend {
            kind,
            leader,
            spread,
        })
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub async fn put(&self, client: usize, key: Bytes, value: Bytes) -> anyhow::Result<()> {
        let ch = self.leader[client % self.leader.len()].clone();
        match self.kind {
            Kind::Ordkv => {
                ordkv_proto::kv_client::KvClient::new(ch)
                    .put(ordkv_proto::PutRequest {
                        key,
                        value,
                        prev_kv: false,
                        lease: 0,
                    })
                    .await?;
            }
            Kind::Etcd => {
                etcd::kv_client::KvClient::new(ch)
                    .put(etcd::PutRequest {
                        key,
                        value,
                        lease: 0,
                    })
                    .await?;
            }
        }
        Ok(())
    }

    /// Reads one key; returns whether it was found.
    pub async fn get(&self, client: usize, key: Bytes, linearizable: bool) -> anyhow::Result<bool> {
        let ch = self.spread[client % self.spread.len()].clone();
        Ok(match self.kind {
            Kind::Ordkv => {
                let consistency = if linearizable {
                    ordkv_proto::Consistency::Linearizable
                } else {
                    ordkv_proto::Consistency::Serializable
                };
                ordkv_proto::kv_client::KvClient::new(ch)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .get(ordkv_proto::GetRequest {
                        key,
                        consistency: consistency as i32,
                        min_revision: 0,
                    })
                    .await?
                    .into_inner()
                    .kv
                    .is_some()
            }
            Kind::Etcd => !etcd::kv_client::KvClient::new(ch)
                .max_decoding_message_size(MAX_MESSAGE)
                .range(etcd::RangeRequest {
                    key,
                    serializable: !linearizable,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .kvs
                .is_empty(),
        })
    }

    /// Reads up to `limit` keys in `[start, end)` (linearizable); returns how many came back.
    pub async fn range(
        &self,
        client: usize,
        start: Bytes,
        end: Bytes,
        limit: u64,
    ) -> anyhow::Result<usize> {
        let ch = self.spread[client % self.spread.len()].clone();
        Ok(match self.kind {
            Kind::Ordkv => ordkv_proto::kv_client::KvClient::new(ch)
                .max_decoding_message_size(MAX_MESSAGE)
                .range(ordkv_proto::RangeRequest {
                    start,
                    end,
                    limit,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .kvs
                .len(),
            Kind::Etcd => etcd::kv_client::KvClient::new(ch)
                .max_decoding_message_size(MAX_MESSAGE)
                .range(etcd::RangeRequest {
                    key: start,
                    range_end: end,
                    limit: limit as i64,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .kvs
                .len(),
        })
    }

    /// Watches every key with `prefix`; resolves once the watch is established.
    pub async fn watch(&self, client: usize, prefix: Bytes) -> anyhow::Result<Events> {
        let ch = self.spread[client % self.spread.len()].clone();
        match self.kind {
            Kind::Ordkv => {
                let mut stream = ordkv_proto::kv_client::KvClient::new(ch)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .watch(ordkv_proto::WatchRequest {
                        prefix,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                match stream.next().await {
                    Some(Ok(first)) if first.created => {}
                    other => bail!("ordkv watch was not established: {other:?}"),
                }
                Ok(Box::pin(stream.map(|r| {
                    let r = r?;
                    Ok(r.events
                        .into_iter()
                        .filter_map(|e| e.kv.map(|kv| kv.value))
                        .collect())
                })))
            }
            Kind::Etcd => {
                let (tx, rx) = mpsc::channel(1);
                tx.send(etcd::WatchRequest {
                    request_union: Some(etcd::watch_request::RequestUnion::CreateRequest(
                        etcd::WatchCreateRequest {
                            range_end: prefix_end(&prefix),
                            key: prefix,
                            start_revision: 0,
                        },
                    )),
                })
                .await?;
                let mut stream = etcd::watch_client::WatchClient::new(ch)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .watch(ReceiverStream::new(rx))
                    .await?
                    .into_inner();
                match stream.next().await {
                    Some(Ok(first)) if first.created => {}
                    other => bail!("etcd watch was not established: {other:?}"),
                }
                Ok(Box::pin(stream.map(move |r| {
                    // Keeps the request side open: closing it ends the watch.
                    let _keep = &tx;
                    let r = r?;
                    if r.canceled {
                        bail!("etcd cancelled the watch: {}", r.cancel_reason);
                    }
                    Ok(r.events
                        .into_iter()
                        .filter_map(|e| e.kv.map(|kv| kv.value))
                        .collect())
                })))
            }
        }
    }
}

/// One client's lease traffic: a lease granted, a key put with it, and a keepalive on the
/// client's own long-lived keepalive stream (as etcd's and ordkv's clients keep one).
pub struct LeaseClient {
    kind: Kind,
    leader: Channel,
    keepalives: mpsc::Sender<i64>,
    /// The keepalive call, opened at the first keepalive: a server may send its response
    /// headers only once the first message arrived (etcd does), so the call cannot be
    /// awaited before something is sent.
    opening: Option<futures::future::BoxFuture<'static, anyhow::Result<Answers>>>,
    answers: Option<Answers>,
}

type Answers = std::pin::Pin<Box<dyn Stream<Item = anyhow::Result<i64>> + Send>>;

impl Backend {
    /// Client `client`'s keepalive stream to the leader (opened at its first keepalive).
    pub fn lease_client(&self, client: usize) -> LeaseClient {
        let ch = self.leader[client % self.leader.len()].clone();
        let (tx, rx) = mpsc::channel::<i64>(1);
        let kind = self.kind;
        let call = ch.clone();
        let opening = async move {
            let answers: Answers = match kind {
                Kind::Ordkv => {
                    let requests = ReceiverStream::new(rx)
                        .map(|id| ordkv_proto::LeaseKeepAliveRequest { id: id as u64 });
                    let stream = ordkv_proto::lease_client::LeaseClient::new(call)
                        .lease_keep_alive(requests)
                        .await?
                        .into_inner();
                    Box::pin(stream.map(|r| Ok(r?.ttl)))
                }
                Kind::Etcd => {
                    let requests =
                        ReceiverStream::new(rx).map(|id| etcd::LeaseKeepAliveRequest { id });
                    let stream = etcd::lease_client::LeaseClient::new(call)
                        .lease_keep_alive(requests)
                        .await?
                        .into_inner();
                    Box::pin(stream.map(|r| Ok(r?.ttl)))
                }
            };
            Ok(answers)
        };
        LeaseClient {
            kind,
            leader: ch,
            keepalives: tx,
            opening: Some(Box::pin(opening)),
            answers: None,
        }
    }
}

impl Backend {
    /// How many leases the cluster holds (asked of the leader).
    pub async fn lease_count(&self) -> anyhow::Result<usize> {
        let ch = self.leader[0].clone();
        Ok(match self.kind {
            Kind::Ordkv => ordkv_proto::lease_client::LeaseClient::new(ch)
                .max_decoding_message_size(MAX_MESSAGE)
                .lease_leases(ordkv_proto::LeaseLeasesRequest {})
                .await?
                .into_inner()
                .leases
                .len(),
            Kind::Etcd => etcd::lease_client::LeaseClient::new(ch)
                .max_decoding_message_size(MAX_MESSAGE)
                .lease_leases(etcd::LeaseLeasesRequest {})
                .await?
                .into_inner()
                .leases
                .len(),
        })
    }
}

impl LeaseClient {
    /// Grants a lease of `ttl` seconds, puts `key` with it and keeps it alive once; returns
    /// the lease.
    pub async fn cycle(&mut self, ttl: i64, key: Bytes, value: Bytes) -> anyhow::Result<i64> {
        let id = match self.kind {
            Kind::Ordkv => {
                let ch = self.leader.clone();
                let id = ordkv_proto::lease_client::LeaseClient::new(ch.clone())
                    .lease_grant(ordkv_proto::LeaseGrantRequest { ttl, id: 0 })
                    .await?
                    .into_inner()
                    .id;
                ordkv_proto::kv_client::KvClient::new(ch)
                    .put(ordkv_proto::PutRequest {
                        key,
                        value,
                        prev_kv: false,
                        lease: id,
                    })
                    .await?;
                id as i64
            }
            Kind::Etcd => {
                let ch = self.leader.clone();
                let granted = etcd::lease_client::LeaseClient::new(ch.clone())
                    .lease_grant(etcd::LeaseGrantRequest { ttl, id: 0 })
                    .await?
                    .into_inner();
                if !granted.error.is_empty() {
                    bail!("etcd lease grant: {}", granted.error);
                }
                etcd::kv_client::KvClient::new(ch)
                    .put(etcd::PutRequest {
                        key,
                        value,
                        lease: granted.id,
                    })
                    .await?;
                granted.id
            }
        };
        self.keep_alive(id).await?;
        Ok(id)
    }

    /// One keepalive of lease `id` on this client's stream.
    pub async fn keep_alive(&mut self, id: i64) -> anyhow::Result<()> {
        self.keepalives.send(id).await?;
        if let Some(opening) = self.opening.take() {
            self.answers = Some(opening.await?);
        }
        let answers = self.answers.as_mut().expect("opened above");
        match answers.next().await {
            Some(Ok(ttl)) if ttl > 0 => Ok(()),
            Some(Ok(_)) => bail!("lease {id} was gone at a keepalive"),
            Some(Err(e)) => Err(e),
            None => bail!("the keepalive stream ended"),
        }
    }
}

/// etcd's `range_end` for a prefix: the smallest key above every key with `prefix`, or `\0`
/// ("to the end") when there is none. ordkv's store has its own (it takes `prefix` directly).
fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end.into();
        }
    }
    Bytes::from_static(&[0])
}

/// Asks every endpoint who leads and returns the leader's endpoint; waits up to 30 s for one.
async fn find_leader(kind: Kind, endpoints: &[String]) -> anyhow::Result<String> {
    if endpoints.is_empty() {
        bail!("no endpoints given");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        for endpoint in endpoints {
            if is_leader(kind, endpoint).await.unwrap_or(false) {
                return Ok(endpoint.clone());
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no leader among {endpoints:?} after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn is_leader(kind: Kind, endpoint: &str) -> anyhow::Result<bool> {
    let ch = channel(endpoint)?;
    Ok(match kind {
        Kind::Ordkv => {
            let s = ordkv_proto::cluster_client::ClusterClient::new(ch)
                .status(ordkv_proto::StatusRequest::default())
                .await?
                .into_inner();
            let ordinal = s
                .member
                .rsplit('-')
                .next()
                .and_then(|o| o.parse::<u32>().ok());
            s.leader.is_some() && s.leader == ordinal
        }
        Kind::Etcd => {
            let s = etcd::maintenance_client::MaintenanceClient::new(ch)
                .status(etcd::StatusRequest {})
                .await?
                .into_inner();
            s.leader != 0 && s.header.map(|h| h.member_id) == Some(s.leader)
        }
    })
}
