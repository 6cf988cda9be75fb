//! Whether each peer answers, for logs that stay readable while one is down. The leader calls
//! every follower at least once per heartbeat (and once per commit under load), so one line
//! per failed call floods the log; instead a peer that stops answering is logged once, then
//! summarized every [`SUMMARY_EVERY`] while it stays down, and once when it answers again.
//! Every failed call still counts in [`PEER_ERRORS`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Counter: failed Raft calls to a peer, label `peer`.
pub const PEER_ERRORS: &str = "ordkv_peer_errors_total";

/// How often a peer that stays unreachable is summarized in the log.
pub(crate) const SUMMARY_EVERY: Duration = Duration::from_secs(30);

/// Peers whose last call failed.
#[derive(Default)]
pub(crate) struct PeerHealth {
    down: Mutex<HashMap<String, Down>>,
    /// `down.len()`, so that a call that succeeds takes no lock while every peer answers.
    down_count: AtomicUsize,
}

struct Down {
    since: Instant,
    failures: u64,
    unreported: u64,
    reported_at: Instant,
}

/// What a failed call changes in the log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Report {
    /// The first failure after the peer answered.
    Started,
    /// A summary is due: failures since the last line, and for how long the peer is down.
    StillDown { failures: u64, down_for: Duration },
    /// Nothing to log.
    Quiet,
}

impl PeerHealth {
    fn down(&self) -> std::sync::MutexGuard<'_, HashMap<String, Down>> {
        self.down.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A call to `peer` failed with `error`.
    pub(crate) fn failed(&self, peer: &str, error: &str) {
        metrics::counter!(PEER_ERRORS, "peer" => peer.to_string()).increment(1);
        match self.failed_at(peer, Instant::now()) {
            Report::Started => tracing::warn!(
                peer,
                error,
                "peer unreachable; repeated failures are summarized every {}s",
                SUMMARY_EVERY.as_secs()
            ),
            Report::StillDown { failures, down_for } => tracing::warn!(
                peer,
                failures,
                down_for_s = down_for.as_secs(),
                last_error = error,
                "peer still unreachable"
            ),
            Report::Quiet => {}
        }
    }

    /// A call to `peer` was answered.
    pub(crate) fn answered(&self, peer: &str) {
        if self.down_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        if let Some(d) = self.answered_at(peer) {
            tracing::info!(
                peer,
                failures = d.failures,
                down_for_ms = d.since.elapsed().as_millis() as u64,
                "peer reachable again"
            );
        }
    }

    fn failed_at(&self, peer: &str, now: Instant) -> Report {
        let mut down = self.down();
        let Some(d) = down.get_mut(peer) else {
            down.insert(
                peer.to_string(),
                Down {
                    since: now,
                    failures: 1,
                    unreported: 0,
                    reported_at: now,
                },
            );
            self.down_count.store(down.len(), Ordering::Relaxed);
            return Report::Started;
        };
        d.failures += 1;
        d.unreported += 1;
        if now.duration_since(d.reported_at) < SUMMARY_EVERY {
            return Report::Quiet;
        }
        let report = Report::StillDown {
            failures: d.unreported,
            down_for: now.duration_since(d.since),
        };
        d.unreported = 0;
        d.reported_at = now;
        report
    }

    fn answered_at(&self, peer: &str) -> Option<Down> {
        let mut down = self.down();
        let d = down.remove(peer);
        self.down_count.store(down.len(), Ordering::Relaxed);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_that_stays_down_is_reported_once_then_summarized() {
        let health = PeerHealth::default();
        let t0 = Instant::now();
        assert_eq!(health.failed_at("kv-2", t0), Report::Started);
        // A heartbeat every 100 ms for just under the summary period: nothing.
        for i in 1..300u64 {
            let at = t0 + Duration::from_millis(100 * i);
            assert_eq!(health.failed_at("kv-2", at), Report::Quiet);
        }
        assert_eq!(
            health.failed_at("kv-2", t0 + SUMMARY_EVERY),
            Report::StillDown {
                failures: 300,
                down_for: SUMMARY_EVERY
            }
        );
        // Another peer has its own state.
        assert_eq!(health.failed_at("kv-1", t0), Report::Started);
        let back = health.answered_at("kv-2").expect("kv-2 was down");
        assert_eq!(back.failures, 301);
        assert!(health.answered_at("kv-2").is_none(), "reported back once");
        // Down again later: a new episode.
        assert_eq!(
            health.failed_at("kv-2", t0 + 2 * SUMMARY_EVERY),
            Report::Started
        );
    }
}
