//! The status page on the HTTP port: `/` is one self-contained HTML page (no external
//! assets) that draws the cluster and refreshes itself from two JSON documents:
//! `/api/status` (exactly what `ordkv cluster status -o json` prints for this member) and
//! `/api/page` (what only the page shows: recent leader changes, append and sync latency
//! counters, readiness).

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use ordkv_proto::v1::{Role, StatusResponse};
use serde_json::{Map, Value, json};

use crate::http::HttpState;

const PAGE: &str = include_str!("status_page.html");

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Voter => "voter",
        Role::Learner => "learner",
        Role::Unspecified => "unknown",
    }
}

/// `Cluster.Status` as JSON (`ordkv cluster status -o json` and `/api/status`). A member's
/// `applied_index` and `lag` are `null` when the answering member does not know them.
pub fn status_json(s: &StatusResponse) -> Value {
    let members: Vec<Value> = s
        .members
        .iter()
        .map(|m| {
            json!({
                "ordinal": m.ordinal,
                "name": m.name,
                "role": role_name(m.role()),
                "peer_addr": m.peer_addr,
                "client_addr": m.client_addr,
                "applied_index": m.applied_index,
                "reachable": m.reachable,
                "node_id": m.node_id,
                "lag": m.lag,
                "leader": s.leader == Some(m.ordinal),
            })
        })
        .collect();
    json!({
        "cluster_id": s.cluster_id,
        "leader": s.leader,
        "term": s.term,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "revision": s.revision,
        "compact_revision": s.compact_revision,
        "member": s.member,
        "version": s.version,
        "db_size_bytes": s.db_size_bytes,
        "limits": s.limits.as_ref().map(|l| json!({
            "max_key_bytes": l.max_key_bytes,
            "max_value_bytes": l.max_value_bytes,
            "max_txn_ops": l.max_txn_ops,
            "max_range_limit": l.max_range_limit,
            "watch_history_revisions": l.watch_history_revisions,
        })),
        "members": members,
        "statefulset_replicas": s.statefulset_replicas,
        "scale_intent": s.scale_intent,
        "access_control": s.access_control,
    })
}

/// `GET /`.
pub(crate) async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
}

/// `GET /api/status`.
pub(crate) async fn api_status(State(state): State<HttpState>) -> impl IntoResponse {
    match state.node.cluster_status().await {
        Ok(mut status) => {
            status.access_control = crate::cluster_service::access_description(&state.access);
            Json(status_json(&status)).into_response()
        }
        Err(e) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

/// `GET /api/page`.
pub(crate) async fn api_page(State(state): State<HttpState>) -> impl IntoResponse {
    let node = &state.node;
    let status = node.status();
    let changes: Vec<Value> = node
        .leader_changes()
        .into_iter()
        .map(|c| json!({ "at_unix_ms": c.at_unix_ms, "term": c.term, "leader": c.leader }))
        .collect();
    let metrics = crate::metrics::render();
    Json(json!({
        "member": status.member,
        "statefulset": node.identity().set,
        "ready": node.is_ready(),
        "not_ready_reason": status.not_ready_reason(),
        "leader_changes": changes,
        "append_seconds": sum_and_count(&metrics, ordkv::PEER_APPEND_DURATION, "peer"),
        "sync_seconds": sum_and_count(&metrics, ordkv::SYNC_DURATION, "file"),
    }))
}

/// `{label value: {"sum": s, "count": c}}` of histogram `name` in Prometheus text: the page
/// turns two readings into the mean of the time between them.
fn sum_and_count(text: &str, name: &str, label: &str) -> Value {
    let mut out = Map::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (field, rest) = if let Some(r) = rest.strip_prefix("_sum{") {
            ("sum", r)
        } else if let Some(r) = rest.strip_prefix("_count{") {
            ("count", r)
        } else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let key = format!("{label}=\"");
        let Some(at) = labels.find(&key) else {
            continue;
        };
        let start = &labels[at + key.len()..];
        let Some(end) = start.find('"') else { continue };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let entry = out
            .entry(start[..end].to_string())
            .or_insert_with(|| json!({}));
        entry[field] = json!(value);
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_sums_and_counts_are_read_by_label() {
        let text = "\
# TYPE ordkv_peer_append_duration_seconds histogram
ordkv_peer_append_duration_seconds_bucket{peer=\"kv-1\",le=\"0.001\"} 3
ordkv_peer_append_duration_seconds_sum{peer=\"kv-1\"} 0.25
ordkv_peer_append_duration_seconds_count{peer=\"kv-1\"} 10
ordkv_peer_append_duration_seconds_sum{member=\"kv-0\",peer=\"kv-2\"} 1.5
ordkv_peer_append_duration_seconds_count{member=\"kv-0\",peer=\"kv-2\"} 3
ordkv_peer_errors_total{peer=\"kv-1\"} 7
";
        let got = sum_and_count(text, "ordkv_peer_append_duration_seconds", "peer");
        assert_eq!(
            got,
            json!({"kv-1": {"sum": 0.25, "count": 10.0}, "kv-2": {"sum": 1.5, "count": 3.0}})
        );
    }

    #[test]
    fn the_page_is_self_contained_and_small() {
        assert!(PAGE.len() < 24 * 1024, "{} bytes", PAGE.len());
        for external in ["src=", "href=\"", "url(", "@import", "<link"] {
            assert!(!PAGE.contains(external), "the page loads {external}");
        }
    }
}
