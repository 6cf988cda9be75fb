//! A small typed async client for ordkv's gRPC API (`ordkv.v1.KV` and `ordkv.v1.Cluster`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), ordkv_client::Error> {
//! let client = ordkv_client::Client::connect(&["127.0.0.1:7379".to_string()]).await?;
//! let revision = client.put_value("greeting", "hello").await?;
//! assert_eq!(client.get_value("greeting").await?.as_deref(), Some(&b"hello"[..]));
//! # let _ = revision; Ok(()) }
//! ```
//!
//! Requests go to one endpoint at a time; when it is unreachable (`UNAVAILABLE`), the next
//! endpoint is tried and, on success, becomes the preferred one. Reads are retried that way
//! on any `UNAVAILABLE`; writes only when they were not applied (the server said
//! `not-applied`, or no connection could be made). A write whose outcome is unknown is
//! returned as an error with [`Error::write_outcome`] = [`WriteOutcome::Unknown`], never
//! retried: a compare-and-swap that committed must not be reported as a failed compare.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use ordkv_proto::v1::{
    BackupRequest, CompactRequest, CompactResponse, DeleteRequest, DeleteResponse, GetRequest,
    GetResponse, MemberChangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    RemoveMemberRequest, StatusRequest, StatusResponse, TransferLeaderRequest, TxnRequest,
    TxnResponse, WatchRequest, WatchResponse, cluster_client::ClusterClient, kv_client::KvClient,
};
use ordkv_proto::v1::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, lease_client::LeaseClient,
};
use tonic::Status;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A lease kept alive in the background (see [`ordkv_recipes::Session`]).
pub type Session = ordkv_recipes::Session<Client>;
/// A lock with fencing tokens (see [`ordkv_recipes::Lock`]).
pub type Lock = ordkv_recipes::Lock<Client>;
/// Leader election (see [`ordkv_recipes::Election`]).
pub type Election = ordkv_recipes::Election<Client>;
/// Why a lock, an election or a session failed.
pub type RecipeError = ordkv_recipes::Error<Error>;
pub use ordkv_recipes::{Leadership, LockGuard};

impl ordkv_recipes::Backend for Client {
    type Error = Error;

    async fn lease_grant(&self, ttl: i64) -> Result<(u64, i64)> {
        let granted = Client::lease_grant(self, LeaseGrantRequest { ttl, id: 0 }).await?;
        Ok((granted.id, granted.ttl))
    }

    /// A keepalive that failed moves the next one to another endpoint: a member that
    /// answers nothing (paused, cut off) must not hold the session until its lease is gone.
    async fn lease_keep_alive(&self, id: u64) -> Result<i64> {
        let answer = Client::lease_keep_alive(self, id).await;
        if answer.is_err() {
            self.prefer_next_endpoint();
        }
        Ok(answer?.ttl)
    }

    async fn lease_revoke(&self, id: u64) -> Result<()> {
        match Client::lease_revoke(self, id).await {
            Err(e) if e.code() == Some(Code::NotFound) => Ok(()),
            other => other.map(drop),
        }
    }

    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse> {
        Client::txn(self, req).await
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        Client::range(self, req).await
    }

    async fn watch(&self, req: WatchRequest) -> Result<WatchStream> {
        Client::watch(self, req).await
    }
}

/// gRPC status codes, as [`Error::code`] returns them.
pub use futures::StreamExt;
pub use ordkv_proto::ops::{self, EventKind, Txn};
pub use tonic::Code;

/// Largest response message the client accepts (64 MiB).
pub const MAX_DECODING_MESSAGE_SIZE: usize = 64 * 1024 * 1024;

/// The gRPC metadata key under which a replica that refuses writes names the leader's client
/// address.
pub const LEADER_METADATA_KEY: &str = "ordkv-leader";

/// ordkv's default client port (peer: 7380, HTTP: 7381).
pub const DEFAULT_CLIENT_PORT: u16 = 7379;

/// How long establishing a TCP/HTTP2 connection to one endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A stream of watch responses, as returned by [`Client::watch`].
pub type WatchStream = BoxStream<'static, Result<WatchResponse>>;

/// Errors returned by [`Client`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// [`Client::connect`] was given an empty endpoint list.
    #[error("no endpoints given")]
    NoEndpoints,
    /// An endpoint could not be parsed as a URI.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The token has characters a header cannot carry.
    #[error("the token is not a valid header value (printable ASCII only)")]
    Token,
    /// TLS options that cannot be used (a file, or https:// without a CA).
    #[error("TLS: {0}")]
    Tls(String),
    /// The server (or the transport) answered with a gRPC status. Displays as
    /// `CODE_NAME: message`, e.g. `INVALID_ARGUMENT: key is empty` (a message that starts
    /// with the code's own words, like `invalid argument: key is empty`, is not repeated).
    #[error("{}: {}", code_name(.0.code()), without_code_words(.0.code(), .0.message()))]
    Status(Status),
}

// Not `#[from]`: that would also make the status the error's source, and a `{:#}` chain
// would repeat its message.
impl From<Status> for Error {
    fn from(status: Status) -> Self {
        Error::Status(status)
    }
}

/// Whether a write that failed happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// It entered no Raft log and never will: safe to retry.
    NotApplied,
    /// It may have committed, or may still commit: read before retrying a write that is not
    /// idempotent.
    Unknown,
}

