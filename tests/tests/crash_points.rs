//! Crash points: a member of three exits at a chosen point inside the store
//! (`ORDKV_CRASH_AT`, see `ordkv_store::crash`) under a write load, is restarted without it,
//! and then: every acknowledged write is on every member, the members hold identical data,
//! and the one that crashed serves again. Points: before and after the Raft log's sync (on
//! the leader), in the middle of an apply batch, during a snapshot build, during a snapshot
//! install, and between the two phases of a membership change.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ordkv_proto::v1::{PutRequest, TransferLeaderRequest, kv_client::KvClient};
use ordkv_tests::cluster::{BackgroundWriter, CONVERGE, Cluster, WriterReport, as_strings};
use ordkv_tests::history::HistoryLoad;
use ordkv_tests::linearizability::CheckResult;

/// Deadline of each request of the checked load.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// The most time the linearizability check may take.
const CHECK_BUDGET: Duration = Duration::from_secs(60);

/// A read/write/CAS load over every member, whose history is checked at the end.
fn checked_load(c: &Cluster) -> HistoryLoad {
    let endpoints = c
        .ordinals()
        .into_iter()
        .map(|i| c.node(i).client_socket_addr())
        .collect();
    HistoryLoad::start(endpoints, "h", OP_TIMEOUT)
}

/// `ordkv_store::crash::CRASH_EXIT_CODE`.
const CRASH_EXIT_CODE: i32 = 86;

fn arm(point: &str) -> Vec<(String, String)> {
    vec![("ORDKV_CRASH_AT".to_string(), point.to_string())]
}

/// Waits until member `t` exits by itself at `point`; panics (with the logs) if it does not
/// within `within` or exits otherwise.
async fn crashed(c: &mut Cluster, t: usize, point: &str, within: Duration) -> Duration {
    let started = Instant::now();
    let status = c.node_mut(t).wait_exit(within).await;
    let logs = c.node(t).logs();
    match status {
        Some(s) if s.code() == Some(CRASH_EXIT_CODE) => {
            let name = point.split(':').next().unwrap_or(point);
            assert!(
                logs.contains(&format!("crash point {name} reached")),
                "kv-{t} exited with the crash status but did not log the point\n{logs}"
            );
            started.elapsed()
        }
        Some(s) => panic!("kv-{t} exited with {s}, not at crash point {point}\n{logs}"),
        None => panic!("kv-{t} did not reach crash point {point} within {within:?}\n{logs}"),
    }
}

