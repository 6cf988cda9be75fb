//! The network face of an ordkv node, and the only place that maps [`ordkv::Error`] to a gRPC
//! [`tonic::Status`] (see [`status_from_error`]).
//!
//! [`serve`] runs two servers for one [`ordkv::Node`] until a shutdown future resolves:
//!
//! - **client gRPC** (`--client-addr`, port 7379): `ordkv.v1.KV`, `ordkv.v1.Cluster`, the
//!   standard `grpc.health.v1.Health` (SERVING for `""` and `ordkv.v1.KV` while the node is
//!   ready) and server reflection v1 (so `grpcurl` works without `.proto` files);
//! - **HTTP** (`--http-addr`, port 7381): `/livez`, `/readyz`, `/metrics` (Prometheus).
//!
//! Both accept through [`ordkv::listen`] (connection bounds, setup deadlines, TLS with the
//! node's material when it has some: see [`ordkv::Node::tls`]).
//!
//! Shutdown: health goes NOT_SERVING, both listeners close, open watches end with
//! `UNAVAILABLE`, in-flight calls drain (bounded by the request timeout), then `serve`
//! returns. Malformed messages, unknown methods and garbage bytes are answered or dropped by
//! tonic/hyper per connection; the server keeps serving everyone else.

mod access;
mod cluster_service;
mod config;
mod health;
mod http;
mod kv_service;
mod lease_service;
mod metrics;
mod rpc;
mod status;
mod status_page;

use std::future::IntoFuture;
use std::net::SocketAddr;

use ordkv::listen::{self, ListenConfig};
use ordkv::pb;
use ordkv::tls::ClientAuth;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

pub use access::{AUTH_REFUSED, AUTH_RELOAD_ERRORS, AccessControl, Grant};
pub use cluster_service::ClusterService;
pub use config::{MAX_DECODING_CAP_BYTES, MESSAGE_SLACK_BYTES, ServerConfig, max_decoding_for};
pub use health::HEALTH_SERVICES;
pub use kv_service::{KvService, WatchStream};
pub use lease_service::{KeepAliveStream, LeaseService};
pub use metrics::{REQUEST_DURATION, REQUESTS_TOTAL};
pub use status::{LEADER_METADATA_KEY, code_name, status_from_error};
pub use status_page::status_json;

/// Why the servers could not start or stopped on their own.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr} for the {what}: {error}; choose another address with {flag}")]
    Bind {
        /// What the address is for.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The flag that sets it.
        flag: &'static str,
        /// The OS error.
        error: std::io::Error,
    },
    /// The client gRPC server failed.
    #[error("client gRPC server on {addr} failed: {error}")]
    Grpc {
        /// Its address.
        addr: SocketAddr,
        /// The transport error.
        error: tonic::transport::Error,
    },
    /// The HTTP server failed.
    #[error("HTTP server on {addr} failed: {error}")]
    Http {
        /// Its address.
        addr: SocketAddr,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The access policy or token file cannot be used.
    #[error("access control: {0}")]
    Access(String),
    /// The embedded descriptors for server reflection do not decode (a build problem).
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// A server task panicked or stopped without being asked to.
    #[error("{0}")]
    Stopped(String),
}

/// Binds `config.client_addr` and `config.http_addr`, then runs [`serve_with_listeners`].
pub async fn serve(
    node: ordkv::Node,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let client = bind(config.client_addr, "client gRPC API", "--client-addr").await?;
    let http = bind(config.http_addr, "HTTP health and metrics", "--http-addr").await?;
    serve_with_listeners(node, client, http, config, shutdown).await
}

async fn bind(
    addr: SocketAddr,
    what: &'static str,
    flag: &'static str,
) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| ServeError::Bind {
            what,
            addr,
            flag,
            error,
        })
}

/// The client gRPC server's transport settings. TCP options are set by `ordkv::listen`:
/// tonic ignores its own TCP settings when given an incoming stream.
fn grpc_server(config: &ServerConfig) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(config.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(config.http2_keepalive_timeout))
        .max_concurrent_streams(config.max_concurrent_streams)
        .concurrency_limit_per_connection(config.concurrency_limit_per_connection)
}

