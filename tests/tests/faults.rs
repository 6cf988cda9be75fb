//! The fault matrix (issue 20, item 4) on a 3-member StatefulSet of `ordkv:dev` containers
//! (`ordkv_tests::containers`): one-way partitions, delay and loss, a follower far behind
//! (stopped or partitioned, with and without the log purged past it), a frozen leader.
//!
//! Each test runs two loads from the host through the published client ports of all three
//! members: a recorded read/write/compare-and-swap load on five keys
//! (`ordkv_tests::history`), whose history the linearizability checker judges, and a
//! sequential writer of unique keys (`WriteLoad`), whose every acknowledged put must be
//! served at the end by every member. Each prints: operations checked, acknowledged writes
//! lost, the verdict, the longest time without an acknowledged write, the time to converge
//! after the heal, and leader changes (terms in which a member reported a leader, polled
//! four times a second, less one).
//!
//! Faults run on the host inside a member's network namespace (`nsenter -t <pid> -n`:
//! `iptables`, `tc`), so the tests need root, a docker engine, and those tools (`.ci/run`
//! installs them when missing); without them they fail, naming what is missing.
//!
//! The tests run one at a time (a lock), whatever `--test-threads` says: their bounds on
//! elections and catch-up assume no other 3-member set shares the machine.
//!
//! Raft timing the bounds below rest on (`crates/ordkv/src/node.rs`, `raft_config`):
//! heartbeats every 100 ms, election timeout 500–1000 ms, pre-vote on.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ordkv_proto::v1::Consistency;
use ordkv_proto::v1::PutRequest;
use ordkv_proto::v1::kv_client::KvClient;
use ordkv_tests::containers::{
    CONVERGE, LoadReport, StatefulSet, WriteLoad, blob, channel_to, pod_name, voters,
};
use ordkv_tests::history::{HistoryLoad, HistoryReport};
use ordkv_tests::linearizability::CheckResult;
use ordkv_tests::purged_upto;

/// Deadline of each request of the loads: longer means an unknown outcome.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Budget of the linearizability check (running out of it fails the test).
const CHECK_BUDGET: Duration = Duration::from_secs(60);
/// How long the loads run before a fault, and on after a heal.
const SETTLE: Duration = Duration::from_secs(2);

/// One scenario at a time in this process: the bounds on elections and catch-up assume
/// the machine is not also running another 3-member set (CI has 2 cores).
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// A 3-member set under both loads.
struct Run {
    sts: StatefulSet,
    history: HistoryLoad,
    writes: WriteLoad,
    /// The leader when the loads started.
    leader: usize,
}

impl Run {
    /// Creates 3 members with `env`, waits until they are ready and agree on a leader of 3
    /// voters, starts the loads and lets them run [`SETTLE`].
    fn start(test: &str, env: &[(&str, &str)]) -> Run {
        Run::start_on(StatefulSet::new(test), test, env)
    }

    /// [`Run::start`] on a set configured beforehand (e.g. with small volumes).
    fn start_on(mut sts: StatefulSet, test: &str, env: &[(&str, &str)]) -> Run {
        if let Err(e) = StatefulSet::fault_tools() {
            panic!("{test} injects faults from the host: {e}");
        }
        for (k, v) in env {
            sts = sts.env(k, v);
        }
        let started = Instant::now();
        sts.scale_to(3);
        sts.wait_all_ready();
        let (leader, status) = sts.wait_membership(&[0, 1, 2], &voters(0..3));
        sts.say(&format!(
            "3 members ready, {} leading in term {} after {}",
            pod_name(leader),
            status.term,
            secs(started.elapsed())
        ));
        let endpoints: Vec<_> = (0..3).map(|i| sts.client_addr(i)).collect();
        let history = HistoryLoad::start(endpoints.clone(), "h", OP_TIMEOUT);
        let writes = WriteLoad::start(endpoints, "w", OP_TIMEOUT);
        std::thread::sleep(SETTLE);
        Run {
            sts,
            history,
            writes,
            leader,
        }
    }

    /// The highest commit index any member reports of itself now (the point a heal must
    /// bring every member to).
    fn commit_now(&self) -> u64 {
        (0..3)
            .filter_map(|i| self.sts.try_own_status(i).ok())
            .map(|s| s.commit_index)
            .max()
            .unwrap_or(0)
    }

