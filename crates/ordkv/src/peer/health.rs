//! Whether each peer answers, for logs that stay readable while one is down or flapping.
//! The leader calls every follower at least once per heartbeat (and once per commit under
//! load), so one line per failed call floods the log; instead an outage is an *episode*:
//! logged once when it starts, summarized every [`SUMMARY_EVERY`] while it lasts, and logged
//! once when it ends. A peer that answers again and fails within [`STEADY_AFTER`] is still in
//! the same episode (it flaps): its flaps are counted in the summaries, not logged one by one.
//! Every failed call still counts in [`PEER_ERRORS`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Counter: failed Raft calls to a peer, label `peer`.
pub const PEER_ERRORS: &str = "ordkv_peer_errors_total";

/// How often a peer that stays unreachable is summarized in the log.
pub(crate) const SUMMARY_EVERY: Duration = Duration::from_secs(30);
/// How long a peer must answer without a failure for its episode to end.
pub(crate) const STEADY_AFTER: Duration = Duration::from_secs(30);

/// Peers in an episode of failures.
#[derive(Default)]
pub(crate) struct PeerHealth {
    episodes: Mutex<HashMap<String, Episode>>,
    /// `episodes.len()`, so that a call that succeeds takes no lock while every peer answers.
    episode_count: AtomicUsize,
}

struct Episode {
    since: Instant,
    failures: u64,
    /// Failures since the last line about this peer.
    unreported: u64,
    reported_at: Instant,
    /// Times it answered, then failed again, within this episode.
    flaps: u64,
    /// Since when it answers, if its last call succeeded.
    answering_since: Option<Instant>,
}

impl Episode {
    fn new(now: Instant) -> Episode {
        Episode {
            since: now,
            failures: 1,
            unreported: 0,
            reported_at: now,
            flaps: 0,
            answering_since: None,
        }
    }
}

/// What a failed call changes in the log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Report {
    /// The first failure of an episode.
    Started,
    /// A summary is due: failures since the last line, flaps and length of the episode.
    StillDown {
        failures: u64,
        flaps: u64,
        down_for: Duration,
    },
    /// Nothing to log.
    Quiet,
}

/// What an answered call changes in the log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Back {
    /// The first answer after the episode's first outage.
    Reachable { failures: u64, down_for: Duration },
    /// A flapping peer answered for [`STEADY_AFTER`]: its episode is over.
    Steady { failures: u64, flaps: u64 },
    /// Nothing to log.
    Quiet,
}

impl PeerHealth {
    fn episodes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Episode>> {
        self.episodes.lock().unwrap_or_else(|p| p.into_inner())
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
            Report::StillDown {
                failures,
                flaps: 0,
                down_for,
            } => tracing::warn!(
                peer,
                failures,
                down_for_s = down_for.as_secs(),
                last_error = error,
                "peer still unreachable"
            ),
            Report::StillDown {
                failures,
                flaps,
                down_for,
            } => tracing::warn!(
                peer,
                failures,
                flaps,
                for_s = down_for.as_secs(),
                last_error = error,
                "peer flapping (answers, then fails again)"
            ),
            Report::Quiet => {}
        }
    }

    /// A call to `peer` was answered.
    pub(crate) fn answered(&self, peer: &str) {
        if self.episode_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        match self.answered_at(peer, Instant::now()) {
            Back::Reachable { failures, down_for } => tracing::info!(
                peer,
                failures,
                down_for_ms = down_for.as_millis() as u64,
                "peer reachable again"
            ),
            Back::Steady { failures, flaps } => tracing::info!(
                peer,
                failures,
                flaps,
                "peer answering steadily again after flapping"
            ),
            Back::Quiet => {}
        }
    }

    fn failed_at(&self, peer: &str, now: Instant) -> Report {
        let mut episodes = self.episodes();
        let Some(e) = episodes.get_mut(peer) else {
            episodes.insert(peer.to_string(), Episode::new(now));
            self.episode_count.store(episodes.len(), Ordering::Relaxed);
            return Report::Started;
        };
        if let Some(answering) = e.answering_since.take() {
            if now.duration_since(answering) >= STEADY_AFTER {
                *e = Episode::new(now);
                return Report::Started;
            }
            e.flaps += 1;
        }
        e.failures += 1;
        e.unreported += 1;
        if now.duration_since(e.reported_at) < SUMMARY_EVERY {
            return Report::Quiet;
        }
        let report = Report::StillDown {
            failures: e.unreported,
            flaps: e.flaps,
            down_for: now.duration_since(e.since),
        };
        e.unreported = 0;
        e.reported_at = now;
        report
    }

    fn answered_at(&self, peer: &str, now: Instant) -> Back {
        let mut episodes = self.episodes();
        let Some(e) = episodes.get_mut(peer) else {
            return Back::Quiet;
        };
        match e.answering_since {
            None => {
                e.answering_since = Some(now);
                if e.flaps == 0 {
                    Back::Reachable {
                        failures: e.failures,
                        down_for: now.duration_since(e.since),
                    }
                } else {
                    Back::Quiet
                }
            }
            Some(since) if now.duration_since(since) >= STEADY_AFTER => {
                let e = episodes.remove(peer).expect("present");
                self.episode_count.store(episodes.len(), Ordering::Relaxed);
                if e.flaps == 0 {
                    Back::Quiet
                } else {
                    Back::Steady {
                        failures: e.failures,
                        flaps: e.flaps,
                    }
                }
            }
            Some(_) => Back::Quiet,
        }
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
                flaps: 0,
                down_for: SUMMARY_EVERY
            }
        );
        // Another peer has its own episode.
        assert_eq!(health.failed_at("kv-1", t0), Report::Started);
        let back = t0 + SUMMARY_EVERY + Duration::from_millis(100);
        assert_eq!(
            health.answered_at("kv-2", back),
            Back::Reachable {
                failures: 301,
                down_for: back - t0
            }
        );
        assert_eq!(
            health.answered_at("kv-2", back),
            Back::Quiet,
            "reported once"
        );
        // Steady for the whole window: the episode ends without another line.
        assert_eq!(health.answered_at("kv-2", back + STEADY_AFTER), Back::Quiet);
        // Down again later: a new episode.
        assert_eq!(
            health.failed_at("kv-2", back + STEADY_AFTER),
            Report::Started
        );
    }

    #[test]
    fn a_flapping_peer_is_one_episode_with_its_flaps_counted() {
        let health = PeerHealth::default();
        let t0 = Instant::now();
        let mut lines = 0;
        // Down 1 s, up 1 s, for two minutes: 60 flaps.
        for s in 0..120u64 {
            let at = t0 + Duration::from_secs(s);
            if s % 2 == 0 {
                if health.failed_at("kv-2", at) != Report::Quiet {
                    lines += 1;
                }
            } else if health.answered_at("kv-2", at) != Back::Quiet {
                lines += 1;
            }
        }
        // Started, reachable again once, then a summary every 30 s (at 30, 60, 90 s).
        assert_eq!(lines, 5, "one line per flap would be 120");
        match health.failed_at("kv-2", t0 + Duration::from_secs(120)) {
            Report::StillDown { flaps, .. } => assert_eq!(flaps, 60),
            other => panic!("expected a summary with the flaps counted, got {other:?}"),
        }
        let up = t0 + Duration::from_secs(121);
        assert_eq!(health.answered_at("kv-2", up), Back::Quiet);
        assert_eq!(
            health.answered_at("kv-2", up + STEADY_AFTER),
            Back::Steady {
                failures: 61,
                flaps: 60
            }
        );
        assert_eq!(health.episode_count.load(Ordering::Relaxed), 0);
    }
}