impl Error {
    /// For a failed write, whether it happened, as the server said it (the
    /// `ordkv-write-outcome` metadata) or, for any other failure of a write, as this client
    /// knows it (`Unknown` unless no connection was made); errors of this client itself (no
    /// endpoints, a bad endpoint) are `NotApplied`. `None` for statuses that refuse the
    /// request itself (e.g. `INVALID_ARGUMENT`) and for failed reads.
    pub fn write_outcome(&self) -> Option<WriteOutcome> {
        match self {
            Error::Status(s) => outcome_of(s),
            _ => Some(WriteOutcome::NotApplied),
        }
    }

    /// The gRPC status code, if this error came from a call.
    pub fn code(&self) -> Option<Code> {
        match self {
            Error::Status(s) => Some(s.code()),
            _ => None,
        }
    }

    /// The leader's client address, when a replica refused a write with
    /// `FAILED_PRECONDITION` and named the leader in the `ordkv-leader` metadata.
    pub fn leader(&self) -> Option<&str> {
        match self {
            Error::Status(s) if s.code() == Code::FailedPrecondition => s
                .metadata()
                .get(LEADER_METADATA_KEY)
                .and_then(|v| v.to_str().ok()),
            _ => None,
        }
    }
}

/// `message` without a leading `<code in words>: ` (`invalid argument: x` for
/// `INVALID_ARGUMENT` is `x`), so that `CODE: message` does not say it twice.
fn without_code_words(code: Code, message: &str) -> &str {
    let words = code_name(code).replace('_', " ");
    match message.get(..words.len()) {
        Some(head) if head.eq_ignore_ascii_case(&words) => {
            message[words.len()..].strip_prefix(": ").unwrap_or(message)
        }
        _ => message,
    }
}

/// The canonical upper-case name of a gRPC status code, e.g. `NOT_FOUND`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// How to connect: TLS material. The default is plaintext.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// The PEM CA bundle that signed the servers' certificates. Setting it turns TLS on for
    /// endpoints given without a scheme (`https://`).
    pub ca_pem: Option<Vec<u8>>,
    /// A PEM certificate and its key, for servers that require client certificates.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// A bearer token, sent with every request (servers with `--auth-token-file`).
    pub token: Option<String>,
}

impl ConnectOptions {
    /// Reads the files (the CLI's `--cacert`, `--cert`, `--key`); a certificate needs its key.
    pub fn from_files(
        cacert: Option<&std::path::Path>,
        cert: Option<&std::path::Path>,
        key: Option<&std::path::Path>,
    ) -> Result<ConnectOptions> {
        let read = |flag: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| Error::Tls(format!("{flag} {}: {e}", path.display())))
        };
        let identity_pem = match (cert, key) {
            (Some(c), Some(k)) => Some((read("--cert", c)?, read("--key", k)?)),
            (None, None) => None,
            _ => return Err(Error::Tls("--cert and --key go together".into())),
        };
        Ok(ConnectOptions {
            ca_pem: cacert.map(|p| read("--cacert", p)).transpose()?,
            identity_pem,
            token: None,
        })
    }
}

/// A connection to an ordkv cluster through one or more client endpoints.
///
/// Cheap to share by reference or to clone; clones share the preferred endpoint.
#[derive(Debug, Clone)]
pub struct Client {
    /// `(endpoint as given, channel)`, in the given order.
    channels: Vec<(String, Channel)>,
    /// How the channels were made, for connections to other members (the leader).
    options: ConnectOptions,
    /// `Bearer <token>`, sent with every request.
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// Index of the endpoint to try first.
    current: std::sync::Arc<AtomicUsize>,
    /// gRPC deadline applied to every unary call.
    timeout: Option<Duration>,
}

impl Client {
    /// Creates a client for `endpoints` (`host:port` or `http://host:port`; `http://` is
    /// prepended when there is no scheme; the port is required). Connections are opened
    /// lazily on first use, so this only fails on an empty list or a malformed endpoint.
    pub async fn connect(endpoints: &[String]) -> Result<Client> {
        Client::connect_with(endpoints, ConnectOptions::default()).await
    }