/// Runs the client gRPC server on `client` and the HTTP server on `http` (already bound, e.g.
/// to port 0 in tests; the addresses in `config` are not used) until `shutdown` resolves or a
/// server fails. Returns once in-flight requests have drained.
pub async fn serve_with_listeners(
    node: ordkv::Node,
    client: TcpListener,
    http: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    metrics::init();
    let client_addr = client.local_addr().unwrap_or(config.client_addr);
    let http_addr = http.local_addr().unwrap_or(config.http_addr);
    let member = node.identity().name.clone();

    let stopping = CancellationToken::new();
    let access = match &config.auth_policy {
        Some(policy) => {
            let access = AccessControl::load(policy, config.auth_token_file.as_deref())
                .map_err(ServeError::Access)?;
            let access = std::sync::Arc::new(access);
            tracing::info!(node = %member, access_control = %access.describe(), "access control on");
            tokio::spawn(access.clone().watch(stopping.clone()));
            Some(access)
        }
        None => {
            if config.auth_token_file.is_some() {
                tracing::warn!(node = %member, "--auth-token-file without --auth-policy: tokens are not checked");
            }
            tracing::warn!(node = %member, "access control {}", cluster_service::ACCESS_CONTROL_OFF);
            None
        }
    };
    let http_state = http::HttpState {
        node: node.clone(),
        access: access.clone(),
    };
    let ctx = rpc::RpcContext {
        node: node.clone(),
        request_timeout: config.request_timeout,
        shutdown: stopping.clone(),
        access,
    };
    let kv = pb::kv_server::KvServer::new(KvService::new(ctx.clone()))
        .max_decoding_message_size(config.max_decoding_message_bytes);
    let lease = pb::lease_server::LeaseServer::new(LeaseService::new(ctx.clone()));
    let cluster = pb::cluster_server::ClusterServer::new(ClusterService::new(ctx));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    health::set_all(&reporter, ServingStatus::NotServing).await;
    let health_stop = CancellationToken::new();
    let health_task = tokio::spawn(health::run(
        node.clone(),
        reporter.clone(),
        config.health_interval,
        health_stop.clone(),
    ));

    let tls = node.tls().cloned();
    let client_tls = tls
        .as_ref()
        .map(|t| t.server_config(ClientAuth::Optional, &[b"h2"]));
    let http_tls = tls
        .as_ref()
        .filter(|_| !config.http_plaintext)
        .map(|t| t.server_config(ClientAuth::None, &[b"http/1.1"]));
    let client_listen = ListenConfig {
        max_connections: config.max_connections,
        max_per_address: config.max_connections_per_address,
        client_cert_required: config.client_cert_auth,
        ..ListenConfig::grpc("client", client_tls)
    };
    let http_listen = ListenConfig {
        max_connections: 1024,
        max_per_address: 256,
        setup_bytes: listen::HTTP1_SETUP_BYTES,
        // Probes and scrapes send one request at a time; an idle one reconnects cheaply.
        idle_timeout: std::time::Duration::from_secs(10),
        ..ListenConfig::grpc("http", http_tls)
    };
    let grpc = grpc_server(&config)
        .layer(tonic::service::InterceptorLayer::new(
            listen::refuse_plaintext,
        ))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(kv)
        .add_service(lease)
        .add_service(cluster)
        .serve_with_incoming_shutdown(
            listen::incoming(client, client_listen),
            stopping.clone().cancelled_owned(),
        );
    let mut grpc = tokio::spawn(grpc);
    let http_incoming = http::Incoming {
        conns: listen::incoming(http, http_listen),
        local: http_addr,
    };
    let http_server = axum::serve(
        http_incoming,
        http::router(
            http_state,
            #[cfg(feature = "fault-injection")]
            config.fault_injection,
        ),
    )
    .with_graceful_shutdown(stopping.clone().cancelled_owned())
    .into_future();
    let mut http = tokio::spawn(http_server);
    tracing::info!(
        node = %member,
        %client_addr,
        %http_addr,
        tls = tls.is_some(),
        client_cert_auth = tls.is_some() && config.client_cert_auth,
        http_tls = tls.is_some() && !config.http_plaintext,
        "serving"
    );

    enum First<G, H> {
        Shutdown,
        Grpc(G),
        Http(H),
    }
    let first = tokio::select! {
        () = shutdown => First::Shutdown,
        result = &mut grpc => First::Grpc(result),
        result = &mut http => First::Http(result),
    };
    let asked = matches!(first, First::Shutdown);
    if asked {
        tracing::info!(node = %member, "shutting down: NOT_SERVING, draining requests");
    } else {
        tracing::error!(node = %member, "a server stopped on its own; stopping the other");
    }
    health_stop.cancel();
    let _ = health_task.await;
    health::set_all(&reporter, ServingStatus::NotServing).await;
    stopping.cancel();
    let (grpc, http) = match first {
        First::Shutdown => (grpc.await, http.await),
        First::Grpc(g) => (g, http.await),
        First::Http(h) => (grpc.await, h),
    };

    let grpc = match grpc {
        Ok(Ok(())) if asked => Ok(()),
        Ok(Ok(())) => Err(ServeError::Stopped(format!(
            "client gRPC server on {client_addr} stopped unexpectedly"
        ))),
        Ok(Err(error)) => Err(ServeError::Grpc {
            addr: client_addr,
            error,
        }),
        Err(e) => Err(ServeError::Stopped(format!(
            "client gRPC server on {client_addr}: {e}"
        ))),
    };
    let http = match http {
        Ok(Ok(())) if asked => Ok(()),
        Ok(Ok(())) => Err(ServeError::Stopped(format!(
            "HTTP server on {http_addr} stopped unexpectedly"
        ))),
        Ok(Err(error)) => Err(ServeError::Http {
            addr: http_addr,
            error,
        }),
        Err(e) => Err(ServeError::Stopped(format!(
            "HTTP server on {http_addr}: {e}"
        ))),
    };
    tracing::info!(node = %member, "servers stopped");
    grpc.and(http)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bind_errors_name_the_address_and_the_flag() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr, "client gRPC API", "--client-addr")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&addr.to_string()), "{err}");
        assert!(err.contains("--client-addr"), "{err}");
    }

    /// The transport as `serve` sets it up (limited incoming, same settings) survives garbage
    /// bytes and still answers health checks, then stops on the shutdown signal.
    #[tokio::test]
    async fn garbage_bytes_do_not_kill_the_server() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reporter, health_service) = tonic_health::server::health_reporter();
        health::set_all(&reporter, ServingStatus::Serving).await;
        let stop = CancellationToken::new();
        let server = tokio::spawn(
            grpc_server(&ServerConfig::default())
                .add_service(health_service)
                .serve_with_incoming_shutdown(
                    listen::incoming(listener, ListenConfig::grpc("client", None)),
                    stop.clone().cancelled_owned(),
                ),
        );

        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let junk: [&[u8]; 3] = [b"GET / HTTP/1.1\r\n\r\n", &[0xff; 4096], preface];
        for bytes in junk {
            let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
            conn.write_all(bytes).await.unwrap();
            conn.write_all(&[0x00, 0xff, 0x13, 0x37]).await.unwrap();
            let mut sink = Vec::new();
            let read = conn.read_to_end(&mut sink);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), read).await;
        }

        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = HealthClient::new(channel);
        for service in HEALTH_SERVICES {
            let answer = client
                .check(HealthCheckRequest {
                    service: service.to_string(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(answer.status, 1, "{service:?} is not SERVING");
        }
        let unknown = client
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);
        drop(client);

        stop.cancel();
        let stopped = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
        assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
    }

    #[test]
    fn reflection_descriptors_decode() {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .unwrap();
    }
}
