//! Prometheus metrics: one recorder per process, request counters and latency histograms
//! recorded by the handlers, node gauges refreshed at scrape time.
//!
//! The recorder is installed as the global `metrics` recorder the first time any server
//! starts, so metrics recorded elsewhere in the process (e.g. by the node) show up too. If the
//! embedding application already installed its own recorder, ordkv keeps a private one and
//! records its own metrics into it; `/metrics` then shows ordkv's request and node metrics
//! only, and the storage sync and peer append metrics (recorded on the store's flusher threads
//! and the replication streams) go to the application's recorder.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Counter: finished requests, labels `rpc` and `code`.
pub const REQUESTS_TOTAL: &str = "ordkv_requests_total";
/// Histogram: request latency in seconds, label `rpc`.
pub const REQUEST_DURATION: &str = "ordkv_request_duration_seconds";

/// Latency buckets, 250 µs to 10 s.
const DURATION_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Sync (write + fdatasync) and peer append buckets, 50 µs to 1 s: a healthy SSD syncs in
/// well under 10 ms.
const SYNC_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// The node gauges: name, help, and how to read them from a status.
type Gauge = (&'static str, &'static str, fn(&ordkv::NodeStatus) -> f64);
const GAUGES: &[Gauge] = &[
    ("ordkv_raft_term", "Current Raft term.", |s| s.term as f64),
    (
        "ordkv_raft_commit_index",
        "Last committed Raft log index.",
        |s| s.commit_index as f64,
    ),
    (
        "ordkv_raft_applied_index",
        "Last applied Raft log index.",
        |s| s.applied_index as f64,
    ),
    (
        "ordkv_raft_last_log_index",
        "Last Raft log index on this node.",
        |s| s.last_log_index as f64,
    ),
    ("ordkv_revision", "Current store revision.", |s| {
        s.revision as f64
    }),
    (
        "ordkv_compact_revision",
        "Oldest revision kept in watch history.",
        |s| s.compact_revision as f64,
    ),
    (
        "ordkv_is_leader",
        "1 when this node is the Raft leader.",
        |s| f64::from(u8::from(s.is_leader)),
    ),
    ("ordkv_db_size_bytes", "Size of the store on disk.", |s| {
        s.db_size_bytes as f64
    }),
];

struct Exporter {
    handle: PrometheusHandle,
    /// Set when another global recorder was installed first: ordkv records into this one.
    private: Option<PrometheusRecorder>,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

fn exporter() -> &'static Exporter {
    EXPORTER.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.to_string()), DURATION_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(ordkv::SYNC_DURATION.to_string()),
                    SYNC_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(ordkv::PEER_APPEND_DURATION.to_string()),
                    SYNC_BUCKETS,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(ordkv::LEASE_REVOKE_DELAY.to_string()),
                    DURATION_BUCKETS,
                )
            })
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        let private = match metrics::set_global_recorder(recorder) {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!(
                    "a global metrics recorder is already installed; /metrics shows ordkv's own metrics only"
                );
                Some(e.into_inner())
            }
        };
        let exporter = Exporter { handle, private };
        with_recorder_of(&exporter, describe);
        exporter
    })
}

fn with_recorder_of<T>(exporter: &Exporter, f: impl FnOnce() -> T) -> T {
    match &exporter.private {
        Some(recorder) => metrics::with_local_recorder(recorder, f),
        None => f(),
    }
}

fn with_recorder<T>(f: impl FnOnce() -> T) -> T {
    with_recorder_of(exporter(), f)
}