    /// [`Client::connect`] with TLS: endpoints without a scheme use `https://` when
    /// `options` has a CA; `https://` endpoints need one.
    pub async fn connect_with(endpoints: &[String], options: ConnectOptions) -> Result<Client> {
        let authorization = match &options.token {
            Some(token) => Some(
                format!("Bearer {}", token.trim())
                    .parse::<tonic::metadata::MetadataValue<_>>()
                    .map_err(|_| Error::Token)?,
            ),
            None => None,
        };
        let tls = options.ca_pem.as_ref().map(|ca| {
            let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
            match &options.identity_pem {
                Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
                None => config,
            }
        });
        let mut channels = Vec::with_capacity(endpoints.len());
        for given in endpoints.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            let uri = if given.contains("://") {
                given.to_string()
            } else if tls.is_some() {
                format!("https://{given}")
            } else {
                format!("http://{given}")
            };
            if uri.starts_with("https://") && tls.is_none() {
                return Err(Error::Tls(format!(
                    "{given}: https:// needs the CA that signed the server's certificate \
                     (--cacert, ORDKV_CACERT)"
                )));
            }
            let invalid = |e: tonic::transport::Error| Error::InvalidEndpoint {
                endpoint: given.to_string(),
                reason: e.to_string(),
            };
            let https = uri.starts_with("https://");
            let endpoint = Endpoint::from_shared(uri).map_err(invalid)?;
            if endpoint.uri().port_u16().is_none() {
                let host = endpoint.uri().host().unwrap_or("127.0.0.1");
                return Err(Error::InvalidEndpoint {
                    endpoint: given.to_string(),
                    reason: format!(
                        "no port; ordkv's client port is {DEFAULT_CLIENT_PORT} by default \
                         (e.g. {host}:{DEFAULT_CLIENT_PORT})"
                    ),
                });
            }
            let endpoint = match &tls {
                Some(config) if https => endpoint
                    .tls_config(config.clone())
                    .map_err(|e| Error::Tls(format!("{given}: {e}")))?,
                _ => endpoint,
            };
            let channel = endpoint
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .connect_lazy();
            channels.push((given.to_string(), channel));
        }
        if channels.is_empty() {
            return Err(Error::NoEndpoints);
        }
        Ok(Client {
            channels,
            authorization,
            options,
            current: Default::default(),
            timeout: None,
        })
    }

    /// A client for another endpoint (e.g. the leader's address from `status`), with the
    /// same TLS options and deadline.
    pub async fn connect_to(&self, endpoint: &str) -> Result<Client> {
        Ok(
            Client::connect_with(&[endpoint.to_string()], self.options.clone())
                .await?
                .with_timeout(self.timeout),
        )
    }

    /// Sets the gRPC deadline of every unary call (and of establishing a watch); `None`
    /// means no deadline. A running watch stream is never cut by it.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Client {
        self.timeout = timeout;
        self
    }

    /// The deadline set with [`Client::with_timeout`].
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// A read, or anything safe to run twice: any `UNAVAILABLE` moves on to the next endpoint.
    async fn call<T, R, F, Fut>(&self, req: T, f: F) -> Result<R>
    where
        T: Clone,
        F: Fn(Channel, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        self.call_as(Retry::Unavailable, req, f).await
    }

    /// A write: it moves on to the next endpoint only when it was not applied.
    async fn write<T, R, F, Fut>(&self, req: T, f: F) -> Result<R>
    where
        T: Clone,
        F: Fn(Channel, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        self.call_as(Retry::NotApplied, req, f).await
    }

    /// Sends `req` with `f` to the preferred endpoint, moving on to the next one while the
    /// answer is `UNAVAILABLE` and `retry` allows it.
    async fn call_as<T, R, F, Fut>(&self, retry: Retry, req: T, f: F) -> Result<R>
    where
        T: Clone,
        F: Fn(Channel, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let n = self.channels.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let (endpoint, channel) = &self.channels[idx];
            let mut request = tonic::Request::new(req.clone());
            if let Some(timeout) = self.timeout {
                request.set_timeout(timeout);
            }
            if let Some(value) = &self.authorization {
                request
                    .metadata_mut()
                    .insert("authorization", value.clone());
            }
            let result = match (retry, f(channel.clone(), request).await) {
                // Not ordkv's client API: nothing was applied; say which port it is.
                (_, Err(status)) if wrong_server(&status).is_some() => {
                    let why = wrong_server(&status).unwrap_or_default();
                    failures.push(format!("{endpoint} {why}"));
                    continue;
                }
                // A failed TLS handshake: the server processed nothing; say what to change.
                (_, Err(status)) if tls_failure(&status).is_some() => {
                    let why = tls_failure(&status).unwrap_or_default();
                    failures.push(format!("{endpoint}: {why}"));
                    continue;
                }
                (Retry::NotApplied, Err(status)) => Err(with_outcome(status)),
                (_, result) => result,
            };
            match result {
                Ok(response) => {
                    self.current.store(idx, Ordering::Relaxed);
                    return Ok(response.into_inner());
                }
                Err(status)
                    if status.code() == Code::Unavailable
                        && (retry == Retry::Unavailable
                            || outcome_of(&status) == Some(WriteOutcome::NotApplied)) =>
                {
                    failures.push(format!("{endpoint}: {}", describe(&status)));
                }
                // tonic reports its own client-side deadline as CANCELLED; say what it is.
                Err(status) if sources(&status).any(|e| e.is::<tonic::TimeoutExpired>()) => {
                    let timeout = self.timeout.unwrap_or_default();
                    let mut status = Status::deadline_exceeded(format!(
                        "{endpoint}: no answer within {timeout:?}"
                    ));
                    if retry == Retry::NotApplied {
                        set_outcome(&mut status, WriteOutcome::Unknown);
                    }
                    // The endpoint that was reached is the one to name and ask next.
                    self.current.store(idx, Ordering::Relaxed);
                    return Err(status.into());
                }
                Err(status) => {
                    self.current.store(idx, Ordering::Relaxed);
                    return Err(status.into());
                }
            }
        }
        let message = if n == 1 {
            failures.remove(0)
        } else {
            format!("no endpoint reachable: {}", failures.join("; "))
        };
        let mut status = Status::unavailable(message);
        if retry == Retry::NotApplied {
            set_outcome(&mut status, WriteOutcome::NotApplied);
        }
        Err(status.into())
    }

    /// The endpoint (as given) that requests go to first: the one that answered last (with
    /// a result or an error other than unreachable).
    pub fn preferred_endpoint(&self) -> &str {
        &self.channels[self.current.load(Ordering::Relaxed) % self.channels.len()].0
    }

    /// Makes the endpoint after the preferred one the first to try (e.g. once a watch
    /// stream from the preferred one broke); the others follow in order, the old one last.
    pub fn prefer_next_endpoint(&self) {
        let next = (self.current.load(Ordering::Relaxed) + 1) % self.channels.len();
        self.current.store(next, Ordering::Relaxed);
    }

    /// The endpoints, as given (empty ones left out).
    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        self.channels.iter().map(|(e, _)| e.as_str())
    }

    fn kv(channel: Channel) -> KvClient<Channel> {
        KvClient::new(channel).max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
    }

    fn lease(channel: Channel) -> LeaseClient<Channel> {
        LeaseClient::new(channel).max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
    }

    fn cluster(channel: Channel) -> ClusterClient<Channel> {
        ClusterClient::new(channel).max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
    }

    /// Sets one key.
    pub async fn put(&self, req: PutRequest) -> Result<PutResponse> {
        self.write(req, |ch, r| async move { Self::kv(ch).put(r).await })
            .await
    }

    /// Reads one key.
    pub async fn get(&self, req: GetRequest) -> Result<GetResponse> {
        self.call(req, |ch, r| async move { Self::kv(ch).get(r).await })
            .await
    }

    /// Deletes one key, a range or a prefix.
    pub async fn delete(&self, req: DeleteRequest) -> Result<DeleteResponse> {
        self.write(req, |ch, r| async move { Self::kv(ch).delete(r).await })
            .await
    }

    /// Lists one page of keys; follow `more`/`next_start` for the rest.
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        self.call(req, |ch, r| async move { Self::kv(ch).range(r).await })
            .await
    }

    /// Runs a transaction: a [`TxnRequest`], or a [`Txn`] built step by step.
    pub async fn txn(&self, req: impl Into<TxnRequest>) -> Result<TxnResponse> {
        let req = req.into();
        self.write(req, |ch, r| async move { Self::kv(ch).txn(r).await })
            .await
    }

    /// Starts a watch. The first message has `created = true`; the stream then yields events
    /// until the server ends it or the stream is dropped. Endpoint failover only happens
    /// while the watch is being established; to resume after the stream ended with an error
    /// (e.g. `UNAVAILABLE`: the member is shutting down), call
    /// [`Client::prefer_next_endpoint`] and watch again from the revision after the last
    /// event received (all events of one revision come in one message), as `ordkv watch`
    /// does.
    pub async fn watch(&self, req: WatchRequest) -> Result<WatchStream> {
        let stream = self
            .call(req, |ch, r| async move { Self::kv(ch).watch(r).await })
            .await?;
        Ok(stream.map(|item| item.map_err(Error::from)).boxed())
    }

    /// Deletes `key`; returns how many keys were deleted (0 or 1).
    pub async fn delete_key(&self, key: impl Into<Bytes>) -> Result<u64> {
        Ok(self.delete(ops::delete_key(key)).await?.deleted)
    }

    /// Deletes every key that starts with `prefix`; returns how many.
    pub async fn delete_prefix(&self, prefix: impl Into<Bytes>) -> Result<u64> {
        Ok(self.delete(ops::delete_prefix(prefix)).await?.deleted)
    }

    /// Reads up to `limit` keys that start with `prefix` (0: the server's maximum), in key
    /// order, linearizably. While `more`, scan on from `next_start` with [`Client::range`].
    pub async fn scan_prefix(&self, prefix: impl Into<Bytes>, limit: u64) -> Result<RangeResponse> {
        self.range(ops::scan_prefix(prefix, limit)).await
    }

    /// Puts `new` at `key` only if its value is `expected` (`None`: only if `key` does not
    /// exist). Returns whether it did.
    pub async fn compare_and_swap(
        &self,
        key: impl Into<Bytes>,
        expected: Option<Bytes>,
        new: impl Into<Bytes>,
    ) -> Result<bool> {
        Ok(self
            .txn(ops::compare_and_swap(key, expected, new))
            .await?
            .succeeded)
    }

    /// Watches `key` from now on (see [`Client::watch`] for a start revision).
    pub async fn watch_key(&self, key: impl Into<Bytes>) -> Result<WatchStream> {
        self.watch(ops::watch_key(key)).await
    }

    /// Watches every key that starts with `prefix`, from now on.
    pub async fn watch_prefix(&self, prefix: impl Into<Bytes>) -> Result<WatchStream> {
        self.watch(ops::watch_prefix(prefix)).await
    }

    /// Discards watch history older than `req.revision`.
    pub async fn compact(&self, req: CompactRequest) -> Result<CompactResponse> {
        self.write(req, |ch, r| async move { Self::kv(ch).compact(r).await })
            .await
    }

    /// Grants a lease of `req.ttl` seconds (`req.id = 0`: the cluster picks the id). A TTL
    /// below the cluster's minimum is raised, and `ttl_raised` says so.
    pub async fn lease_grant(&self, req: LeaseGrantRequest) -> Result<LeaseGrantResponse> {
        self.write(
            req,
            |ch, r| async move { Self::lease(ch).lease_grant(r).await },
        )
        .await
    }

    /// Revokes lease `id` and deletes its keys (`NOT_FOUND` if there is no such lease).
    pub async fn lease_revoke(&self, id: u64) -> Result<LeaseRevokeResponse> {
        self.write(LeaseRevokeRequest { id }, |ch, r| async move {
            Self::lease(ch).lease_revoke(r).await
        })
        .await
    }

    /// Keeps lease `id` alive once: its countdown restarts from its full TTL, which the
    /// answer carries (`ttl = 0`: the lease is gone for good). Safe to repeat, so it moves on
    /// to the next endpoint on `UNAVAILABLE`. For a lease kept alive in the background, see
    /// [`Session`].
    pub async fn lease_keep_alive(&self, id: u64) -> Result<LeaseKeepAliveResponse> {
        self.call(LeaseKeepAliveRequest { id }, |ch, r| async move {
            let (metadata, extensions, message) = r.into_parts();
            let one = futures::stream::iter([message]);
            let request = tonic::Request::from_parts(metadata, extensions, one);
            let mut answers = Self::lease(ch)
                .lease_keep_alive(request)
                .await?
                .into_inner();
            match answers.message().await? {
                Some(answer) => Ok(tonic::Response::new(answer)),
                None => Err(Status::unavailable(
                    "the keepalive stream ended without an answer",
                )),
            }
        })
        .await
    }

    /// A lease's granted TTL, the seconds it has left, and its keys when `req.keys`.
    pub async fn lease_time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse> {
        self.call(req, |ch, r| async move {
            Self::lease(ch).lease_time_to_live(r).await
        })
        .await
    }

    /// Every live lease.
    pub async fn lease_leases(&self) -> Result<LeaseLeasesResponse> {
        self.call(LeaseLeasesRequest {}, |ch, r| async move {
            Self::lease(ch).lease_leases(r).await
        })
        .await
    }

    /// A consistent backup of the answering member: its snapshot file's bytes, in order.
    pub async fn backup(&self) -> Result<BoxStream<'static, Result<Bytes>>> {
        let stream = self
            .call(BackupRequest {}, |ch, r| async move {
                Self::cluster(ch).backup(r).await
            })
            .await?;
        Ok(stream
            .map(|item| item.map(|c| c.data).map_err(Error::from))
            .boxed())
    }

    /// Describes the cluster as the answering member sees it.
    pub async fn status(&self) -> Result<StatusResponse> {
        self.call(StatusRequest {}, |ch, r| async move {
            Self::cluster(ch).status(r).await
        })
        .await
    }

    /// Removes the member with `ordinal` (runs on the leader; a follower's answer naming
    /// the leader is followed). Retried elsewhere only when it was not applied.
    pub async fn remove_member(&self, ordinal: u32) -> Result<MemberChangeResponse> {
        self.on_leader(RemoveMemberRequest { ordinal }, |ch, r| async move {
            Self::cluster(ch).remove_member(r).await
        })
        .await
    }

    /// Hands leadership to the voter with `ordinal` (runs on the leader).
    pub async fn transfer_leader(&self, ordinal: u32) -> Result<MemberChangeResponse> {
        self.on_leader(TransferLeaderRequest { ordinal }, |ch, r| async move {
            Self::cluster(ch).transfer_leader(r).await
        })
        .await
    }

    /// Calls `f` as a write here, or at the leader a follower names in its refusal (then,
    /// if the leader's address cannot be reached from here, at each given endpoint until
    /// one is the leader).
    async fn on_leader<T, R, F, Fut>(&self, req: T, f: F) -> Result<R>
    where
        T: Clone,
        F: Fn(Channel, tonic::Request<T>) -> Fut + Clone,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let first = self.write(req.clone(), f.clone()).await;
        let Err(e) = &first else { return first };
        let Some(leader) = e.leader().map(str::to_string) else {
            return first;
        };
        let mut candidates = vec![leader];
        candidates.extend(self.endpoints().map(str::to_string));
        let mut last = first;
        for addr in candidates {
            let at = self.connect_to(&addr).await?;
            match at.write(req.clone(), f.clone()).await {
                Ok(r) => return Ok(r),
                // A follower again, or unreachable from here (nothing applied): go on.
                Err(e)
                    if e.leader().is_some()
                        || e.write_outcome() == Some(WriteOutcome::NotApplied) =>
                {
                    last = Err(e)
                }
                Err(e) => return Err(e),
            }
        }
        last
    }

    /// Sets `key` to `value` and returns the revision the write created.
    pub async fn put_value(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<u64> {
        let resp = self
            .put(PutRequest {
                key: key.into(),
                value: value.into(),
                prev_kv: false,
                lease: 0,
            })
            .await?;
        Ok(resp.header.map_or(0, |h| h.revision))
    }

    /// Reads `key` (linearizable) and returns its value, or `None` when it does not exist.
    pub async fn get_value(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>> {
        let resp = self
            .get(GetRequest {
                key: key.into(),
                ..Default::default()
            })
            .await?;
        Ok(resp.kv.map(|kv| kv.value))
    }
}

/// Which failures move a call on to the next endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Every `UNAVAILABLE` (reads).
    Unavailable,
    /// Only writes that were not applied.
    NotApplied,
}