/// Restarts `t` without the crash point and checks the outcome: every write acknowledged
/// while `writer` ran is on every member, the members agree, `t` serves, and the history of
/// `load` is linearizable.
async fn recovers(
    c: &mut Cluster,
    t: usize,
    writer: BackgroundWriter,
    load: HistoryLoad,
    point: &str,
) {
    c.node_mut(t).set_env(&[]);
    let restart = Instant::now();
    c.node_mut(t).spawn();
    c.wait_ready(t).await;
    let ready = restart.elapsed();
    let more = writer.acked();
    writer.progresses(c, more, 20, "after the restart").await;
    let report: WriterReport = writer.stop().await;
    // The load's own runtime must not be dropped on this one.
    let history = tokio::task::spawn_blocking(move || load.finish(CONVERGE))
        .await
        .expect("history load")
        .unwrap_or_else(|e| panic!("[{point}] {e}"));
    let all: Vec<usize> = c.ordinals();
    let converging = Instant::now();
    let data = c.converged_at_least(&all, 0).await;
    let converged = converging.elapsed();
    let held = as_strings(&data);
    let lost = report.missing_from(&held);
    println!(
        "[{point}] kv-{t}: acknowledged {} writes ({} failed or unknown), lost {}; ready {:.2}s \
         after the restart; all members identical {:.2}s later ({} keys)",
        report.acked.len(),
        report.failed,
        lost.len(),
        ready.as_secs_f64(),
        converged.as_secs_f64(),
        held.len()
    );
    let (verdict, took) = history.check(CHECK_BUDGET);
    let (gap, gap_at) = history.longest_write_gap();
    println!(
        "[{point}] FIGURES ops checked {} | acknowledged writes {} (lost {}) | linearizable {} \
         ({:.2}s) | longest write gap of the checked load {:.2}s (at {:.2}s) | leader changes {}",
        history.events.len(),
        report.acked.len() + history.writes.len(),
        lost.len(),
        verdict == CheckResult::Ok,
        took.as_secs_f64(),
        gap.as_secs_f64(),
        gap_at.as_secs_f64(),
        history.leader_changes()
    );
    assert!(
        lost.is_empty(),
        "[{point}] {} acknowledged writes lost, first {:?}",
        lost.len(),
        lost.first()
    );
    assert_eq!(verdict, CheckResult::Ok, "[{point}] {}", history.summary());
    // The member that crashed answers a linearizable read of the last acknowledged write.
    let (key, value) = report.acked.last().expect("some writes were acknowledged");
    let mut kv = KvClient::new(c.channel(t, Duration::from_secs(5)));
    let got = kv
        .get(ordkv_proto::v1::GetRequest {
            key: Bytes::from(key.clone()),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("[{point}] kv-{t} does not serve after recovery: {e}"))
        .into_inner();
    assert_eq!(got.kv.map(|kv| kv.value), Some(Bytes::from(value.clone())));
}

/// Arms member `t` with `point` (a restart with `ORDKV_CRASH_AT`) and makes it lead, so
/// that the point is reached on the leader's write path.
async fn arm_and_lead(c: &mut Cluster, t: usize, point: &str) {
    c.kill_9(t);
    c.node_mut(t).set_env(&arm(point));
    c.restart(t).await;
    let leader = c.leader().await;
    if leader != t {
        let mut cluster = c.cluster_client(leader);
        cluster
            .transfer_leader(TransferLeaderRequest { ordinal: t as u32 })
            .await
            .unwrap_or_else(|e| panic!("transfer leadership to kv-{t}: {e}"));
    }
    c.wait_until(&format!("kv-{t} leads"), CONVERGE, || async {
        match c.leader().await {
            l if l == t => Ok(()),
            l => Err(format!("kv-{l} leads")),
        }
    })
    .await;
}

/// A crash on the leader's write path: the point `point` (e.g. `wal.before_sync:200`, the
/// 200th pass) is reached under the writer's load.
async fn leader_crashes_at(point: &str) {
    let mut c = Cluster::start(3, &[]).await;
    let t = (c.leader().await + 1) % 3;
    arm_and_lead(&mut c, t, point).await;
    let writer = BackgroundWriter::start(&c, &[0, 1, 2], "w/");
    let load = checked_load(&c);
    let took = crashed(&mut c, t, point, CONVERGE).await;
    let at = writer.acked();
    println!(
        "[{point}] kv-{t} crashed {:.2}s into the load",
        took.as_secs_f64()
    );
    // The others go on without it.
    writer
        .progresses(&c, at, 20, "without the crashed member")
        .await;
    recovers(&mut c, t, writer, load, point).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_crashing_before_its_log_sync_loses_no_acknowledged_write() {
    leader_crashes_at("wal.before_sync:200").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_crashing_after_its_log_sync_loses_no_acknowledged_write() {
    leader_crashes_at("wal.after_sync:200").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_crashing_in_the_middle_of_an_apply_batch_recovers_its_state() {
    leader_crashes_at("apply.mid_batch:200").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_crashing_during_a_snapshot_build_recovers() {
    // Snapshots every 100 entries; the armed member crashes writing its first one.
    let mut c = Cluster::start(3, &["--snapshot-every", "100"]).await;
    let t = (c.leader().await + 1) % 3;
    c.kill_9(t);
    c.node_mut(t).set_env(&arm("snapshot.build"));
    c.restart(t).await;
    let writer = BackgroundWriter::start(&c, &[0, 1, 2], "w/");
    let load = checked_load(&c);
    let took = crashed(&mut c, t, "snapshot.build", CONVERGE).await;
    println!(
        "[snapshot.build] kv-{t} crashed {:.2}s into the load",
        took.as_secs_f64()
    );
    let at = writer.acked();
    writer
        .progresses(&c, at, 20, "without the crashed member")
        .await;
    recovers(&mut c, t, writer, load, "snapshot.build").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_crashing_during_a_snapshot_install_recovers() {
    let mut c = Cluster::start(3, &["--snapshot-every", "100"]).await;
    let t = (c.leader().await + 1) % 3;
    // Stopped while the leader's log moves on past what it keeps for a lagging follower
    // (ten times 100 entries), so that it must be sent a snapshot.
    let had = c.status(t).await.applied_index;
    c.kill_9(t);
    let leader = c.leader().await;
    let mut kv = KvClient::new(c.channel(leader, Duration::from_secs(5)));
    for i in 0..1500 {
        kv.put(PutRequest {
            key: Bytes::from(format!("pre/{i:05}")),
            value: Bytes::from(format!("v{i}")),
            prev_kv: false,
            lease: 0,
        })
        .await
        .unwrap_or_else(|e| panic!("put {i}: {e}"));
    }
    c.wait_purged_past(leader, had + 100).await;
    c.node_mut(t).set_env(&arm("snapshot.install"));
    let writer = BackgroundWriter::start(&c, &[(t + 1) % 3, (t + 2) % 3], "w/");
    let load = checked_load(&c);
    c.node_mut(t).spawn();
    let took = crashed(&mut c, t, "snapshot.install", CONVERGE).await;
    println!(
        "[snapshot.install] kv-{t} crashed {:.2}s after its start",
        took.as_secs_f64()
    );
    recovers(&mut c, t, writer, load, "snapshot.install").await;
    let pre = c.range(t, ordkv_proto::v1::Consistency::Serializable).await;
    let pre = pre.iter().filter(|kv| kv.key.starts_with(b"pre/")).count();
    assert_eq!(
        pre, 1500,
        "the keys written while it was stopped are on the restarted member"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_crashing_between_the_two_phases_of_a_membership_change_recovers() {
    // kv-3 joins and is promoted to voter: a joint configuration, then the new one. The
    // armed member crashes when it applies the joint one; the others (a majority of both
    // configurations) finish the change.
    let mut c = Cluster::start_planned(3, 4, &[]).await;
    let t = (c.leader().await + 1) % 3;
    c.kill_9(t);
    c.node_mut(t).set_env(&arm("apply.joint_membership"));
    c.restart(t).await;
    let writer = BackgroundWriter::start(&c, &[(t + 1) % 3, (t + 2) % 3], "w/");
    let load = checked_load(&c);
    c.add_member(3).await;
    let took = crashed(&mut c, t, "apply.joint_membership", CONVERGE).await;
    println!(
        "[apply.joint_membership] kv-{t} crashed {:.2}s after kv-3 was ready",
        took.as_secs_f64()
    );
    c.wait_voters(4).await;
    recovers(&mut c, t, writer, load, "apply.joint_membership").await;
}