    /// Waits until every member applied `target`; returns how long since `since`.
    fn caught_up(&self, target: u64, since: Instant) -> Duration {
        self.sts.wait_until(
            &format!("every member applied index {target}"),
            CONVERGE,
            || {
                for i in 0..3 {
                    let s = self.sts.try_own_status(i)?;
                    if s.applied_index < target {
                        return Err(format!("{} applied {}", pod_name(i), s.applied_index));
                    }
                }
                Ok(())
            },
        );
        since.elapsed()
    }

    /// Lets the loads run [`SETTLE`] more, stops them, and checks everything: every member
    /// reaches the same applied index and revision, serves every acknowledged put of the
    /// writer, the history is linearizable, no two CASes succeeded from one value, no term
    /// had two leaders. Prints the figures; returns the set and the history report.
    fn finish(
        self,
        name: &str,
        healed: Instant,
        converge_after_heal: Duration,
    ) -> (StatefulSet, HistoryReport) {
        std::thread::sleep(SETTLE);
        let Run {
            sts,
            history,
            writes,
            ..
        } = self;
        let load: LoadReport = writes.stop();
        let report = history
            .finish(CONVERGE)
            .unwrap_or_else(|e| panic!("{e}\n{}", sts.logs_all()));
        // Same applied index and revision everywhere once the loads stopped.
        let (applied, revision) = sts.wait_until(
            "all members have one applied index and revision",
            CONVERGE,
            || {
                let s: Vec<_> = (0..3)
                    .map(|i| sts.try_own_status(i))
                    .collect::<Result<_, _>>()?;
                let seen: Vec<(u64, u64)> =
                    s.iter().map(|s| (s.applied_index, s.revision)).collect();
                if seen.iter().all(|x| *x == seen[0]) {
                    Ok(seen[0])
                } else {
                    Err(format!("(applied, revision) by ordinal: {seen:?}"))
                }
            },
        );
        let identical = healed.elapsed();
        // Every acknowledged put of the writer, from every member.
        let mut lost = Vec::new();
        for i in 0..3 {
            let served = sts.scan(i, "w/", Consistency::Serializable);
            lost.extend(
                load.acked
                    .iter()
                    .filter(|a| served.get(&a.key) != Some(&a.value))
                    .map(|a| format!("{}: {}={}", pod_name(i), a.key, a.value)),
            );
        }
        let (gap, gap_at) = load.longest_gap();
        let (any_gap, any_gap_at) = report.longest_write_gap();
        let (verdict, took) = report.check(CHECK_BUDGET);
        sts.say(&format!("{name}: {}", report.summary()));
        sts.say(&format!(
            "{name}: writer: {} acknowledged, {} failed attempts, first failures {:?}",
            load.acked.len(),
            load.failed_attempts,
            load.sample_errors
        ));
        sts.say(&format!(
            "{name}: FIGURES ops checked {} | acknowledged writes {} (lost {}) | linearizable \
             {} (check {}, {}) | longest write gap {} (from {} into the load; the sequential \
             writer's, which waits out a {} timeout per dead member: {} from {}) | converged \
             {} after the heal (identical applied {applied} / revision {revision} everywhere \
             {} after it, loads stopped) | leader changes {} {:?}",
            report.events.len(),
            load.acked.len() + report.writes.len(),
            lost.len(),
            verdict == CheckResult::Ok,
            verdict_line(&verdict),
            secs(took),
            secs(any_gap),
            secs(any_gap_at),
            secs(OP_TIMEOUT),
            secs(gap),
            secs(gap_at),
            secs(converge_after_heal),
            secs(identical),
            report.leader_changes(),
            report.terms()
        ));
        assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
        assert!(
            report.double_cas().is_empty(),
            "two CASes succeeded from one value: {:?}",
            report.double_cas()
        );
        assert_eq!(
            report.two_leaders_in_a_term(),
            None,
            "two leaders reported in one term"
        );
        // A check that ran out of budget is not a pass.
        assert_eq!(verdict, CheckResult::Ok, "{}", sts.logs_all());
        assert!(
            load.acked.len() > 10 && report.writes.len() > 10,
            "the loads hardly wrote: {} puts of the writer, {} of the history",
            load.acked.len(),
            report.writes.len()
        );
        (sts, report)
    }
}

