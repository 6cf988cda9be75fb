//! Whether a follower has caught up with its leader, for readiness. A follower's own commit
//! index stops at its last log entry, so on its own it cannot tell that it is far behind
//! (after a restart, or a partition). The lifecycle loop asks the leader for its commit
//! index (a read index) every tick; a follower is caught up once it has applied what the
//! leader had committed one sample earlier. Against the latest sample a healthy follower
//! under load would flap, since it applies a few milliseconds after the leader commits.

use std::sync::Mutex;

/// The last two commit indexes learned from the leader, the newer last.
#[derive(Default)]
pub(crate) struct LeaderCommits {
    samples: Mutex<[Option<u64>; 2]>,
}

impl LeaderCommits {
    pub(crate) fn record(&self, index: u64) {
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        *s = [s[1], Some(index)];
    }

    /// What a follower must have applied to be caught up: the older sample, or the only one;
    /// `None` before the first.
    pub(crate) fn target(&self) -> Option<u64> {
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        s[0].or(s[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_one_sample_behind() {
        let c = LeaderCommits::default();
        assert_eq!(c.target(), None);
        c.record(10);
        assert_eq!(c.target(), Some(10));
        c.record(20);
        assert_eq!(c.target(), Some(10));
        c.record(30);
        assert_eq!(c.target(), Some(20));
    }
}
