//! Whether a follower has caught up with its leader, for readiness. A follower's own commit
//! index stops at its last log entry, so on its own it cannot tell that it is far behind
//! (after a restart, or a partition). The lifecycle loop asks the leader for its commit
//! index (a read index) every tick; a follower is caught up once it has applied what the
//! leader had committed one sample earlier. Against the latest sample a healthy follower
//! under load would flap, since it applies a few milliseconds after the leader commits.

use std::sync::Mutex;

/// The last two commit indexes learned from the current leader, the newer last. Forgotten
/// when the leader changes or cannot be asked: then the follower does not know how far
/// behind it is, and says so.
#[derive(Default)]
pub(crate) struct LeaderCommits {
    samples: Mutex<Samples>,
}

#[derive(Default)]
struct Samples {
    leader: Option<u64>,
    older: Option<u64>,
    newer: Option<u64>,
}

impl LeaderCommits {
    fn samples(&self) -> std::sync::MutexGuard<'_, Samples> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `leader` said its commit index is `index`.
    pub(crate) fn record(&self, leader: u64, index: u64) {
        let mut s = self.samples();
        let older = if s.leader == Some(leader) {
            s.newer
        } else {
            None
        };
        *s = Samples {
            leader: Some(leader),
            older,
            newer: Some(index),
        };
    }

    /// The leader could not be asked.
    pub(crate) fn forget(&self) {
        *self.samples() = Samples::default();
    }

    /// What a follower of `leader` must have applied to be caught up: the older sample, or
    /// the only one; `None` when nothing was learned from this leader.
    pub(crate) fn target(&self, leader: Option<u64>) -> Option<u64> {
        let s = self.samples();
        if leader.is_none() || s.leader != leader {
            return None;
        }
        s.older.or(s.newer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_one_sample_behind_and_from_the_current_leader() {
        let c = LeaderCommits::default();
        assert_eq!(c.target(Some(1)), None);
        c.record(1, 10);
        assert_eq!(c.target(Some(1)), Some(10));
        c.record(1, 20);
        assert_eq!(c.target(Some(1)), Some(10));
        c.record(1, 30);
        assert_eq!(c.target(Some(1)), Some(20));
        assert_eq!(c.target(Some(2)), None, "another leader");
        assert_eq!(c.target(None), None, "no leader");
        c.record(2, 35);
        assert_eq!(
            c.target(Some(2)),
            Some(35),
            "nothing older from this leader"
        );
        c.forget();
        assert_eq!(c.target(Some(2)), None);
    }
}
