//! The HTTP server for people, probes and scraping: the status page (`/`, `/api/status`,
//! `/api/page`), `/livez`, `/readyz`, `/metrics`, and, only in builds with the
//! `fault-injection` feature and when enabled (tests), `POST /debug/partition?peers=kv-1,kv-2`.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// The routes, serving `node`.
/// The HTTP port's connections, accepted by [`ordkv::listen`], as axum takes them.
pub(crate) struct Incoming {
    pub(crate) conns: tokio_stream::wrappers::ReceiverStream<std::io::Result<ordkv::listen::Conn>>,
    pub(crate) local: std::net::SocketAddr,
}

impl axum::serve::Listener for Incoming {
    type Io = ordkv::listen::Conn;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use futures::StreamExt;
        loop {
            match self.conns.next().await {
                Some(Ok(conn)) => {
                    let remote = conn.info().remote;
                    return (conn, remote);
                }
                Some(Err(_)) => continue,
                // The accept loop never ends while this stream lives.
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// What the HTTP handlers serve from.
#[derive(Clone)]
pub(crate) struct HttpState {
    pub(crate) node: ordkv::Node,
    /// The client port's access control, which the status page describes.
    pub(crate) access: Option<std::sync::Arc<crate::AccessControl>>,
}

impl axum::extract::FromRef<HttpState> for ordkv::Node {
    fn from_ref(state: &HttpState) -> ordkv::Node {
        state.node.clone()
    }
}

pub(crate) fn router(
    state: HttpState,
    #[cfg(feature = "fault-injection")] fault_injection: bool,
) -> Router {
    let router = Router::new()
        .route("/", get(crate::status_page::page))
        .route("/api/status", get(crate::status_page::api_status))
        .route("/api/page", get(crate::status_page::api_page))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    #[cfg(feature = "fault-injection")]
    let router = if fault_injection {
        router.route("/debug/partition", axum::routing::post(partition))
    } else {
        router
    };
    router.with_state(state)
}

#[cfg(feature = "fault-injection")]
#[derive(serde::Deserialize)]
struct PartitionQuery {
    /// Comma-separated member names to cut off; empty heals.
    #[serde(default)]
    peers: String,
}

/// Test fault injection: drop peer traffic to and from the named members.
#[cfg(feature = "fault-injection")]
async fn partition(
    State(node): State<ordkv::Node>,
    axum::extract::Query(q): axum::extract::Query<PartitionQuery>,
) -> (StatusCode, String) {
    let peers: Vec<String> = q
        .peers
        .split(',')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect();
    node.set_partitioned_from(&peers);
    (StatusCode::OK, format!("partitioned from {peers:?}\n"))
}

/// 200 `ok`, or 503 with the fatal error once the node hit one (restart the pod).
async fn livez(State(node): State<ordkv::Node>) -> (StatusCode, String) {
    match node.status().fatal {
        None => (StatusCode::OK, "ok\n".to_string()),
        Some(fatal) => (StatusCode::SERVICE_UNAVAILABLE, format!("fatal: {fatal}\n")),
    }
}

/// 200 `ok` when [`ordkv::Node::is_ready`], else 503 with the reason.
async fn readyz(State(node): State<ordkv::Node>) -> (StatusCode, String) {
    if node.is_ready() {
        return (StatusCode::OK, "ok\n".to_string());
    }
    // Read again for the reason; if the node became ready in between, say so generically.
    let reason = node
        .status()
        .not_ready_reason()
        .unwrap_or_else(|| "not ready".to_string());
    (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n"))
}

/// Prometheus text format, node gauges refreshed first.
async fn metrics(State(node): State<ordkv::Node>) -> impl IntoResponse {
    crate::metrics::refresh_gauges(&node.status(), node.tls());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
}

#[cfg(test)]
mod tests {

    #[test]
    fn readiness_reasons() {
        let ready = ordkv::NodeStatus {
            is_member: true,
            leader_known: true,
            commit_index: 9,
            applied_index: 9,
            leader_commit_index: Some(9),
            ..Default::default()
        };
        assert_eq!(ready.not_ready_reason(), None);
        let leader = ordkv::NodeStatus {
            is_leader: true,
            leader_commit_index: None,
            ..ready.clone()
        };
        assert_eq!(leader.not_ready_reason(), None);
        let cases = [
            (
                ordkv::NodeStatus {
                    is_member: false,
                    ..ready.clone()
                },
                "not a member",
            ),
            (
                ordkv::NodeStatus {
                    leader_known: false,
                    ..ready.clone()
                },
                "no leader",
            ),
            (
                ordkv::NodeStatus {
                    applied_index: 4,
                    ..ready.clone()
                },
                "catching up: applied 4 < commit 9",
            ),
            (
                ordkv::NodeStatus {
                    leader_commit_index: Some(158),
                    ..ready.clone()
                },
                "catching up: applied 9 of the leader's 158",
            ),
            (
                ordkv::NodeStatus {
                    leader_commit_index: None,
                    ..ready.clone()
                },
                "catching up: the leader's commit index is not known yet",
            ),
            (
                ordkv::NodeStatus {
                    fatal: Some("fsync failed".into()),
                    ..ready.clone()
                },
                "fatal: fsync failed",
            ),
        ];
        for (status, reason) in cases {
            assert_eq!(status.not_ready_reason().as_deref(), Some(reason));
        }
    }
}