/// The outcome a status carries in its `ordkv-write-outcome` metadata.
fn outcome_of(status: &Status) -> Option<WriteOutcome> {
    match status
        .metadata()
        .get(ordkv_proto::WRITE_OUTCOME_METADATA_KEY)?
        .to_str()
        .ok()?
    {
        ordkv_proto::NOT_APPLIED => Some(WriteOutcome::NotApplied),
        ordkv_proto::OUTCOME_UNKNOWN => Some(WriteOutcome::Unknown),
        _ => None,
    }
}

fn set_outcome(status: &mut Status, outcome: WriteOutcome) {
    let value = match outcome {
        WriteOutcome::NotApplied => ordkv_proto::NOT_APPLIED,
        WriteOutcome::Unknown => ordkv_proto::OUTCOME_UNKNOWN,
    };
    status.metadata_mut().insert(
        ordkv_proto::WRITE_OUTCOME_METADATA_KEY,
        tonic::metadata::MetadataValue::from_static(value),
    );
}

/// A failed write's status with its outcome said: the server's, else this client's own
/// (not applied only when no connection could be made). Statuses that refuse the request
/// itself (`INVALID_ARGUMENT`, `OUT_OF_RANGE`...) are left as they are.
fn with_outcome(mut status: Status) -> Status {
    if outcome_of(&status).is_some() {
        return status;
    }
    let refused = matches!(
        status.code(),
        Code::InvalidArgument
            | Code::OutOfRange
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::ResourceExhausted
            | Code::Unimplemented
    );
    if !refused {
        // A refused connection, or an HTTP/2 stream the server refused (REFUSED_STREAM, e.g.
        // a member shutting down): HTTP/2 guarantees such a request was not processed.
        let never_sent = sources(&status).any(|e| {
            let text = e.to_string();
            e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
                || text.starts_with("tcp connect error")
                // TLS refused before any request was sent.
                || text.contains("invalid peer certificate")
                || text.contains("received fatal alert")
                || text.contains("refused stream before processing any application logic")
        });
        let outcome = if never_sent {
            WriteOutcome::NotApplied
        } else {
            WriteOutcome::Unknown
        };
        set_outcome(&mut status, outcome);
    }
    status
}

