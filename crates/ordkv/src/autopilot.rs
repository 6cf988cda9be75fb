//! The leader's autopilot: a pure planner ([`plan`]) that looks at a [`View`] of the
//! cluster and returns at most one [`Action`], and the step that gathers the view and runs
//! that action. One membership change at a time, and none that would leave the voters
//! without a quorum of members the leader reaches, before or after the change (a change
//! commits in both configurations).
//!
//! The rules, in order:
//! 1. a leader that the StatefulSet is scaling away hands leadership to a voter that stays;
//! 2. members the StatefulSet is scaling away (ordinal >= `spec.replicas` > 0), and members
//!    that asked to leave (on SIGTERM, having read such a count), are removed, unreachable
//!    ones first, then from the highest ordinal down;
//! 3. caught-up learners are promoted while voters < `max_voters` (not those scaled away);
//! 4. with DNS discovery, a member whose name stayed unresolvable past the dead-member
//!    timeout is removed (the fallback when the StatefulSet's count is unknown).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::config::Identity;
use crate::error::Result;
use crate::intent::ScaleIntent;
use crate::membership::Membership;
use crate::replica::recently_acked;

/// A learner this close to the leader's last log index counts as caught up.
pub(crate) const CAUGHT_UP_ENTRIES: u64 = 100;

/// One member as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberView {
    pub ordinal: u32,
    pub voter: bool,
    /// The last log index known to be on it.
    pub matched: Option<u64>,
    /// It acknowledged the leader recently.
    pub reachable: bool,
    /// Its DNS name has stayed unresolvable past the dead-member timeout.
    pub name_gone: bool,
    /// It asked to be removed: it is leaving for good (scaled down, see `Peer.Leave`).
    pub leaving: bool,
}

/// What the planner decides from.
#[derive(Debug, Clone)]
pub(crate) struct View {
    /// The leader's own node id.
    pub me: u64,
    pub members: BTreeMap<u64, MemberView>,
    pub last_index: u64,
    /// The index of the latest membership entry: a learner is promoted only once it holds
    /// it (one that stopped taking the log short of it, e.g. on conflicting data, never is).
    pub membership_index: u64,
    pub max_voters: usize,
    pub intent: ScaleIntent,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Hand leadership to this voter (the leader is being scaled away).
    HandOff(u64),
    /// Remove this member.
    Remove { id: u64, why: Why },
    /// Make this learner a voter.
    Promote(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// Its ordinal is at or above the StatefulSet's `spec.replicas`.
    ScaledDown(u32),
    /// It asked to leave (it read a count below its ordinal that the leader has not yet).
    Leaving,
    /// Its DNS name stayed gone past the dead-member timeout.
    NameGone,
}

impl View {
    fn voters(&self) -> impl Iterator<Item = (&u64, &MemberView)> {
        self.members.iter().filter(|(_, m)| m.voter)
    }

    fn alive(&self, id: u64) -> bool {
        id == self.me || self.members.get(&id).is_some_and(|m| m.reachable)
    }

    /// Whether removing `id` keeps a reachable quorum of the voters both before and after.
    pub(crate) fn can_remove(&self, id: u64) -> bool {
        let quorum = |ids: &[u64]| {
            !ids.is_empty() && ids.iter().filter(|i| self.alive(**i)).count() > ids.len() / 2
        };
        let before: Vec<u64> = self.voters().map(|(i, _)| *i).collect();
        let after: Vec<u64> = before.iter().copied().filter(|i| *i != id).collect();
        id != self.me && quorum(&before) && quorum(&after)
    }
}

/// At most one action that brings the membership closer to what it should be.
pub(crate) fn plan(v: &View) -> Option<Action> {
    let going = |m: &MemberView| m.leaving || v.intent.removes(m.ordinal);
    let me = v.members.get(&v.me)?;
    if going(me) {
        return v
            .voters()
            .filter(|(id, m)| !going(m) && v.alive(**id))
            .max_by_key(|(id, m)| (m.matched, std::cmp::Reverse(**id)))
            .map(|(id, _)| Action::HandOff(*id));
    }
    let mut leaving: Vec<(&u64, &MemberView)> = v
        .members
        .iter()
        .filter(|(id, m)| **id != v.me && going(m))
        .collect();
    leaving.sort_by_key(|(id, m)| (v.alive(**id), std::cmp::Reverse(m.ordinal)));
    if let Some((id, m)) = leaving.into_iter().find(|(id, _)| v.can_remove(**id)) {
        let why = match v.intent.replicas() {
            Some(n) if v.intent.removes(m.ordinal) => Why::ScaledDown(n),
            _ => Why::Leaving,
        };
        return Some(Action::Remove { id: *id, why });
    }
    if v.voters().count() < v.max_voters
        && let Some((id, _)) = v.members.iter().find(|(_, m)| {
            !m.voter
                && !going(m)
                && m.matched.is_some_and(|l| {
                    l >= v.membership_index && l + CAUGHT_UP_ENTRIES >= v.last_index
                })
        })
    {
        return Some(Action::Promote(*id));
    }
    v.members
        .iter()
        .find(|(id, m)| m.name_gone && v.can_remove(**id))
        .map(|(id, _)| Action::Remove {
            id: *id,
            why: Why::NameGone,
        })
}

/// The leader's autopilot: the membership handle it acts through, and how long each
/// member's DNS name has been unresolvable (DNS discovery only).
pub(crate) struct Autopilot {
    membership: Membership,
    /// With DNS discovery: how long a member's name may stay unresolvable before it is
    /// removed. `None` with static peers (a name there always "resolves").
    dead_member_timeout: Option<Duration>,
    gone_since: HashMap<u64, Instant>,
}

impl Autopilot {
    pub(crate) fn new(membership: Membership, dead_member_timeout: Option<Duration>) -> Autopilot {
        Autopilot {
            membership,
            dead_member_timeout,
            gone_since: HashMap::new(),
        }
    }

