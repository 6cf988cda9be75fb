//! [`ServerConfig`]: listen addresses and the bounds the servers enforce on clients.

use std::net::SocketAddr;
use std::time::Duration;

/// Per-op slack on top of `max_key_bytes + max_value_bytes` when sizing the decoding limit:
/// protobuf framing, `end`/`prefix` keys of deletes, compares.
pub const MESSAGE_SLACK_BYTES: usize = 64 * 1024;

/// The largest request the client port decodes, whatever the limits say. A Txn of
/// `max_txn_ops` full-size puts may exceed it (with the default limits: 128 × ~1 MiB); such a
/// Txn is refused before it reaches the node — split it up. (tonic reports an oversized
/// message as `OUT_OF_RANGE` with "decoded message length too large"; a compacted revision is
/// also `OUT_OF_RANGE`, told apart by its message.) A single
/// Put always fits, since the limit never drops below one full-size op.
pub const MAX_DECODING_CAP_BYTES: usize = 64 * 1024 * 1024;

/// How the client gRPC server and the HTTP server listen and what they allow.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Client gRPC address (`--client-addr`, port 7379).
    pub client_addr: SocketAddr,
    /// HTTP address for `/livez`, `/readyz`, `/metrics` (`--http-addr`, port 7381).
    pub http_addr: SocketAddr,
    /// Largest KV request message decoded; bigger ones fail (`OUT_OF_RANGE`, "too large").
    /// See [`max_decoding_for`].
    pub max_decoding_message_bytes: usize,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` per connection (calls and watches at once).
    pub max_concurrent_streams: u32,
    /// In-flight unary handlers per connection; further requests wait for a slot.
    pub concurrency_limit_per_connection: usize,
    /// Client connections open at once; further connections wait in the accept backlog.
    pub max_connections: usize,
    /// Client connections open at once from one IP address; further ones are closed.
    pub max_connections_per_address: usize,
    /// With TLS on (the node's `tls_dir`): require client certificates from the CA on the
    /// client port (`--client-cert-auth`). Without it, a certificate is verified when given.
    pub client_cert_auth: bool,
    /// With TLS on: serve the HTTP port in plaintext anyway (`--http-plaintext`), for probes
    /// and a Prometheus without TLS settings. It serves health and metrics only.
    pub http_plaintext: bool,
    /// Longest a request may run on the server. A shorter client deadline (`grpc-timeout`)
    /// wins. Expiry answers `DEADLINE_EXCEEDED`. Does not apply to an established watch.
    pub request_timeout: Duration,
    /// HTTP/2 PING interval on idle connections (finds dead peers and half-open sockets).
    pub http2_keepalive_interval: Duration,
    /// How long a PING may stay unanswered before the connection is closed.
    pub http2_keepalive_timeout: Duration,
    /// How often the gRPC health status is refreshed from the node's readiness.
    pub health_interval: Duration,
    /// The access policy (YAML grants by key prefix, `--auth-policy`); `None` admits every
    /// request, as without access control.
    pub auth_policy: Option<std::path::PathBuf>,
    /// Bearer tokens, `token,name` lines (`--auth-token-file`).
    pub auth_token_file: Option<std::path::PathBuf>,
    /// Serve `POST /debug/partition` (tests only: it cuts this member off from peers).
    #[cfg(feature = "fault-injection")]
    pub fault_injection: bool,
}

impl ServerConfig {
    /// Defaults for the given addresses, with the decoding limit derived from `limits`.
    pub fn new(client_addr: SocketAddr, http_addr: SocketAddr, limits: &ordkv::Limits) -> Self {
        ServerConfig {
            client_addr,
            http_addr,
            max_decoding_message_bytes: max_decoding_for(limits),
            max_concurrent_streams: 1024,
            concurrency_limit_per_connection: 256,
            max_connections: 4096,
            max_connections_per_address: 1024,
            client_cert_auth: false,
            http_plaintext: false,
            request_timeout: Duration::from_secs(30),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(20),
            health_interval: Duration::from_secs(1),
            auth_policy: None,
            auth_token_file: None,
            #[cfg(feature = "fault-injection")]
            fault_injection: false,
        }
    }
}

impl Default for ServerConfig {
    /// `127.0.0.1:7379` and `127.0.0.1:7381` with the default node limits.
    fn default() -> Self {
        ServerConfig::new(
            SocketAddr::from(([127, 0, 0, 1], 7379)),
            SocketAddr::from(([127, 0, 0, 1], 7381)),
            &ordkv::Limits::default(),
        )
    }
}

/// The decoding limit for a node's limits: room for `max_txn_ops` ops of
/// `max_key_bytes + max_value_bytes + 64 KiB`, capped at [`MAX_DECODING_CAP_BYTES`] but never
/// below one such op (so a maximal Put always fits).
pub fn max_decoding_for(limits: &ordkv::Limits) -> usize {
    let per_op = limits
        .max_key_bytes
        .saturating_add(limits.max_value_bytes)
        .saturating_add(MESSAGE_SLACK_BYTES);
    per_op
        .saturating_mul(limits.max_txn_ops.max(1))
        .min(MAX_DECODING_CAP_BYTES)
        .max(per_op)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_limit_is_bounded_and_fits_one_put() {
        let defaults = ordkv::Limits::default();
        assert_eq!(max_decoding_for(&defaults), MAX_DECODING_CAP_BYTES);

        let small = ordkv::Limits {
            max_key_bytes: 100,
            max_value_bytes: 1000,
            max_txn_ops: 4,
            max_range_limit: 10,
        };
        assert_eq!(max_decoding_for(&small), 4 * (1100 + MESSAGE_SLACK_BYTES));

        let huge = ordkv::Limits {
            max_value_bytes: 64 * 1024 * 1024,
            ..defaults
        };
        let one_put = huge.max_key_bytes + huge.max_value_bytes + MESSAGE_SLACK_BYTES;
        assert_eq!(max_decoding_for(&huge), one_put);
    }
}