/// What an endpoint that answered without ordkv's client API is, and what to use instead:
/// an HTTP server (the HTTP port, 7381 by default) answers without a `grpc-status`; a gRPC
/// server without the `ordkv.v1` services (the peer port, 7380) answers `UNIMPLEMENTED`
/// with no message.
fn wrong_server(status: &Status) -> Option<String> {
    if status.code() != Code::Unimplemented {
        return None;
    }
    let message = status.message();
    if let Some(http) =
        message.strip_prefix("grpc-status header missing, mapped from HTTP status code ")
    {
        return Some(format!(
            "answered as an HTTP server (HTTP status {http}), not ordkv's gRPC client port; \
             the client port is {DEFAULT_CLIENT_PORT} by default (7381 is the HTTP port)"
        ));
    }
    message.is_empty().then(|| {
        format!(
            "is a gRPC server without ordkv's client API (the peer port, 7380 by default?); \
             the client port is {DEFAULT_CLIENT_PORT} by default"
        )
    })
}

/// The source chain of a status (transport errors keep their cause there).
fn sources(status: &Status) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(std::error::Error::source(status), |e| e.source())
}

/// A status message followed by the messages of its source chain.
/// What went wrong in a TLS handshake, with what to do, or `None` if `status` is not one.
/// Only handshake errors count: a connection reset after a request was sent leaves its
/// outcome unknown, TLS or not.
fn tls_failure(status: &Status) -> Option<String> {
    let text = describe(status);
    let has = |words: &[&str]| words.iter().any(|w| text.contains(w));
    let hint = if has(&["CertificateRequired"]) {
        "the server requires a client certificate: pass --cert and --key (signed by its CA)"
    } else if has(&["invalid peer certificate"]) {
        "the server's certificate is not one --cacert vouches for (another CA, expired, or not \
         valid for this endpoint's name or IP)"
    } else if has(&[
        "BadCertificate",
        "UnknownCA",
        "CertificateUnknown",
        "CertificateExpired",
    ]) {
        "the server refused this client's certificate (--cert): is it signed by the server's CA \
         and unexpired?"
    } else if has(&["InvalidContentType", "corrupt message", "InvalidMessage"]) {
        "the endpoint does not speak TLS: use http:// or leave out --cacert"
    } else {
        return None;
    };
    Some(format!("{text}; {hint}"))
}

