//! How much Raft log a member keeps behind its snapshot. openraft purges on its own up to a
//! fixed number of entries behind each snapshot, even past what a follower will ask for
//! next: a follower catching up by snapshot while snapshots come often (a small
//! `snapshot_every_entries` under load) then finds the log purged past the snapshot it just
//! installed, needs another one, and never catches up (measured: 24 installs of 200 MiB in
//! 60 s, never ready). With peers, openraft's own purge is off and the lifecycle tick
//! purges instead: `keep` entries behind the snapshot, and on the leader no further than
//! what every follower has (so the next entries a follower asks for are there), holding at
//! most `hold_max` entries for a slow or absent one (then it is sent a snapshot).

use openraft::RaftMetrics;
use ordkv_store::TypeConfig;

/// Log entries kept behind the snapshot, and the most kept for followers that lag.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    pub(crate) keep: u64,
    pub(crate) hold_max: u64,
}

impl Retention {
    pub(crate) fn for_snapshot_every(entries: u64) -> Retention {
        let keep = entries.min(1000);
        Retention {
            keep,
            hold_max: keep * 10,
        }
    }

    /// The index to purge up to (inclusive) now, if any: see the module documentation.
    /// `followers` are the matched indexes the leader knows (empty on a follower).
    pub(crate) fn purge_upto(
        &self,
        snapshot: Option<u64>,
        purged: Option<u64>,
        followers: impl IntoIterator<Item = Option<u64>>,
    ) -> Option<u64> {
        let snapshot = snapshot?;
        let mut upto = snapshot.saturating_sub(self.keep);
        // A follower with nothing matched yet gets a snapshot whatever is kept.
        if let Some(slowest) = followers.into_iter().flatten().min() {
            upto = upto
                .min(slowest)
                .max(snapshot.saturating_sub(self.hold_max));
        }
        (upto > 0 && Some(upto) > purged).then_some(upto)
    }

    /// [`Retention::purge_upto`] from a member's metrics.
    pub(crate) fn purge_upto_from(&self, m: &RaftMetrics<TypeConfig>) -> Option<u64> {
        let followers = m
            .replication
            .iter()
            .flatten()
            .filter(|(id, _)| **id != m.id)
            .map(|(_, matched)| matched.as_ref().map(|l| l.index));
        self.purge_upto(
            m.snapshot.as_ref().map(|l| l.index),
            m.purged.as_ref().map(|l| l.index),
            followers,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Retention = Retention {
        keep: 100,
        hold_max: 1000,
    };

    #[test]
    fn a_member_without_followers_keeps_its_window_behind_the_snapshot() {
        assert_eq!(
            R.purge_upto(None, None, []),
            None,
            "nothing before a snapshot"
        );
        assert_eq!(
            R.purge_upto(Some(50), None, []),
            None,
            "the window covers the log"
        );
        assert_eq!(R.purge_upto(Some(500), None, []), Some(400));
        assert_eq!(
            R.purge_upto(Some(500), Some(400), []),
            None,
            "already purged"
        );
    }

    #[test]
    fn the_leader_keeps_what_its_slowest_follower_asks_for_next() {
        // A follower that just installed the snapshot at 500 while the leader snapshotted
        // again at 700: it asks for 501 next, so 501.. stays.
        assert_eq!(
            R.purge_upto(Some(700), Some(400), [Some(690), Some(500)]),
            Some(500)
        );
        // Caught-up followers do not hold anything.
        assert_eq!(
            R.purge_upto(Some(700), Some(400), [Some(700), Some(705)]),
            Some(600)
        );
        // One that has nothing yet gets a snapshot anyway.
        assert_eq!(
            R.purge_upto(Some(700), Some(400), [None, Some(705)]),
            Some(600)
        );
    }

    #[test]
    fn a_follower_far_behind_holds_at_most_hold_max_entries() {
        assert_eq!(R.purge_upto(Some(5000), Some(100), [Some(200)]), Some(4000));
        assert_eq!(R.purge_upto(Some(5000), Some(4000), [Some(200)]), None);
    }
}