    /// The leader's view of its cluster now.
    async fn view(&mut self) -> View {
        let me = self.membership.node_id();
        let m = self.membership.metrics();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let matched = m.replication.clone().unwrap_or_default();
        let reached = recently_acked(&m);
        let leave_requests = &self.membership.leave_requests;
        self.gone_since
            .retain(|id, _| membership.get_node(id).is_some());
        leave_requests.retain(|id| membership.get_node(&id).is_some());
        let mut members = BTreeMap::new();
        for (id, node) in membership.nodes() {
            let name_gone = match self.dead_member_timeout {
                Some(timeout) if *id != me => {
                    if crate::resolve::resolves(&node.peer_addr).await {
                        self.gone_since.remove(id);
                        false
                    } else {
                        self.gone_since
                            .entry(*id)
                            .or_insert_with(Instant::now)
                            .elapsed()
                            >= timeout
                    }
                }
                _ => false,
            };
            members.insert(
                *id,
                MemberView {
                    ordinal: Identity::parse(&node.name).map_or(0, |i| i.ordinal),
                    voter: voters.contains(id),
                    matched: if *id == me {
                        m.last_log_index
                    } else {
                        matched.get(id).cloned().flatten().map(|l| l.index)
                    },
                    reachable: reached.contains(id),
                    name_gone,
                    leaving: leave_requests.contains(*id),
                },
            );
        }
        View {
            me,
            members,
            last_index: m.last_log_index.unwrap_or(0),
            membership_index: m.membership_config.log_id().as_ref().map_or(0, |l| l.index),
            max_voters: self.membership.max_voters(),
            intent: self.membership.intent(),
        }
    }

    /// One autopilot step on the leader: at most one membership change.
    pub(crate) async fn step(&mut self) -> Result<()> {
        let view = self.view().await;
        let Some(action) = plan(&view) else {
            return Ok(());
        };
        let name = |id: u64| {
            self.membership
                .metrics()
                .membership_config
                .membership()
                .get_node(&id)
                .map_or_else(|| id.to_string(), |n| n.name.clone())
        };
        match action {
            Action::HandOff(to) => {
                tracing::info!(to = %name(to), scale_intent = %view.intent, "autopilot: this leader is scaled away; handing off leadership");
                self.membership.start_transfer(to).await?;
            }
            Action::Remove { id, why } => {
                let member = name(id);
                match why {
                    Why::ScaledDown(n) => {
                        tracing::warn!(%member, node_id = id, "autopilot: removing a member scaled away (replicas {n})");
                        metrics::counter!(REMOVED_BY_INTENT).increment(1);
                    }
                    Why::Leaving => {
                        tracing::info!(%member, node_id = id, "autopilot: removing a member that is leaving (scaled down)");
                        metrics::counter!(REMOVED_BY_INTENT).increment(1);
                    }
                    Why::NameGone => {
                        tracing::warn!(%member, node_id = id, "autopilot: removing a member whose DNS name is gone (scale-down)")
                    }
                }
                self.membership.remove_ids(&BTreeSet::from([id])).await?;
                self.gone_since.remove(&id);
            }
            Action::Promote(id) => {
                tracing::info!(member = %name(id), node_id = id, "autopilot: promoting a caught-up learner");
                self.membership.promote(id).await?;
            }
        }
        Ok(())
    }
}

/// Members removed because the StatefulSet was scaled below their ordinal.
pub const REMOVED_BY_INTENT: &str = "ordkv_members_removed_by_scale_intent_total";

#[cfg(test)]
mod tests {
    use super::*;

    const LEADER: u64 = 100;