fn describe(status: &Status) -> String {
    let mut out = status.message().to_string();
    for err in sources(status) {
        let text = err.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_handshake_errors_count_as_tls_failures() {
        let refused =
            Status::unavailable("transport error: invalid peer certificate: UnknownIssuer");
        let why = tls_failure(&refused).unwrap();
        assert!(why.contains("--cacert"), "{why}");
        let not_tls = Status::unknown("transport error: InvalidContentType");
        assert!(
            tls_failure(&not_tls)
                .unwrap()
                .contains("does not speak TLS")
        );
        // After a request went out, a reset leaves its outcome unknown.
        let reset = Status::unknown("transport error: connection reset by peer");
        assert_eq!(tls_failure(&reset), None);
    }

    #[tokio::test]
    async fn connect_validates_endpoints() {
        assert!(matches!(
            Client::connect(&[]).await,
            Err(Error::NoEndpoints)
        ));
        assert!(matches!(
            Client::connect(&[" ".to_string()]).await,
            Err(Error::NoEndpoints)
        ));
        let c = Client::connect(&["127.0.0.1:1".into(), "http://localhost:2".into()])
            .await
            .unwrap();
        assert_eq!(c.channels.len(), 2);
        assert!(matches!(
            Client::connect(&["bad host:1".into()]).await,
            Err(Error::InvalidEndpoint { .. })
        ));
    }

    #[tokio::test]
    async fn an_endpoint_without_a_port_is_refused_with_the_default_port() {
        for given in ["127.0.0.1", "http://kv-0.kv"] {
            let err = Client::connect(&[given.to_string()]).await.unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, Error::InvalidEndpoint { .. }), "{text}");
            assert!(text.contains("no port"), "{text}");
            assert!(text.contains(":7379"), "{text}");
        }
        assert!(Client::connect(&["kv-0.kv:7379".into()]).await.is_ok());
    }

    #[test]
    fn a_message_that_repeats_its_code_is_shown_once() {
        let err = Error::from(Status::invalid_argument("invalid argument: key is empty"));
        assert_eq!(err.to_string(), "INVALID_ARGUMENT: key is empty");
        let err = Error::from(Status::deadline_exceeded("Deadline Exceeded: waited"));
        assert_eq!(err.to_string(), "DEADLINE_EXCEEDED: waited");
        // Other words stay, including an outcome that is not the code.
        let err = Error::from(Status::unavailable("outcome unknown: leader changed"));
        assert_eq!(
            err.to_string(),
            "UNAVAILABLE: outcome unknown: leader changed"
        );
        let err = Error::from(Status::unavailable("unavailable"));
        assert_eq!(err.to_string(), "UNAVAILABLE: unavailable");
    }

    #[test]
    fn wrong_servers_are_named() {
        let http =
            Status::unimplemented("grpc-status header missing, mapped from HTTP status code 404");
        let why = wrong_server(&http).unwrap();
        assert!(why.contains("HTTP server (HTTP status 404)"), "{why}");
        assert!(why.contains("client port is 7379"), "{why}");
        let peer = wrong_server(&Status::unimplemented("")).unwrap();
        assert!(peer.contains("peer port"), "{peer}");
        assert_eq!(wrong_server(&Status::unimplemented("watch")), None);
        assert_eq!(wrong_server(&Status::unavailable("")), None);
    }

    #[tokio::test]
    async fn a_grpc_server_without_the_kv_service_is_skipped_and_named() {
        // A gRPC server with no ordkv service (like the peer port), then a working one.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let other = listener.local_addr().unwrap().to_string();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(tonic::service::Routes::default())
                .serve_with_incoming(incoming),
        );
        let (good, calls) = fake(|| Ok(()), Duration::ZERO).await;
        let c = Client::connect(&[other.clone(), good]).await.unwrap();
        c.put_value("k", "v").await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let alone = Client::connect(std::slice::from_ref(&other)).await.unwrap();
        let err = alone.put_value("k", "v").await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("{other} is a gRPC server without")),
            "{text}"
        );
        assert_eq!(
            err.write_outcome(),
            Some(WriteOutcome::NotApplied),
            "{text}"
        );
    }

    #[test]
    fn status_display_and_leader() {
        let err = Error::from(Status::invalid_argument("key is empty"));
        assert_eq!(err.to_string(), "INVALID_ARGUMENT: key is empty");
        assert_eq!(err.code(), Some(Code::InvalidArgument));
        assert_eq!(err.leader(), None);

        let mut status = Status::failed_precondition("read-only replica");
        status
            .metadata_mut()
            .insert(LEADER_METADATA_KEY, "kv-0.kv:7379".parse().unwrap());
        assert_eq!(Error::from(status).leader(), Some("kv-0.kv:7379"));
    }

    #[tokio::test]
    async fn unreachable_endpoints_fail_over_then_report_all() {
        // Port 1 on loopback refuses connections.
        let c = Client::connect(&["127.0.0.1:1".into(), "127.0.0.1:1".into()])
            .await
            .unwrap()
            .with_timeout(Some(Duration::from_secs(2)));
        let err = c.get_value("k").await.unwrap_err();
        assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
        assert!(err.to_string().contains("no endpoint reachable"), "{err}");
    }

    /// A KV server whose Txn and Put count each call (as applied) and then answer `answer`.
    struct FakeKv {
        calls: Arc<AtomicUsize>,
        answer: fn() -> Result<(), Status>,
        delay: Duration,
    }

    use ordkv_proto::v1::kv_server::{Kv, KvServer};
    use std::sync::Arc;

    impl FakeKv {
        async fn apply(&self) -> Result<(), Status> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            (self.answer)()
        }
    }

    #[tonic::async_trait]
    impl Kv for FakeKv {
        async fn put(
            &self,
            _: tonic::Request<PutRequest>,
        ) -> Result<tonic::Response<PutResponse>, Status> {
            self.apply().await?;
            Ok(tonic::Response::new(PutResponse::default()))
        }
        async fn get(
            &self,
            _: tonic::Request<GetRequest>,
        ) -> Result<tonic::Response<GetResponse>, Status> {
            Err(Status::unimplemented("get"))
        }
        async fn delete(
            &self,
            _: tonic::Request<DeleteRequest>,
        ) -> Result<tonic::Response<DeleteResponse>, Status> {
            Err(Status::unimplemented("delete"))
        }
        async fn range(
            &self,
            _: tonic::Request<RangeRequest>,
        ) -> Result<tonic::Response<RangeResponse>, Status> {
            Err(Status::unimplemented("range"))
        }
        async fn txn(
            &self,
            _: tonic::Request<TxnRequest>,
        ) -> Result<tonic::Response<TxnResponse>, Status> {
            self.apply().await?;
            // What a retry sees after a first attempt committed: the compare fails now.
            Ok(tonic::Response::new(TxnResponse {
                succeeded: false,
                ..Default::default()
            }))
        }
        type WatchStream = BoxStream<'static, Result<WatchResponse, Status>>;
        async fn watch(
            &self,
            _: tonic::Request<WatchRequest>,
        ) -> Result<tonic::Response<Self::WatchStream>, Status> {
            Err(Status::unimplemented("watch"))
        }
        async fn compact(
            &self,
            _: tonic::Request<CompactRequest>,
        ) -> Result<tonic::Response<CompactResponse>, Status> {
            Err(Status::unimplemented("compact"))
        }
    }

    /// Serves a [`FakeKv`] on a free loopback port: `(endpoint, calls)`.
    async fn fake(
        answer: fn() -> Result<(), Status>,
        delay: Duration,
    ) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = listener.local_addr().unwrap().to_string();
        let calls = Arc::new(AtomicUsize::new(0));
        let service = KvServer::new(FakeKv {
            calls: calls.clone(),
            answer,
            delay,
        });
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        (endpoint, calls)
    }

    fn unavailable_with(outcome: WriteOutcome) -> Status {
        let mut status = Status::unavailable("the leader changed");
        set_outcome(&mut status, outcome);
        status
    }

    #[tokio::test]
    async fn a_write_whose_outcome_is_unknown_is_not_retried_elsewhere() {
        let (first, first_calls) = fake(
            || Err(unavailable_with(WriteOutcome::Unknown)),
            Duration::ZERO,
        )
        .await;
        let (second, second_calls) = fake(|| Ok(()), Duration::ZERO).await;
        let c = Client::connect(&[first, second]).await.unwrap();
        let err = c.txn(TxnRequest::default()).await.unwrap_err();
        assert_eq!(err.write_outcome(), Some(WriteOutcome::Unknown), "{err}");
        assert_eq!(err.code(), Some(Code::Unavailable));
        // Retried on the second endpoint, the compare-and-swap would have reported a failed
        // compare although its first attempt may have committed.
        assert_eq!(first_calls.load(Ordering::SeqCst), 1);
        assert_eq!(second_calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_write_that_was_not_applied_moves_on_to_the_next_endpoint() {
        let (first, first_calls) = fake(
            || Err(unavailable_with(WriteOutcome::NotApplied)),
            Duration::ZERO,
        )
        .await;
        let (second, second_calls) = fake(|| Ok(()), Duration::ZERO).await;
        let c = Client::connect(&["127.0.0.1:1".into(), first, second])
            .await
            .unwrap();
        c.put_value("k", "v").await.unwrap();
        assert_eq!(first_calls.load(Ordering::SeqCst), 1);
        assert_eq!(second_calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_write_without_an_answer_in_time_is_unknown() {
        let (first, first_calls) = fake(|| Ok(()), Duration::from_secs(5)).await;
        let (second, second_calls) = fake(|| Ok(()), Duration::ZERO).await;
        let c = Client::connect(&[first, second])
            .await
            .unwrap()
            .with_timeout(Some(Duration::from_millis(300)));
        let err = c.put_value("k", "v").await.unwrap_err();
        assert_eq!(err.write_outcome(), Some(WriteOutcome::Unknown), "{err}");
        assert_eq!(first_calls.load(Ordering::SeqCst), 1);
        assert_eq!(second_calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn the_endpoint_that_answered_an_error_is_the_preferred_one() {
        let (slow, _) = fake(|| Ok(()), Duration::from_secs(5)).await;
        let c = Client::connect(&["127.0.0.1:1".into(), slow.clone()])
            .await
            .unwrap()
            .with_timeout(Some(Duration::from_millis(200)));
        assert_eq!(c.preferred_endpoint(), "127.0.0.1:1");
        let err = c.put_value("k", "v").await.unwrap_err();
        assert_eq!(err.code(), Some(Code::DeadlineExceeded), "{err}");
        assert_eq!(c.preferred_endpoint(), slow);
        c.prefer_next_endpoint();
        assert_eq!(c.preferred_endpoint(), "127.0.0.1:1");
    }

    #[test]
    fn a_refused_stream_was_not_applied() {
        let refused = Status::from_error(Box::new(std::io::Error::other(
            "stream error received: refused stream before processing any application logic",
        )));
        assert_eq!(
            outcome_of(&with_outcome(refused)),
            Some(WriteOutcome::NotApplied)
        );
        let reset = Status::from_error(Box::new(std::io::Error::other("connection reset")));
        assert_eq!(
            outcome_of(&with_outcome(reset)),
            Some(WriteOutcome::Unknown)
        );
    }

    #[tokio::test]
    async fn a_write_no_endpoint_accepted_was_not_applied() {
        let c = Client::connect(&["127.0.0.1:1".into()]).await.unwrap();
        let err = c.put_value("k", "v").await.unwrap_err();
        assert_eq!(err.write_outcome(), Some(WriteOutcome::NotApplied), "{err}");
    }
}