fn describe() {
    metrics::describe_counter!(
        REQUESTS_TOTAL,
        "Client requests served, by RPC and gRPC code."
    );
    metrics::describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Client request latency, by RPC."
    );
    metrics::describe_histogram!(
        ordkv::SYNC_DURATION,
        metrics::Unit::Seconds,
        "Time per storage sync (write + fdatasync), by file: wal (the Raft log) or db (sled)."
    );
    metrics::describe_counter!(
        ordkv::SYNC_WAITERS,
        "Writes made durable, by file; divided by the syncs, how many one sync serves."
    );
    metrics::describe_histogram!(
        ordkv::PEER_APPEND_DURATION,
        metrics::Unit::Seconds,
        "Time from sending an append to a peer until its answer (round trip plus the peer's log sync), by peer."
    );
    metrics::describe_counter!(
        ordkv::PEER_ERRORS,
        "Failed Raft calls to a peer, by peer (the log says once when a peer stops answering)."
    );
    metrics::describe_counter!(
        ordkv::REMOVED_BY_INTENT,
        "Members the leader removed because the StatefulSet was scaled below their ordinal."
    );
    metrics::describe_gauge!(
        ordkv::NO_SPACE_ALARM,
        "1 while this member refuses writes that add data (over --quota-bytes, or under --min-free-bytes free)."
    );
    metrics::describe_gauge!(ordkv::LEASES_LIVE, "Leases in this member's state.");
    metrics::describe_counter!(
        ordkv::LEASE_EXPIRIES,
        "Leases this member, as the leader, ended because their TTL ran out."
    );
    metrics::describe_counter!(
        ordkv::LEASE_KEEPALIVES,
        "Lease keepalives this member, as the leader, acknowledged (its rate: keepalives per second)."
    );
    metrics::describe_histogram!(
        ordkv::LEASE_REVOKE_DELAY,
        metrics::Unit::Seconds,
        "From a lease's deadline until the leader applied its expiry (how late leases end)."
    );
    for (name, help, _) in GAUGES {
        metrics::describe_gauge!(*name, *help);
    }
}

/// Installs the recorder if no server did yet (idempotent).
pub(crate) fn init() {
    exporter();
}

/// Counts one finished request and records its latency.
pub(crate) fn record_request(rpc: &'static str, code: tonic::Code, elapsed: Duration) {
    with_recorder(|| {
        metrics::counter!(REQUESTS_TOTAL, "rpc" => rpc, "code" => crate::status::code_name(code))
            .increment(1);
        metrics::histogram!(REQUEST_DURATION, "rpc" => rpc).record(elapsed.as_secs_f64());
    });
}

/// Sets the node gauges from `status`, and the certificate's expiry from `tls`.
pub(crate) fn refresh_gauges(status: &ordkv::NodeStatus, tls: Option<&ordkv::tls::TlsMaterial>) {
    with_recorder(|| {
        for (name, _, read) in GAUGES {
            metrics::gauge!(*name).set(read(status));
        }
        if let Some(tls) = tls {
            metrics::gauge!(ordkv::tls::TLS_CERT_NOT_AFTER).set(tls.cert_info().not_after as f64);
        }
    });
}

/// The Prometheus text exposition of everything recorded.
pub(crate) fn render() -> String {
    exporter().handle.render()
}

/// Drains histogram buckets so memory stays bounded between scrapes; call periodically.
pub(crate) fn upkeep() {
    exporter().handle.run_upkeep();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_gauges_and_request_metrics() {
        init();
        init(); // a second server in the same process reuses the recorder
        refresh_gauges(
            &ordkv::NodeStatus {
                term: 7,
                commit_index: 42,
                is_leader: true,
                ..Default::default()
            },
            None,
        );
        record_request("Put", tonic::Code::Ok, Duration::from_millis(3));
        record_request(
            "Put",
            tonic::Code::InvalidArgument,
            Duration::from_millis(1),
        );
        let text = render();
        assert!(text.contains("ordkv_raft_term 7"), "{text}");
        assert!(text.contains("ordkv_raft_commit_index 42"), "{text}");
        assert!(text.contains("ordkv_is_leader 1"), "{text}");
        assert!(
            text.contains(r#"ordkv_requests_total{rpc="Put",code="INVALID_ARGUMENT"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"ordkv_request_duration_seconds_bucket{rpc="Put",le="0.005"} 2"#),
            "{text}"
        );
    }
}