    /// Voters `kv-0..voters` (node id = 100 + ordinal; kv-0 leads), learners after them,
    /// all reachable and caught up at index 50.
    fn view(voters: u32, learners: u32, replicas: Option<u32>) -> View {
        let members = (0..voters + learners)
            .map(|o| {
                (
                    LEADER + o as u64,
                    MemberView {
                        ordinal: o,
                        voter: o < voters,
                        matched: Some(50),
                        reachable: true,
                        name_gone: false,
                        leaving: false,
                    },
                )
            })
            .collect();
        View {
            me: LEADER,
            members,
            last_index: 50,
            membership_index: 10,
            max_voters: 5,
            intent: replicas.map_or(ScaleIntent::Unavailable("no API".into()), |n| {
                ScaleIntent::Replicas(n)
            }),
        }
    }

    fn member(v: &mut View, ordinal: u32) -> &mut MemberView {
        v.members.get_mut(&(LEADER + ordinal as u64)).unwrap()
    }

    fn remove(ordinal: u32, why: Why) -> Option<Action> {
        Some(Action::Remove {
            id: LEADER + ordinal as u64,
            why,
        })
    }

    #[test]
    fn a_steady_cluster_needs_nothing() {
        assert_eq!(plan(&view(3, 0, Some(3))), None);
        assert_eq!(plan(&view(3, 0, None)), None);
    }

    #[test]
    fn members_scaled_away_go_one_at_a_time_from_the_highest_ordinal() {
        let v = view(4, 0, Some(2));
        assert_eq!(plan(&v), remove(3, Why::ScaledDown(2)));
        let mut v = view(5, 0, Some(2));
        assert_eq!(plan(&v), remove(4, Why::ScaledDown(2)));
        v.members.remove(&(LEADER + 4));
        assert_eq!(plan(&v), remove(3, Why::ScaledDown(2)));
    }

    #[test]
    fn an_unreachable_member_scaled_away_goes_first() {
        let mut v = view(4, 0, Some(2));
        member(&mut v, 2).reachable = false;
        assert_eq!(plan(&v), remove(2, Why::ScaledDown(2)));
    }

    #[test]
    fn no_removal_without_a_reachable_quorum_before_and_after() {
        // 4 voters, two of them gone: the change could not commit in the old configuration.
        let mut v = view(4, 0, Some(2));
        member(&mut v, 2).reachable = false;
        member(&mut v, 3).reachable = false;
        assert_eq!(plan(&v), None);
        // 3 voters, one gone and one more scaled away: removing the live one leaves 2 of
        // which one answers.
        let mut v = view(3, 0, Some(2));
        member(&mut v, 1).reachable = false;
        assert_eq!(plan(&v), None);
    }

    #[test]
    fn a_leader_scaled_away_hands_off_to_the_most_caught_up_voter_that_stays() {
        let mut v = view(5, 0, Some(3));
        v.me = LEADER + 4;
        member(&mut v, 1).matched = Some(40);
        assert_eq!(plan(&v), Some(Action::HandOff(LEADER)));
        member(&mut v, 0).reachable = false;
        member(&mut v, 2).matched = Some(45);
        assert_eq!(plan(&v), Some(Action::HandOff(LEADER + 2)));
    }

    #[test]
    fn a_member_that_asks_to_leave_goes_before_the_leader_reads_the_new_count() {
        let mut v = view(4, 0, Some(4));
        member(&mut v, 3).leaving = true;
        assert_eq!(plan(&v), remove(3, Why::Leaving));
        let mut v = view(3, 0, None);
        member(&mut v, 2).leaving = true;
        assert_eq!(plan(&v), remove(2, Why::Leaving));
    }

    #[test]
    fn scale_to_zero_removes_nobody() {
        assert_eq!(plan(&view(3, 0, Some(0))), None);
    }

    #[test]
    fn learners_are_promoted_unless_scaled_away() {
        let v = view(3, 1, None);
        assert_eq!(plan(&v), Some(Action::Promote(LEADER + 3)));
        let mut v = view(3, 1, Some(4));
        v.last_index = 500;
        member(&mut v, 3).matched = Some(10);
        assert_eq!(plan(&v), None, "not caught up");
        // Within reach of the end, but short of the entry that added it.
        v.last_index = 50;
        member(&mut v, 3).matched = Some(45);
        v.membership_index = 48;
        assert_eq!(plan(&v), None, "without the latest membership entry");
        member(&mut v, 3).matched = Some(48);
        assert_eq!(plan(&v), Some(Action::Promote(LEADER + 3)));
        // Scaled to 3: the learner kv-3 is removed, not promoted.
        assert_eq!(plan(&view(3, 1, Some(3))), remove(3, Why::ScaledDown(3)));
        let mut v = view(5, 1, None);
        v.max_voters = 5;
        assert_eq!(plan(&v), None, "voters are full");
    }

    #[test]
    fn without_a_count_a_gone_name_is_removed_while_a_quorum_is_reached() {
        let mut v = view(3, 0, None);
        member(&mut v, 2).name_gone = true;
        member(&mut v, 2).reachable = false;
        assert_eq!(plan(&v), remove(2, Why::NameGone));
        member(&mut v, 1).reachable = false;
        assert_eq!(plan(&v), None);
    }
}