/// A verdict, short.
fn verdict_line(v: &CheckResult) -> String {
    match v {
        CheckResult::Ok => "Ok".into(),
        CheckResult::Timeout => "TIMEOUT: budget ran out, not a pass".into(),
        CheckResult::Violation { key, detail } => {
            format!("VIOLATION on {}:\n{detail}", String::from_utf8_lossy(key))
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. One-way partitions
// ---------------------------------------------------------------------------------------

/// How long a partition or a netem phase is held.
const HOLD: Duration = Duration::from_secs(5);

/// The leader drops every packet from its two peers (it still sends to them): they stop
/// hearing it within a few heartbeats' TCP retransmissions and elect one of themselves,
/// which takes writes; the old leader, which clients still reach, cannot confirm a read or
/// commit a write, so the history stays linearizable. Healed, it steps down, catches up,
/// and no further election follows (exactly one leader change).
#[test]
fn a_leader_that_can_send_but_not_receive_is_replaced_and_serves_nothing_stale() {
    one_way_partition("oneway-leader", true);
}

/// A follower drops every packet from its two peers: the leader stays in place (pre-vote:
/// the follower cannot depose it, during the partition or when it heals: no leader change
/// at all), the history stays linearizable, and the follower catches up after the heal.
#[test]
fn a_follower_that_can_send_but_not_receive_leaves_the_leader_in_place() {
    one_way_partition("oneway-follower", false);
}

fn one_way_partition(name: &str, of_leader: bool) {
    let _serial = one_at_a_time();
    let run = Run::start(name, &[]);
    let l = run.leader;
    let victim = if of_leader { l } else { (l + 1) % 3 };
    let others: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let cut = Instant::now();
    run.sts.drop_from(victim, &others);
    let acked_at_cut = run.history.acked_writes();
    let (leader, s) = run.sts.wait_leader(&others);
    let elected = cut.elapsed();
    run.sts.say(&format!(
        "{} drops everything from {others:?}: {} leads the majority in term {} after {}",
        pod_name(victim),
        pod_name(leader),
        s.term,
        secs(elected)
    ));
    std::thread::sleep(HOLD.saturating_sub(cut.elapsed()));
    let during = run.history.acked_writes() - acked_at_cut;
    run.sts.undrop_from(victim, &others);
    let healed = Instant::now();
    run.sts.say(&format!(
        "healed after {}: {during} history writes acknowledged during the partition",
        secs(cut.elapsed())
    ));
    assert!(
        during >= 10,
        "the majority took only {during} writes in {} of partition",
        secs(HOLD)
    );
    let target = run.commit_now();
    let converged = run.caught_up(target, healed);
    let (sts, report) = run.finish(name, healed, converged);
    if of_leader {
        assert_eq!(
            report.leader_changes(),
            1,
            "one election replaces the cut-off leader, and none follows the heal: terms {:?}",
            report.terms()
        );
    } else {
        assert_eq!(
            leader, l,
            "the leader changed although only a follower was cut off"
        );
        assert_eq!(
            report.leader_changes(),
            0,
            "a one-way partitioned follower caused an election: terms {:?}\n{}",
            report.terms(),
            sts.logs_all()
        );
    }
}

// ---------------------------------------------------------------------------------------
// 2. Delay and loss
// ---------------------------------------------------------------------------------------

/// What is added to everything a shaped member sends: 100 ms ± 50 ms, 5% loss.
const DELAY: Duration = Duration::from_millis(100);
const JITTER: Duration = Duration::from_millis(50);
const LOSS_PERCENT: f64 = 5.0;
const NETEM: &str = "delay 100ms 50ms loss 5%";
/// How long each netem phase lasts.
const NETEM_FOR: Duration = Duration::from_secs(12);
/// At most this many leader changes while the leader's own traffic is shaped (and 2 s
/// after), and while everyone's is. A follower starts an election after 500-1000 ms without
/// a heartbeat (sent every 100 ms); 100 ± 50 ms of one-way delay keeps every heartbeat well
/// inside that, and a lost segment comes back with TCP's retransmission (RTO >= 200 ms, a
/// few hundred ms with this RTT), so a 500 ms silence needs the same segment lost twice in
/// a row (0.25%), and then pre-vote still needs the other follower's vote. One change per
/// phase is allowed for such bad luck, two when all three links are shaped; an election
/// storm (a new term every election timeout, ~10 per phase) is far above either.
const MAX_CHANGES_ONE: usize = 1;
const MAX_CHANGES_ALL: usize = 2;

/// `netem delay 100ms 50ms loss 5%` (or its NFQUEUE equivalent on a kernel without
/// `sch_netem`, see `ordkv_tests::netdelay`) on the leader, then on all three: the leader stays
/// (at most [`MAX_CHANGES_ONE`] / [`MAX_CHANGES_ALL`] leader changes), writes go on (p99
/// write latency printed per phase), the history stays linearizable, and everything
/// converges once the shaping is removed.
#[test]
fn delay_and_loss_on_one_member_then_on_all_cause_no_election_storm() {
    let _serial = one_at_a_time();
    let name = "netem";
    let run = Run::start(name, &[]);
    let l = run.leader;
    let t0 = run.history.now();
    std::thread::sleep(Duration::from_secs(4));
    let t1 = run.history.now();
    let shaped = run.sts.shape(l, DELAY, JITTER, LOSS_PERCENT);
    std::thread::sleep(NETEM_FOR);
    let how = run.sts.unshape(shaped);
    let t2 = run.history.now();
    run.sts.say(&format!(
        "{NETEM} on {} for {}: {how}",
        pod_name(l),
        secs(NETEM_FOR)
    ));
    std::thread::sleep(Duration::from_secs(2));
    let t3 = run.history.now();
    let shaped: Vec<_> = (0..3)
        .map(|i| run.sts.shape(i, DELAY, JITTER, LOSS_PERCENT))
        .collect();
    std::thread::sleep(NETEM_FOR);
    let how: Vec<String> = shaped.into_iter().map(|s| run.sts.unshape(s)).collect();
    let t4 = run.history.now();
    run.sts
        .say(&format!("{NETEM} on all for {}: {how:?}", secs(NETEM_FOR)));
    let healed = Instant::now();
    let target = run.commit_now();
    let converged = run.caught_up(target, healed);
    let (_sts, report) = run.finish(name, healed, converged);
    let end = u64::MAX;
    let p = |from, to| {
        let (p99, n) = report.write_latency(0.99, from, to);
        let (p50, _) = report.write_latency(0.5, from, to);
        format!(
            "p50 {} p99 {} over {n} writes",
            p50.map_or("-".into(), secs),
            p99.map_or("-".into(), secs)
        )
    };
    let (one, all) = (
        report.leader_changes_between(t1, t3),
        report.leader_changes_between(t3, end),
    );
    println!(
        "[{name}] FIGURES write latency: unshaped {} | {NETEM} on the leader {} | on all {} \
         | leader changes: leader shaped {one} (bound {MAX_CHANGES_ONE}), all shaped {all} \
         (bound {MAX_CHANGES_ALL})",
        p(t0, t1),
        p(t1, t2),
        p(t3, t4)
    );
    assert!(
        one <= MAX_CHANGES_ONE,
        "{one} leader changes with the leader shaped: {:?}",
        report.terms()
    );
    assert!(
        all <= MAX_CHANGES_ALL,
        "{all} leader changes with all shaped: {:?}",
        report.terms()
    );
    for (from, to, phase) in [(t1, t2, "leader shaped"), (t3, t4, "all shaped")] {
        let (_, n) = report.write_latency(0.99, from, to);
        assert!(n >= 10, "only {n} writes acknowledged with {phase}");
    }
}

// ---------------------------------------------------------------------------------------
// 3. A follower far behind
// ---------------------------------------------------------------------------------------

/// Values written while the follower is out, of [`BLOB_SIZE`] bytes each.
const BLOBS: usize = 200;
const BLOB_SIZE: usize = 1 << 20;
/// How long the follower may take to catch up after the heal (a 2-core machine shared by
/// three members, the loads, and other work).
const CATCH_UP: Duration = Duration::from_secs(60);
/// How soon after the follower caught up the leader's `cluster status` must show it.
const VIEW_WITHIN: Duration = Duration::from_secs(5);
/// `--snapshot-every` at its minimum: a snapshot every 100 entries, keeping the last 100
/// behind it.
const SNAPSHOT_EVERY_MIN: &str = "100";
/// Entries the leader may have sent a follower beyond its commit index (the loads' requests
/// in flight): a margin on what a cut-off follower can hold.
const IN_FLIGHT: u64 = 100;
/// What the node logs when it installs a snapshot (`crates/ordkv-store/src/snapshot.rs`).
const INSTALLED_SNAPSHOT: &str = "installed snapshot";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outage {
    /// `docker stop` (SIGTERM), then `docker start`.
    Stopped,
    /// Dropping everything between it and its peers both ways (iptables), then not.
    Partitioned,
}

/// Stopped while 200 values of 1 MiB are written, the log kept (snapshot every 50 000
/// entries): it catches up from the log, is not ready until it has, and the leader's
/// status shows its progress.
#[test]
fn a_stopped_follower_catches_up_from_the_log_and_is_not_ready_before() {
    follower_far_behind("behind-stopped-log", Outage::Stopped, None);
}

/// The same with the log purged past it by the smallest snapshot interval
/// (`--snapshot-every 100`, keeping 100 entries behind each snapshot, and at most 1000 for a
/// follower that lags): it catches up by a snapshot, then from the log. (Before the leader
/// kept what followers need next, it installed a full snapshot every ~3 s for ever.)
#[test]
fn a_stopped_follower_catches_up_by_snapshot_once_the_log_is_purged_past_it() {
    follower_far_behind(
        "behind-stopped-snap",
        Outage::Stopped,
        Some(SNAPSHOT_EVERY_MIN),
    );
}

/// The log purged past it with a 1000-entry window (`--snapshot-every 1000`): it catches
/// up by a snapshot, then from the log.
#[test]
fn a_stopped_follower_catches_up_by_snapshot_with_a_1000_entry_log_window() {
    follower_far_behind("behind-stopped-snap1k", Outage::Stopped, Some("1000"));
}

/// Partitioned (both ways) while 200 values of 1 MiB are written, the log kept.
#[test]
fn a_partitioned_follower_catches_up_from_the_log_and_is_not_ready_before() {
    follower_far_behind("behind-cut-log", Outage::Partitioned, None);
}

/// Partitioned while 200 values of 1 MiB are written, the log purged past it
/// (`--snapshot-every 100`).
#[test]
fn a_partitioned_follower_catches_up_by_snapshot_once_the_log_is_purged_past_it() {
    follower_far_behind(
        "behind-cut-snap",
        Outage::Partitioned,
        Some(SNAPSHOT_EVERY_MIN),
    );
}

/// Partitioned, the log purged past it with a 1000-entry window.
#[test]
fn a_partitioned_follower_catches_up_by_snapshot_with_a_1000_entry_log_window() {
    follower_far_behind("behind-cut-snap1k", Outage::Partitioned, Some("1000"));
}

/// `snapshot_every`: `--snapshot-every` (the log is then purged past the follower before
/// the heal: waited for, from the leader's log), or `None` for the default (50 000: the
/// log is kept).
fn follower_far_behind(name: &str, outage: Outage, snapshot_every: Option<&str>) {
    let _serial = one_at_a_time();
    let purge = snapshot_every.is_some();
    let env: Vec<(&str, &str)> = snapshot_every
        .map(|n| ("ORDKV_SNAPSHOT_EVERY", n))
        .into_iter()
        .collect();
    let run = Run::start(name, &env);
    let (sts, l) = (&run.sts, run.leader);
    let f = (l + 1) % 3;
    let others: Vec<usize> = (0..3).filter(|i| *i != f).collect();
    let snapshots_before = sts.logs(f).matches(INSTALLED_SNAPSHOT).count();
    let cut = Instant::now();
    match outage {
        Outage::Stopped => sts.stop(f),
        Outage::Partitioned => {
            sts.drop_from(f, &others);
            for &o in &others {
                sts.drop_from(o, &[f]);
            }
        }
    }
    // The follower has nothing appended after the cut: at most the leader's commit index
    // then, plus what was in flight.
    let has_at_most = run.commit_now() + IN_FLIGHT;
    let t = Instant::now();
    let keys = sts.put_blobs(l, "b", BLOBS, BLOB_SIZE);
    let wrote = t.elapsed();
    let view = sts.status(l);
    let fv = view
        .get(f)
        .expect("the follower in the leader's status")
        .clone();
    sts.say(&format!(
        "{} {outage:?}: {BLOBS} x {BLOB_SIZE} B written through {} in {}; the leader's view \
         of it: reachable {} applied {:?} lag {:?} (leader commit {})",
        pod_name(f),
        pod_name(l),
        secs(wrote),
        fv.reachable,
        fv.applied_index,
        fv.lag,
        view.commit_index
    ));
    // The leader does not pass off a member it does not reach as caught up: its progress
    // is unknown, not a stale figure.
    assert!(
        !fv.reachable && fv.applied_index.is_none() && fv.lag.is_none(),
        "the leader's status shows {} as {fv:?} while it is cut off",
        pod_name(f)
    );
    if purge {
        // The point of the case: the leader no longer has the entries the follower needs.
        let t = Instant::now();
        let upto = sts.wait_until(
            &format!(
                "the leader purged its log past {}'s index (at most {has_at_most})",
                pod_name(f),
            ),
            CONVERGE,
            || match purged_upto(&sts.logs(l)) {
                Some(p) if p > has_at_most => Ok(p),
                other => Err(format!("purged up to {other:?}")),
            },
        );
        sts.say(&format!(
            "the leader purged its log up to {upto} (the follower has at most {has_at_most}) {} \
             after the writes",
            secs(t.elapsed())
        ));
    }
    if outage == Outage::Partitioned {
        let ready = ordkv_tests::http_get(sts.http_addr(f), "/readyz");
        sts.say(&format!(
            "while partitioned, {} answers /readyz: {ready:?}",
            pod_name(f)
        ));
    }

    // Heal.
    match outage {
        Outage::Stopped => sts.start(f),
        Outage::Partitioned => {
            sts.undrop_from(f, &others);
            for &o in &others {
                sts.undrop_from(o, &[f]);
            }
        }
    }
    let healed = Instant::now();
    let out_for = healed - cut;
    let target = sts.status(l).commit_index;
    // Until it applied `target`: is it ready, and what had it applied when it said so?
    let (mut not_ready, mut first_ready): (u32, Option<(Duration, u64)>) = (0, None);
    // Of the not-ready looks, those it answered (not 200) rather than refused.
    let mut said_not_ready = 0u32;
    let caught_up = sts.wait_until(
        &format!("{} applies index {target}", pod_name(f)),
        CATCH_UP,
        || {
            let answer = ordkv_tests::http_get(sts.http_addr(f), "/readyz");
            let ready = matches!(answer, Ok((200, _)));
            if matches!(answer, Ok((code, _)) if code != 200) {
                said_not_ready += 1;
            }
            let s = sts.try_own_status(f);
            let applied = s.as_ref().map_or(0, |s| s.applied_index);
            if ready {
                first_ready.get_or_insert((healed.elapsed(), applied));
            } else {
                not_ready += 1;
            }
            if applied >= target {
                Ok(healed.elapsed())
            } else {
                Err(format!("applied {applied}"))
            }
        },
    );
    let ready_after = match first_ready {
        Some((at, _)) => at,
        None => {
            // Not ready yet: it has reached the heal's commit index, and must keep up with
            // the leader's to become ready.
            let until = Instant::now() + CATCH_UP;
            loop {
                if let Ok((200, _)) = ordkv_tests::http_get(sts.http_addr(f), "/readyz") {
                    break healed.elapsed();
                }
                if Instant::now() >= until {
                    let logs = sts.logs(f);
                    panic!(
                        "{} caught up to index {target} {} after the heal but is still not \
                         ready {} later ({:?}); snapshots installed since the outage: {}; the \
                         leader purged up to {:?}\n{}",
                        pod_name(f),
                        secs(caught_up),
                        secs(CATCH_UP),
                        ordkv_tests::http_get(sts.http_addr(f), "/readyz"),
                        logs.matches(INSTALLED_SNAPSHOT).count() - snapshots_before,
                        purged_upto(&sts.logs(l)),
                        sts.logs_all()
                    );
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    // The leader's status shows it caught up, soon.
    let caught = Instant::now();
    let view = sts.wait_until(
        &format!("the leader's status shows {} caught up", pod_name(f)),
        VIEW_WITHIN,
        || {
            let s = sts.try_status(l)?;
            let m = s.get(f).ok_or("not listed")?.clone();
            if m.reachable
                && m.applied_index.is_some_and(|a| a >= target)
                && m.lag.is_some_and(|lag| lag <= 100)
            {
                Ok(m)
            } else {
                Err(format!("{m:?}"))
            }
        },
    );
    let view_after = caught.elapsed();
    let snapshots = sts.logs(f).matches(INSTALLED_SNAPSHOT).count() - snapshots_before;
    sts.say(&format!(
        "{name}: FIGURES out for {} | caught up (applied {target}) {} after the heal (bound {}) | ready \
         after {} ({not_ready} looks before: not ready, {said_not_ready} of them answered; \
         applied {} when first seen ready during catch-up) | \
         leader's view right {} after catching up (applied {:?} lag {:?}) | snapshots \
         installed {snapshots}",
        secs(out_for),
        secs(caught_up),
        secs(CATCH_UP),
        secs(ready_after),
        first_ready.map_or("-".into(), |(_, a)| a.to_string()),
        secs(view_after),
        view.applied_index,
        view.lag
    ));
    if let Some((at, applied)) = first_ready {
        assert!(
            applied >= target,
            "{} was ready {} after the heal at applied {applied}, short of {target}",
            pod_name(f),
            secs(at)
        );
    }
    if purge {
        assert!(
            snapshots >= 1,
            "the log was not purged past {}: it caught up without a snapshot",
            pod_name(f)
        );
    } else {
        assert_eq!(
            snapshots,
            0,
            "{} needed a snapshot with the log kept",
            pod_name(f)
        );
    }
    let (sts, _report) = run.finish(name, healed, caught_up);
    // Every member serves the 200 values: all keys, and every 20th value checked whole.
    for i in 0..3 {
        let n = sts
            .try_count(i, "b/", Consistency::Serializable)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n as usize, keys.len(), "{} serves {n} values", pod_name(i));
        for (n, key) in keys.iter().enumerate().step_by(20) {
            let got = sts
                .try_get_bytes(i, key, Consistency::Serializable)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(
                got.as_deref() == Some(&blob(n, BLOB_SIZE)[..]),
                "{} serves {key} wrong ({:?} bytes)",
                pod_name(i),
                got.map(|g| g.len())
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 4. A frozen leader
// ---------------------------------------------------------------------------------------

/// How long the leader stays frozen: well past the 1 s election timeout.
const FROZEN: Duration = Duration::from_secs(3);

/// The leader is frozen (`docker pause`) for 3 s under load: the others elect a leader
/// and take writes; thawed, the old leader, which still believes it leads until it hears
/// the new term, is sent linearizable reads at once (and the load's clients pinned to it
/// go on), and serves nothing stale: the history stays linearizable.
#[test]
fn a_leader_frozen_past_the_election_timeout_serves_nothing_stale_when_it_thaws() {
    let _serial = one_at_a_time();
    let name = "frozen-leader";
    let run = Run::start(name, &[]);
    let l = run.leader;
    let others: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    run.sts.pause(l);
    let frozen = Instant::now();
    let acked = run.history.acked_writes();
    let (leader, s) = run.sts.wait_leader(&others);
    let elected = frozen.elapsed();
    std::thread::sleep(FROZEN.saturating_sub(frozen.elapsed()));
    let during = run.history.acked_writes() - acked;
    run.sts.unpause(l);
    let thawed = Instant::now();
    let (answered, failed) = run
        .history
        .read_every_key(l, 4, CONVERGE)
        .unwrap_or_else(|e| panic!("{e}\n{}", run.sts.logs_all()));
    run.sts.say(&format!(
        "{} frozen {}: {} led in term {} after {}, {during} history writes acknowledged \
         meanwhile; thawed, it answered {answered} linearizable reads ({failed} refused or \
         failed) within {}",
        pod_name(l),
        secs(thawed - frozen),
        pod_name(leader),
        s.term,
        secs(elected),
        secs(thawed.elapsed())
    ));
    assert!(
        during >= 5,
        "the majority took only {during} writes while the leader was frozen"
    );
    let target = run.commit_now();
    let converged = run.caught_up(target, thawed);
    run.finish(name, thawed, converged);
}

// ---------------------------------------------------------------------------------------
// 5. A disk that fills up
// ---------------------------------------------------------------------------------------

/// Each member's volume: a 512 MiB tmpfs.
const SMALL_DISK_MB: u64 = 512;
/// `--min-free-bytes` of the members: 160 MiB (more than a 64 MiB log segment, which is
/// taken at once when the log rotates, plus what sled needs for the deletes that free space).
const RESERVE: &str = "167772160";
/// Space taken on every volume by a file that is not ordkv's, removed to give space back.
const FILLER_MB: usize = 160;

/// The volumes fill up under the checked load and 1 MiB puts: the leader refuses writes
/// that add data with RESOURCE_EXHAUSTED (not applied) saying the disk is short, before it
/// is full; linearizable reads go on on every member; once space is back (a file that is
/// not ordkv's removed) writes are accepted again without a restart; nothing acknowledged
/// is lost and the history stays linearizable.
#[test]
fn a_filling_disk_refuses_writes_before_it_is_full_and_takes_them_again_when_space_is_back() {
    let _serial = one_at_a_time();
    let sts = StatefulSet::new("disk-full").small_volumes(SMALL_DISK_MB);
    let run = Run::start_on(sts, "disk-full", &[("ORDKV_MIN_FREE_BYTES", RESERVE)]);
    let (sts, l) = (&run.sts, run.leader);
    let fillers: Vec<_> = (0..3).map(|i| sts.data_path(i).join("filler")).collect();
    for f in &fillers {
        std::fs::write(f, vec![0u8; FILLER_MB << 20]).expect("write the filler file");
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut kv = {
        let _in_rt = rt.enter();
        KvClient::new(channel_to(sts.client_addr(l), Duration::from_secs(10)))
    };
    let started = Instant::now();
    let mut acked = 0;
    let refused = loop {
        let put = rt.block_on(kv.put(PutRequest {
            key: format!("fill/{acked:04}").into(),
            value: blob(acked, BLOB_SIZE).into(),
            prev_kv: false,
            lease: 0,
        }));
        match put {
            Ok(_) => acked += 1,
            Err(s) if s.code() == tonic::Code::ResourceExhausted => break s,
            Err(s) => panic!("put {acked} failed otherwise: {s:?}\n{}", sts.logs_all()),
        }
        assert!(
            acked < SMALL_DISK_MB as usize,
            "{acked} MiB written to {SMALL_DISK_MB} MiB disks and never refused"
        );
    };
    sts.say(&format!(
        "disk-full: refused after {acked} puts of 1 MiB ({}): {}",
        secs(started.elapsed()),
        refused.message()
    ));
    assert!(
        refused.message().contains("bytes free"),
        "{}",
        refused.message()
    );
    assert_eq!(
        refused
            .metadata()
            .get(ordkv_proto::WRITE_OUTCOME_METADATA_KEY)
            .and_then(|v| v.to_str().ok()),
        Some(ordkv_proto::NOT_APPLIED)
    );
    // Linearizable reads go on everywhere while writes are refused.
    for i in 0..3 {
        let got = sts
            .try_get_bytes(i, "fill/0000", Consistency::Linearizable)
            .unwrap_or_else(|e| panic!("read on {} while the disk is short: {e}", pod_name(i)));
        assert_eq!(
            got.as_deref(),
            Some(&blob(0, BLOB_SIZE)[..]),
            "{}",
            pod_name(i)
        );
    }
    // Space comes back: writes are taken again.
    for f in &fillers {
        std::fs::remove_file(f).expect("remove the filler file");
    }
    let back = Instant::now();
    sts.wait_until("writes are accepted again", Duration::from_secs(10), || {
        sts.try_put(l, "after-the-disk", "space is back")
            .map(|_| ())
    });
    sts.say(&format!(
        "disk-full: writes accepted again {} after space came back",
        secs(back.elapsed())
    ));
    let catch_up = run.caught_up(run.commit_now(), back);
    let (_, report) = run.finish("disk-full", back, catch_up);
    // Refused through any member, a write says why the same way (forwarded ones too).
    let other: Vec<_> = report
        .errors
        .iter()
        .filter(|(kind, (_, message))| {
            message.contains("no space") && !kind.contains("ResourceExhausted")
        })
        .collect();
    assert!(
        other.is_empty(),
        "refusals for space with another code: {other:?}"
    );
}
