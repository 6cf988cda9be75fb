//! The standard `grpc.health.v1` service, kept in step with the node's readiness.

use std::time::Duration;

use ordkv::pb;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The service names whose health is reported: the whole server (`""`) and the KV API.
pub const HEALTH_SERVICES: [&str; 2] = ["", pb::kv_server::SERVICE_NAME];

/// Sets every reported service to `status`.
pub(crate) async fn set_all(reporter: &HealthReporter, status: ServingStatus) {
    for name in HEALTH_SERVICES {
        reporter.set_service_status(name, status).await;
    }
}

/// Every `interval` until `stop`: SERVING while the node is ready, NOT_SERVING otherwise
/// (logged on each change). Also runs the metrics upkeep.
pub(crate) async fn run(
    node: ordkv::Node,
    reporter: HealthReporter,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ready = node.is_ready();
        if last != Some(ready) {
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            if ready {
                tracing::info!(node = %node.identity().name, "ready: health SERVING");
            } else {
                let reason = node.status().not_ready_reason();
                tracing::info!(
                    node = %node.identity().name,
                    reason = reason.as_deref().unwrap_or("not ready"),
                    "not ready: health NOT_SERVING"
                );
            }
            set_all(&reporter, status).await;
            last = Some(ready);
        }
        crate::metrics::upkeep();
    }
}
