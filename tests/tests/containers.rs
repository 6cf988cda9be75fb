//! ordkv as a StatefulSet on the Docker engine (`ordkv_tests::containers`): the `ordkv:dev`
//! image, one container per pod with the pod's DNS names, one volume per ordinal, and the
//! behaviours of the StatefulSet walkthrough in `/work/shared/seed` reproduced end to end:
//! stable names and DNS records, one writer and read replicas, a deleted pod coming back as
//! itself, `kubectl scale` in one step (up, down, to zero and back) on retained volumes, a
//! killed leader, a lost volume, a full stop, a rolling restart under load, and a
//! partitioned leader. Scale tests serve the pods the Kubernetes API slice they read their
//! StatefulSet from ([`StatefulSet::with_kube_api`]).
//!
//! Each test owns its set (its own network, containers and volumes, removed on drop), so
//! they run in parallel and fail independently; figures are printed (`--nocapture`).
//! Needs a docker engine; the image is built by `deploy/docker/build.sh` on first use.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ordkv_proto::v1::Consistency;
use ordkv_tests::containers::{
    CONVERGE, LoadReport, READ_SERVICE_DNS, SERVICE_DNS, StatefulSet, Status, WriteLoad, pod_dns,
    pod_endpoint, pod_name, voters,
};

/// Deadline of each write of the background loads: longer means an unknown outcome.
const LOAD_OP_TIMEOUT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A client container's `ordkv <args>`; panics with both streams and the logs unless it
/// exits 0; returns stdout.
fn client_ok(sts: &StatefulSet, args: &[&str]) -> String {
    let out = sts.client(args);
    assert!(
        out.status.success(),
        "ordkv {args:?} from a client pod failed\n{out}\n{}",
        sts.logs_all()
    );
    out.stdout_str()
}

/// `ordkv --endpoints <endpoint> cluster status -o json` from a client pod.
fn status_via(sts: &StatefulSet, endpoint: &str) -> Status {
    let text = client_ok(
        sts,
        &["--endpoints", endpoint, "cluster", "status", "-o", "json"],
    );
    Status::parse(&text).unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until ordinal `i` serves exactly `expected` under `prefix` from its local state.
fn wait_serves(sts: &StatefulSet, i: usize, prefix: &str, expected: &BTreeMap<String, String>) {
    sts.wait_until(
        &format!(
            "{} serves the {} keys under {prefix:?}",
            pod_name(i),
            expected.len()
        ),
        CONVERGE,
        || {
            let got = sts.try_scan(i, prefix, Consistency::Serializable)?;
            if &got == expected {
                Ok(())
            } else {
                Err(describe_diff(expected, &got))
            }
        },
    );
}

/// What differs between two key maps, briefly.
fn describe_diff(expected: &BTreeMap<String, String>, got: &BTreeMap<String, String>) -> String {
    let missing: Vec<&String> = expected.keys().filter(|k| !got.contains_key(*k)).collect();
    let wrong: Vec<&String> = expected
        .iter()
        .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
        .map(|(k, _)| k)
        .collect();
    let extra: Vec<&String> = got.keys().filter(|k| !expected.contains_key(*k)).collect();
    format!(
        "{} keys expected, {} served: {} missing (first {:?}), {} wrong (first {:?}), {} \
         unexpected (first {:?})",
        expected.len(),
        got.len(),
        missing.len(),
        missing.first(),
        wrong.len(),
        wrong.first(),
        extra.len(),
        extra.first()
    )
}

/// The acknowledged writes of a load that `served` lacks or holds with another value.
fn lost_writes(report: &LoadReport, served: &BTreeMap<String, String>) -> Vec<String> {
    report
        .acked
        .iter()
        .filter(|a| served.get(&a.key) != Some(&a.value))
        .map(|a| {
            format!(
                "{}={} (acknowledged at {:.2}s)",
                a.key,
                a.value,
                a.at.as_secs_f64()
            )
        })
        .collect()
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// Creates `n` replicas and waits until all are ready and `ordkv-0` leads all of them as
/// voters. Returns the leader's status.
fn start(sts: &mut StatefulSet, n: usize) -> Status {
    let started = Instant::now();
    sts.scale_to(n);
    sts.wait_all_ready();
    let (leader, status) = sts.wait_membership(&(0..n).collect::<Vec<_>>(), &voters(0..n));
    assert_eq!(
        leader, 0,
        "ordinal 0 bootstraps and leads first: {status:?}"
    );
    sts.say(&format!(
        "{n} members ready, ordkv-0 leading {n} voters, after {}",
        secs(started.elapsed())
    ));
    status
}

// ---------------------------------------------------------------------------------------
// 1 + 2 + 3: names, DNS, one writer and read replicas, a deleted pod
// ---------------------------------------------------------------------------------------

/// Three pods: `ordkv-0` leads three voters; every per-pod name reaches its own member and
/// resolves to its pod's IP; the headless and read Services resolve to all three. A write
/// through `ordkv-0` is read back from `ordkv-1`, `ordkv-2` and the read Service; a write
/// through a follower is forwarded. Deleting `ordkv-2`'s container brings back `ordkv-2`
/// with the same node id and its data.
#[test]
fn stable_names_reads_everywhere_and_a_deleted_pod_returns_as_itself() {
    let mut sts = StatefulSet::new("identity");
    start(&mut sts, 3);

    // 1. As ordkv-0 sees it.
    let s0 = sts.status(0);
    assert_eq!(s0.member, "ordkv-0");
    assert_eq!(s0.leader, Some(0), "{s0:?}");
    assert_eq!(s0.roles(), voters(0..3), "{s0:?}");
    assert!(s0.members.iter().all(|m| m.reachable), "{s0:?}");
    let ids: BTreeSet<u64> = s0.members.iter().map(|m| m.node_id).collect();
    assert_eq!(ids.len(), 3, "distinct node ids: {s0:?}");
    sts.say(&format!(
        "cluster {} term {}: {:?}",
        s0.cluster_id,
        s0.term,
        s0.node_ids()
    ));

    // Container i is member ordkv-i (its own view, over its published port)...
    for i in 0..3 {
        let own = sts.try_own_status(i).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(own.member, pod_name(i));
        assert_eq!(own.cluster_id, s0.cluster_id);
        assert_eq!(own.get(i).map(|m| m.node_id), s0.get(i).map(|m| m.node_id));
    }
    // ...each pod name, full and short (search domains), is served from inside the network
    // (`cluster status` through it; the CLI shows the leader's view)...
    for i in 0..3 {
        for name in [pod_dns(i), format!("{}.ordkv", pod_name(i))] {
            let s = status_via(&sts, &format!("{name}:7379"));
            assert_eq!(s.cluster_id, s0.cluster_id, "{name}");
            assert_eq!(s.leader, Some(0), "{name}: {s:?}");
            assert_eq!(s.roles(), voters(0..3), "{name}: {s:?}");
        }
    }
    // ...and resolves to its own pod's IP: the A records, as `host` shows them in the
    // walkthrough.
    let ips: BTreeMap<usize, std::net::Ipv4Addr> =
        (0..3).map(|i| (i, sts.ip(i).expect("pod IP"))).collect();
    sts.say(&format!("pod IPs: {ips:?}"));
    if StatefulSet::getent_available() {
        for i in 0..3 {
            for name in [pod_dns(i), format!("{}.ordkv", pod_name(i))] {
                let got = sts.lookup(&name).expect("lookup");
                assert_eq!(got, BTreeSet::from([ips[&i]]), "{name}");
            }
        }
        let all: BTreeSet<_> = ips.values().copied().collect();
        for name in [SERVICE_DNS, "ordkv", READ_SERVICE_DNS, "ordkv-read"] {
            assert_eq!(sts.lookup(name).expect("lookup"), all, "{name}");
        }
        sts.say("A records: each pod name -> its pod IP; ordkv and ordkv-read -> all three");
    } else {
        sts.say("no getent/libc on the host: A-record listing skipped");
    }

    // 2. One writer, read replicas.
    assert_eq!(
        client_ok(
            &sts,
            &["--endpoints", &pod_endpoint(0), "put", "greeting", "hello"]
        ),
        "OK\n"
    );
    for i in [1, 2] {
        let got = client_ok(&sts, &["--endpoints", &pod_endpoint(i), "get", "greeting"]);
        assert_eq!(got, "hello\n", "linearizable read on {}", pod_name(i));
        sts.wait_until(
            &format!("a serializable read on {} returns the write", pod_name(i)),
            CONVERGE,
            || match sts.try_get(i, "greeting", Consistency::Serializable)? {
                Some(v) if v == "hello" => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }
    for read in [
        format!("{READ_SERVICE_DNS}:7379"),
        "ordkv-read:7379".to_string(),
    ] {
        let got = client_ok(&sts, &["--endpoints", &read, "get", "greeting"]);
        assert_eq!(got, "hello\n", "read through {read}");
        let got = client_ok(
            &sts,
            &[
                "--endpoints",
                &read,
                "get",
                "greeting",
                "--consistency",
                "serializable",
            ],
        );
        assert_eq!(got, "hello\n", "serializable read through {read}");
    }
    // A write sent to a follower is forwarded to the leader.
    assert_eq!(
        client_ok(
            &sts,
            &[
                "--endpoints",
                &pod_endpoint(1),
                "put",
                "via-follower",
                "fwd"
            ]
        ),
        "OK\n"
    );
    assert_eq!(
        client_ok(
            &sts,
            &["--endpoints", &pod_endpoint(0), "get", "via-follower"]
        ),
        "fwd\n"
    );
    let missing = sts.client(&["--endpoints", &pod_endpoint(2), "get", "no-such-key"]);
    assert_eq!(missing.status.code(), Some(1), "{missing}");
    assert_eq!(missing.stderr.trim(), "not found", "{missing}");

    // 3. Delete ordkv-2's container: the controller recreates it with the same name and
    // volume; it is the same member (node id) with the same data.
    let before = sts.status(0);
    let id2 = before.get(2).expect("ordkv-2 listed").node_id;
    let ip_before = ips[&2];
    let deleted = Instant::now();
    sts.delete_pod(2);
    sts.wait_ready(2);
    let back_after = deleted.elapsed();
    let s2 = sts.try_own_status(2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s2.member, "ordkv-2");
    assert_eq!(s2.cluster_id, before.cluster_id);
    assert_eq!(
        s2.get(2).map(|m| m.node_id),
        Some(id2),
        "ordkv-2's own view: {s2:?}"
    );
    let (_, after) = sts.wait_membership(&[0, 1, 2], &voters(0..3));
    assert_eq!(
        after.node_ids(),
        before.node_ids(),
        "membership after the delete"
    );
    for (key, value) in [("greeting", "hello"), ("via-follower", "fwd")] {
        let got = sts.exec(2, &["get", key, "--consistency", "serializable"]);
        assert!(got.status.success(), "{got}");
        assert_eq!(got.stdout_str(), format!("{value}\n"), "{key} on ordkv-2");
    }
    sts.say(&format!(
        "ordkv-2 deleted and back as node {id2} (IP {ip_before} -> {:?}) ready after {}",
        sts.ip(2),
        secs(back_after)
    ));
}

/// With `ORDKV_REJECT_FOLLOWER_WRITES=true`, followers are read-only replicas: a write to
/// `ordkv-1` fails with FAILED_PRECONDITION naming the leader and changes nothing; reads
/// on it still work.
#[test]
fn read_only_replicas_refuse_writes_and_name_the_leader() {
    let mut sts = StatefulSet::new("readonly").env("ORDKV_REJECT_FOLLOWER_WRITES", "true");
    start(&mut sts, 3);

    assert_eq!(
        client_ok(&sts, &["--endpoints", &pod_endpoint(0), "put", "k", "v1"]),
        "OK\n"
    );
    let refused = sts.client(&["--endpoints", &pod_endpoint(1), "put", "k", "v2"]);
    assert_eq!(refused.status.code(), Some(1), "{refused}");
    assert_eq!(refused.stdout_str(), "", "{refused}");
    let leader = format!("read-only replica; leader is {}", pod_endpoint(0));
    assert!(
        refused.stderr.contains("FAILED_PRECONDITION") && refused.stderr.contains(&leader),
        "expected FAILED_PRECONDITION and {leader:?}\n{refused}"
    );
    sts.say(&format!(
        "write to ordkv-1 refused: {}",
        refused.stderr.trim()
    ));
    // Nothing changed; the replica still serves reads.
    for i in 0..3 {
        let got = client_ok(&sts, &["--endpoints", &pod_endpoint(i), "get", "k"]);
        assert_eq!(got, "v1\n", "k on {}", pod_name(i));
    }
    let s = sts.status(0);
    assert_eq!(
        s.revision, 1,
        "only the leader's write created a revision: {s:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 4 + 5: scale up, down, to zero and up again in one step, by the StatefulSet's intent
// ---------------------------------------------------------------------------------------

/// What one scaling step did: how long until the membership matched `spec.replicas`, and
/// what the writer saw meanwhile.
struct Step {
    what: String,
    to_membership: Duration,
    report: LoadReport,
}

impl Step {
    fn line(&self) -> String {
        let (gap, _) = self.report.longest_gap();
        format!(
            "{}: membership matched after {}, longest write gap {}, {} writes acknowledged, \
             {} failed attempts",
            self.what,
            secs(self.to_membership),
            secs(gap),
            self.report.acked.len(),
            self.report.failed_attempts
        )
    }
}

/// One step of `kubectl scale`: a writer through the ordinals that stay (`0..writers`)
/// runs while `spec.replicas` goes to `n` and the pods follow, until the membership is the
/// voters `0..n` and the writer made 20 more writes. Every acknowledged write
/// must be served by the leader afterwards.
fn scale_step(sts: &mut StatefulSet, prefix: &str, n: usize) -> Step {
    let writers: Vec<_> = (0..n.min(2)).map(|i| sts.client_addr(i)).collect();
    let load = WriteLoad::start_with(writers, prefix, LOAD_OP_TIMEOUT, sts.client_tls());
    sts.wait_until("the writer runs", CONVERGE, || {
        (load.acked() >= 10)
            .then_some(())
            .ok_or(format!("{} acknowledged", load.acked()))
    });
    let from = sts.pods().len();
    let t = Instant::now();
    sts.scale_to(n);
    let ordinals: Vec<usize> = (0..n).collect();
    let (leader, _) = sts.wait_membership(&ordinals, &voters(0..n));
    let to_membership = t.elapsed();
    let at = load.acked();
    sts.wait_until("20 more writes", CONVERGE, || {
        (load.acked() >= at + 20)
            .then_some(())
            .ok_or(format!("{} acknowledged", load.acked()))
    });
    let report = load.stop();
    let served = sts.scan(leader, &format!("{prefix}/"), Consistency::Linearizable);
    let lost = lost_writes(&report, &served);
    let step = Step {
        what: format!("{from} -> {n}"),
        to_membership,
        report,
    };
    sts.say(&format!(
        "{}; acknowledged writes lost: {}",
        step.line(),
        lost.len()
    ));
    assert_eq!(lost, Vec::<String>::new(), "acknowledged writes lost");
    step
}

/// How many times ordinal `i`'s logs (all its containers') say it left on purpose.
fn times_left(sts: &StatefulSet, i: usize) -> usize {
    sts.logs_of(i).matches("leaving: scaled to").count()
}

fn left(sts: &StatefulSet, i: usize) -> bool {
    times_left(sts, i) > 0
}

/// The walkthrough's sequence, each in one `kubectl scale`, with the dead-member timeout at
/// its default (10 minutes, so only intent can remove anybody in time): 3 -> 4 (ordkv-3
/// joins from a snapshot and serves every key), 4 -> 2 (two voters of four leave at once and
/// the quorum holds), 2 -> 4 (they come back on their volumes), 4 -> 0 (a stop: nobody
/// leaves), 0 -> 3 (the same cluster with its data; ordkv-3, gone with the count below
/// it, is removed by intent). A writer runs through every step but the stop.
#[test]
fn walkthrough_scaling_in_one_step_by_intent() {
    let mut sts = StatefulSet::new("walkthrough")
        .with_kube_api()
        .env("ORDKV_SNAPSHOT_EVERY", "100");
    let before = start(&mut sts, 3);
    let mut written = sts.put_many(0, "seed", 150);
    let mut steps = Vec::new();

    steps.push(scale_step(&mut sts, "w34", 4));
    let served = sts.scan(3, "seed/", Consistency::Serializable);
    assert!(served == written, "{}", describe_diff(&written, &served));

    steps.push(scale_step(&mut sts, "w42", 2));
    assert_eq!(sts.volumes(), vec![0, 1, 2, 3], "volumes are retained");
    for i in [2, 3] {
        assert!(left(&sts, i), "{} did not log that it left", pod_name(i));
    }
    written.extend(sts.put_many(1, "two", 20));

    steps.push(scale_step(&mut sts, "w24", 4));
    for i in [2, 3] {
        sts.wait_ready(i);
        wait_serves(
            &sts,
            i,
            "two/",
            &sts.scan(0, "two/", Consistency::Linearizable),
        );
    }
    let at_four = sts.status(0);
    let departures: Vec<usize> = (0..4).map(|i| times_left(&sts, i)).collect();

    // 4 -> 0 is a stop: every pod terminated at once, nobody removed.
    let t = Instant::now();
    sts.scale_to(0);
    sts.say(&format!(
        "4 -> 0: every pod gone after {}",
        secs(t.elapsed())
    ));
    assert_eq!(sts.pods(), Vec::<usize>::new());
    let after: Vec<usize> = (0..4).map(|i| times_left(&sts, i)).collect();
    assert_eq!(after, departures, "a member left on a scale to zero");

    let t = Instant::now();
    sts.scale_to(3);
    sts.wait_all_ready();
    let (leader, back) = sts.wait_membership(&[0, 1, 2], &voters(0..3));
    sts.say(&format!(
        "0 -> 3: ready with voters 0..3 after {} (leader ordkv-{leader}, term {} -> {})",
        secs(t.elapsed()),
        at_four.term,
        back.term
    ));
    assert_eq!(
        back.cluster_id, before.cluster_id,
        "the same cluster came back"
    );
    let ids = |s: &Status| s.node_ids().into_iter().take(3).collect::<Vec<_>>();
    assert_eq!(ids(&back), ids(&at_four), "members came back as themselves");
    for i in 0..3 {
        wait_serves(
            &sts,
            i,
            "",
            &sts.scan(leader, "", Consistency::Linearizable),
        );
    }
    let served = sts.scan(leader, "", Consistency::Linearizable);
    let kept: Vec<_> = written
        .iter()
        .filter(|(k, v)| served.get(*k) != Some(v))
        .collect();
    assert!(kept.is_empty(), "keys written before lost: {kept:?}");
    steps.push(scale_step(&mut sts, "w33", 3));
    sts.say(&format!(
        "the walkthrough by intent:\n  {}",
        steps
            .iter()
            .map(Step::line)
            .collect::<Vec<_>>()
            .join("\n  ")
    ));
}

/// 5 -> 2 in one step with the leader among the three that go: it hands leadership to a
/// member that stays, the three are removed one at a time while still up, and the two left
/// keep taking writes.
#[test]
fn five_to_two_in_one_step_with_the_leader_leaving() {
    let mut sts = StatefulSet::new("leaderleaves").with_kube_api();
    start(&mut sts, 5);
    let out = sts.exec(0, &["cluster", "transfer-leader", "4"]);
    assert!(out.status.success(), "transfer-leader 4\n{out}");
    let (leader, _) = sts.wait_leader(&[0, 1, 2, 3, 4]);
    assert_eq!(leader, 4, "ordkv-4 leads before the scale-down");

    scale_step(&mut sts, "w52", 2);
    for i in 2..5 {
        assert!(left(&sts, i), "{} did not log that it left", pod_name(i));
    }
}

/// 4 -> 2 where one of the two pods that go is SIGKILLed first (a crash, no goodbye): the
/// other leaves on SIGTERM, and the leader removes the dead one by intent at once, without
/// the dead-member timeout (10 minutes by default).
#[test]
fn four_to_two_with_a_leaving_pod_killed_is_removed_by_intent() {
    let mut sts = StatefulSet::new("killedleaver").with_kube_api();
    start(&mut sts, 4);
    sts.kill(3);
    scale_step(&mut sts, "w42k", 2);
    assert!(left(&sts, 2), "ordkv-2 did not log that it left");
    let (leader, _) = sts.wait_leader(&[0, 1]);
    let metrics = ordkv_tests::http_get(sts.http_addr(leader), "/metrics")
        .unwrap_or_else(|e| panic!("metrics of ordkv-{leader}: {e}"))
        .1;
    let removed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ordkv_members_removed_by_scale_intent_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64);
    assert!(
        removed >= 1,
        "the leader counts no member removed by intent:\n{metrics}"
    );
}

/// Without the API (down from the start here; the same as Docker compose or no RBAC) a
/// member says why once, `cluster status` shows it, and scale-down falls back to today's
/// rule: 5 -> 2 at once leaves two voters of five, which must refuse writes rather than
/// risk acknowledged ones, and nobody can be removed. The pods coming back on their
/// volumes restore the quorum with every acknowledged write.
#[test]
fn without_the_api_a_majority_scaled_away_at_once_stops_writes_until_it_returns() {
    let mut sts = StatefulSet::new("noapi").with_kube_api();
    sts.kube_api().set_down(true);
    start(&mut sts, 5);
    let s = sts.status(0);
    assert!(
        s.scale_intent.starts_with("unavailable ("),
        "cluster status shows no reason: {s:?}"
    );
    let logs = sts.logs(0);
    let said: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("scale-down waits for the dead-member timeout"))
        .collect();
    assert_eq!(said.len(), 1, "said once, with why: {said:?}");
    sts.say(&format!("without the API: {}", s.scale_intent));

    sts.try_put(0, "before", "1")
        .unwrap_or_else(|e| panic!("{e}\n{}", sts.logs_all()));
    sts.scale_to(2);
    assert_eq!(sts.pods(), vec![0, 1]);
    let refused = sts.try_put(0, "during", "1");
    assert!(
        refused.is_err(),
        "two of five voters acknowledged a write: {refused:?}"
    );
    let t = Instant::now();
    sts.scale_to(5);
    let mut n = 0;
    sts.wait_until("the five voters take writes again", CONVERGE, || {
        n += 1;
        sts.try_put(0, &format!("after-{n}"), "1").map(|_| ())
    });
    sts.say(&format!(
        "writable again {} after the pods returned",
        secs(t.elapsed())
    ));
    let mut expected = BTreeMap::new();
    expected.insert("before".to_string(), "1".to_string());
    wait_serves(&sts, 4, "before", &expected);
    sts.wait_membership(&[0, 1, 2, 3, 4], &voters(0..5));
}

/// SIGTERM must not wait for a client that stopped reading: here a connection that sent
/// the HTTP/2 preface and SETTINGS, then went silent (a hung client process, or one behind
/// a black-holed network). The member should stop well within the grace period and exit 0
/// (after handing off leadership and flushing), not be SIGKILLed when it runs out.
///
/// (The gRPC server's graceful shutdown alone would wait for every connection to close:
/// GOAWAY + PING that the silent client never acknowledges, then SIGKILL after 30 s.)
#[test]
fn sigterm_is_not_held_up_by_a_silent_client_connection() {
    use std::io::Write;
    let mut sts = StatefulSet::new("silentclient");
    start(&mut sts, 1);
    let mut silent = std::net::TcpStream::connect(sts.client_addr(0)).expect("connect");
    silent
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .expect("HTTP/2 preface and SETTINGS");
    // The server has the connection (answer any request on another connection first).
    sts.try_put(0, "k", "v")
        .unwrap_or_else(|e| panic!("{e}\n{}", sts.logs_all()));
    let t = Instant::now();
    sts.stop(0);
    let took = t.elapsed();
    let (state, code) = sts.state(0);
    sts.say(&format!(
        "docker stop with a silent client connection took {} ({state}, exit code {code})",
        secs(took)
    ));
    let logs = sts.logs(0);
    assert!(
        took < Duration::from_secs(10) && code == 0,
        "SIGTERM took {} and exited {code} (137 = SIGKILLed after the grace period); last \
         log lines:\n{}",
        secs(took),
        logs.lines()
            .skip(logs.lines().count().saturating_sub(5))
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(silent);
}

// ---------------------------------------------------------------------------------------
// 6: a killed leader
// ---------------------------------------------------------------------------------------

/// `docker kill` the leader under a steady write load: the two others elect a new leader
/// within seconds, and every write acknowledged before (and after) the kill is readable.
/// The killed pod is started again and catches up.
#[test]
fn killed_leader_fails_over_without_losing_acknowledged_writes() {
    leader_failover(StatefulSet::new("failover"));
}

/// The same with TLS on, certificates issued and mounted as `deploy/kubernetes/tls/` has
/// cert-manager do it (one Secret with the member wildcard): members dial each other by
/// their StatefulSet DNS names and admit each other by the names in their certificates.
#[test]
fn killed_leader_fails_over_without_losing_acknowledged_writes_over_tls() {
    let sts = StatefulSet::new("failover-tls").with_tls();
    leader_failover(sts);
}

fn leader_failover(mut sts: StatefulSet) {
    start(&mut sts, 3);
    let load = WriteLoad::start_with(
        (0..3).map(|i| sts.client_addr(i)).collect(),
        "load",
        LOAD_OP_TIMEOUT,
        sts.client_tls(),
    );
    sts.wait_until("the load made 100 writes", CONVERGE, || {
        (load.acked() >= 100)
            .then_some(())
            .ok_or(format!("{} acknowledged", load.acked()))
    });

    let acked_before_kill = load.acked();
    let killed = Instant::now();
    sts.kill(0);
    let (leader, s) = sts.wait_leader(&[1, 2]);
    let failover = killed.elapsed();
    let elected = load.acked();
    sts.wait_until("the load made 100 more writes", CONVERGE, || {
        (load.acked() >= elected + 100)
            .then_some(())
            .ok_or(format!("{} acknowledged", load.acked()))
    });
    let report = load.stop();
    let (gap, gap_at) = report.longest_gap();
    sts.say(&format!(
        "leader ordkv-0 killed after {acked_before_kill} acknowledged writes: ordkv-{leader} \
         leads (term {}) {} later; longest write gap {} (from {:.2}s); {} writes \
         acknowledged, {} failed attempts; errors: {:?}",
        s.term,
        secs(failover),
        secs(gap),
        gap_at.as_secs_f64(),
        report.acked.len(),
        report.failed_attempts,
        report.sample_errors
    ));
    assert!(
        failover < Duration::from_secs(15),
        "failover took {}",
        secs(failover)
    );

    let served = sts.scan(leader, "load/", Consistency::Linearizable);
    let lost = lost_writes(&report, &served);
    sts.say(&format!("acknowledged writes lost: {}", lost.len()));
    assert_eq!(lost, Vec::<String>::new(), "acknowledged writes lost");

    // The killed pod comes back (kubelet restarts it) and catches up.
    sts.start(0);
    sts.wait_ready(0);
    let (_, s) = sts.wait_membership(&[0, 1, 2], &voters(0..3));
    assert_eq!(
        s.leader,
        Some(leader as u32),
        "the restarted pod did not take over"
    );
    wait_serves(&sts, 0, "load/", &served);
}

/// A killed follower shows up as `reachable: false` in the leader's `cluster status` (the
/// field means "whether the answering member currently reaches it") within seconds.
///
/// (Replication progress alone, "has a matched log index", outlives the follower: a dead
/// member would stay reachable in the leader's view.)
#[test]
fn status_shows_a_killed_follower_unreachable() {
    let mut sts = StatefulSet::new("reachable");
    start(&mut sts, 3);
    sts.kill(2);
    let t = Instant::now();
    sts.wait_until(
        "the leader's status shows the killed ordkv-2 unreachable",
        Duration::from_secs(15),
        || {
            let s = sts.try_status(0)?;
            match s.get(2) {
                Some(m) if !m.reachable => Ok(()),
                other => Err(format!("leader {:?} lists {other:?}", s.leader)),
            }
        },
    );
    sts.say(&format!(
        "ordkv-2 shown unreachable {} after the kill",
        secs(t.elapsed())
    ));
}

// ---------------------------------------------------------------------------------------
// 7: a lost volume on ordinal 0
// ---------------------------------------------------------------------------------------

/// `ordkv-0` loses its volume and comes back empty: it joins the existing cluster (same
/// cluster id everywhere, a new node id replacing the old one, every key) instead of
/// bootstrapping a second cluster.
#[test]
fn wiped_ordinal_zero_joins_the_existing_cluster() {
    let mut sts = StatefulSet::new("wipe0");
    let before = start(&mut sts, 3);
    let written = sts.put_many(0, "w", 50);
    let old_id = before.get(0).expect("ordkv-0").node_id;

    let t = Instant::now();
    sts.wipe_volume(0);
    sts.wait_ready(0);
    let ready = t.elapsed();
    let (leader, s) = sts.wait_membership(&[0, 1, 2], &voters(0..3));
    let new_id = s.get(0).expect("ordkv-0").node_id;
    sts.say(&format!(
        "ordkv-0 wiped: ready after {}, member again as node {new_id} (was {old_id}), \
         leader ordkv-{leader}, membership complete after {}",
        secs(ready),
        secs(t.elapsed())
    ));
    assert_ne!(new_id, old_id, "a wiped volume must not reuse its node id");
    for (i, m) in s.members.iter().enumerate().skip(1) {
        assert_eq!(
            m.node_id, before.members[i].node_id,
            "{} kept its node id",
            m.name
        );
    }
    for i in 0..3 {
        let si = sts.status(i);
        assert_eq!(
            si.cluster_id, before.cluster_id,
            "{} is in another cluster",
            si.member
        );
    }
    wait_serves(&sts, 0, "w/", &written);
    let s0 = sts.status(0);
    assert!(s0.revision >= written.len() as u64, "{s0:?}");
}

// ---------------------------------------------------------------------------------------
// Quorum loss: two of three volumes gone for good
// ---------------------------------------------------------------------------------------

/// Two nodes are lost with their volumes; `ordkv-1` alone has no quorum. The runbook of
/// deploy/README.md ("Quorum loss"): scale to 0, `ordkv recover` in a one-off pod on the
/// survivor's volume, scale back to 3. The survivor leads the same cluster, the lost
/// ordinals come back empty and join it under new node ids, and every key is served.
#[test]
fn quorum_loss_is_recovered_from_the_surviving_volume() {
    let mut sts = StatefulSet::new("recover").with_kube_api();
    let before = start(&mut sts, 3);
    let written = sts.put_many(0, "r", 100);
    wait_serves(&sts, 1, "r/", &written);
    let survivor_id = before.get(1).expect("ordkv-1").node_id;

    sts.lose_pod_and_volume(0);
    sts.lose_pod_and_volume(2);
    let t = Instant::now();
    sts.scale_to(0);
    let out = sts.run_on_volume(1, &["recover", "-o", "json"]);
    assert!(
        out.status.success(),
        "recover failed\n{out}\n{}",
        sts.logs_all()
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("recover -o json: {e}\n{out}"));
    assert_eq!(report["member"], "ordkv-1", "{report}");
    assert_eq!(report["cluster_id"], before.cluster_id.as_str(), "{report}");
    let removed: Vec<(&str, bool)> = report["removed"]
        .as_array()
        .expect("removed")
        .iter()
        .map(|o| {
            (
                o["name"].as_str().unwrap(),
                o["answered"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        removed,
        [("ordkv-0", false), ("ordkv-2", false)],
        "{report}"
    );

    sts.scale_to(3);
    sts.wait_all_ready();
    let (leader, s) = sts.wait_membership(&[0, 1, 2], &voters(0..3));
    sts.say(&format!(
        "recovered: three voters again {} after the scale to 0 (leader ordkv-{leader}, term {})",
        secs(t.elapsed()),
        s.term
    ));
    assert_eq!(s.cluster_id, before.cluster_id);
    for (ordinal, id) in s.node_ids() {
        let old = before.get(ordinal as usize).expect("member").node_id;
        if ordinal == 1 {
            assert_eq!(id, survivor_id, "the survivor kept its node id");
        } else {
            assert_ne!(
                id, old,
                "ordkv-{ordinal}'s new volume reused the old node id"
            );
        }
    }
    for i in 0..3 {
        wait_serves(&sts, i, "r/", &written);
        let lin = sts.scan(i, "r/", Consistency::Linearizable);
        assert!(lin == written, "{}", describe_diff(&written, &lin));
    }
    sts.try_put(0, "after-recovery", "yes")
        .unwrap_or_else(|e| panic!("{e}\n{}", sts.logs_all()));
}

// ---------------------------------------------------------------------------------------
// 8: every pod stopped and started at once
// ---------------------------------------------------------------------------------------

/// Every container is stopped (SIGTERM) and all are started at once: they find each other,
/// elect a leader from their data, and serve every key; membership and node ids unchanged
/// (with the StatefulSet's count unchanged, nobody leaves).
#[test]
fn full_stop_and_start_keeps_everything() {
    let mut sts = StatefulSet::new("fullstop").with_kube_api();
    let before = start(&mut sts, 3);
    let written = sts.put_many(1, "f", 100);

    let t = Instant::now();
    sts.stop_all();
    let stopped = t.elapsed();
    let t = Instant::now();
    sts.start_all();
    sts.wait_all_ready();
    let ready = t.elapsed();
    let (leader, s) = sts.wait_membership(&[0, 1, 2], &voters(0..3));
    sts.say(&format!(
        "stopped all in {}, all ready {} after starting them (leader ordkv-{leader}, term {} -> {})",
        secs(stopped),
        secs(ready),
        before.term,
        s.term
    ));
    assert_eq!(s.cluster_id, before.cluster_id);
    assert_eq!(s.node_ids(), before.node_ids());
    for i in 0..3 {
        assert!(!left(&sts, i), "{} left on a full stop", pod_name(i));
    }
    for i in 0..3 {
        wait_serves(&sts, i, "f/", &written);
        let lin = sts.scan(i, "f/", Consistency::Linearizable);
        assert!(lin == written, "{}", describe_diff(&written, &lin));
    }
    sts.try_put(2, "after-restart", "yes")
        .unwrap_or_else(|e| panic!("{e}\n{}", sts.logs_all()));
}

// ---------------------------------------------------------------------------------------
// 9: rolling restart under load
// ---------------------------------------------------------------------------------------

/// A rolling update (pods replaced gracefully 2, 1, 0, each after the previous is ready)
/// under a steady write load through the published client ports: reports how long writes
/// were unavailable and asserts no acknowledged write is lost and nobody left (their
/// ordinals stay below the StatefulSet's count).
#[test]
fn rolling_restart_under_write_load_loses_nothing() {
    let mut sts = StatefulSet::new("rolling").with_kube_api();
    let before = start(&mut sts, 3);
    let load = WriteLoad::start_with(
        (0..3).map(|i| sts.client_addr(i)).collect(),
        "roll",
        LOAD_OP_TIMEOUT,
        sts.client_tls(),
    );
    sts.wait_until("the load made 50 writes", CONVERGE, || {
        (load.acked() >= 50)
            .then_some(())
            .ok_or(format!("{} acknowledged", load.acked()))
    });
    let t = Instant::now();
    for i in [2, 1, 0] {
        let step = Instant::now();
        sts.replace_pod(i);
        sts.wait_ready(i);
        let (leader, _) = sts.wait_membership(&[0, 1, 2], &voters(0..3));
        sts.say(&format!(
            "{} replaced and ready in {} (leader ordkv-{leader}, {} writes so far)",
            pod_name(i),
            secs(step.elapsed()),
            load.acked()
        ));
    }
    let rolled = t.elapsed();
    let after_roll = load.acked();
    sts.wait_until("the load made 50 more writes", CONVERGE, || {
        (load.acked() >= after_roll + 50)
            .then_some(())
            .ok_or(format!("{} acknowledged", load.acked()))
    });
    let report = load.stop();
    let (gap, gap_at) = report.longest_gap();
    let (leader, s) = sts.wait_membership(&[0, 1, 2], &voters(0..3));
    let served = sts.scan(leader, "roll/", Consistency::Linearizable);
    let lost = lost_writes(&report, &served);
    sts.say(&format!(
        "rolling restart took {}: {} writes acknowledged over {}, {} failed attempts, \
         longest write gap {} (from {:.2}s), acknowledged writes lost: {}; term {} -> {}; \
         errors: {:?}",
        secs(rolled),
        report.acked.len(),
        secs(report.ran),
        report.failed_attempts,
        secs(gap),
        gap_at.as_secs_f64(),
        lost.len(),
        before.term,
        s.term,
        report.sample_errors
    ));
    assert_eq!(lost, Vec::<String>::new(), "acknowledged writes lost");
    assert_eq!(
        s.node_ids(),
        before.node_ids(),
        "a rolling restart keeps node ids"
    );
    for i in 0..3 {
        assert!(!left(&sts, i), "{} left in a rolling restart", pod_name(i));
    }
    for i in 0..3 {
        wait_serves(&sts, i, "roll/", &served);
    }
}

// ---------------------------------------------------------------------------------------
// 10: a partitioned leader
// ---------------------------------------------------------------------------------------

/// The leader is cut off the network: the two others elect a leader and keep taking
/// writes; the isolated member cannot be reached from the network and acknowledges nothing
/// (asked on its own loopback); reconnected, it converges on the majority's data and its
/// unacknowledged write is gone.
#[test]
fn partitioned_leader_majority_serves_and_everything_converges() {
    let mut sts = StatefulSet::new("partition");
    let before = start(&mut sts, 3);
    sts.try_put(0, "p/before", "1")
        .unwrap_or_else(|e| panic!("{e}\n{}", sts.logs_all()));

    let cut = Instant::now();
    sts.disconnect(0);
    let (leader, s) = sts.wait_leader(&[1, 2]);
    let elected = cut.elapsed();
    sts.say(&format!(
        "ordkv-0 disconnected: ordkv-{leader} leads the majority (term {} -> {}) after {}",
        before.term,
        s.term,
        secs(elected)
    ));

    // The majority serves writes, through either member.
    let mut during = BTreeMap::new();
    for n in 0..10 {
        let (key, value) = (format!("p/during-{n:02}"), format!("d{n}"));
        let via = 1 + n % 2;
        sts.try_put(via, &key, &value)
            .unwrap_or_else(|e| panic!("{e}\n{}", sts.logs_all()));
        during.insert(key, value);
    }
    // The read Service now resolves to the two members still on the network only, and
    // answers reads.
    if StatefulSet::getent_available() {
        let majority: BTreeSet<_> = [1, 2].iter().map(|i| sts.ip(*i).expect("IP")).collect();
        assert_eq!(sts.lookup("ordkv-read").expect("lookup"), majority);
    }
    assert_eq!(
        client_ok(
            &sts,
            &["--endpoints", "ordkv-read:7379", "get", "p/during-09"]
        ),
        "d9\n"
    );

    // The isolated member: unreachable from the network...
    let from_net = sts.client(&[
        "--endpoints",
        &pod_endpoint(0),
        "--timeout",
        "3s",
        "put",
        "p/isolated",
        "x",
    ]);
    assert!(!from_net.status.success(), "{from_net}");
    // ...and on its own loopback it does not acknowledge a write.
    let t = Instant::now();
    // (A client deadline longer than the server's 5s request wait: its own answer is seen.)
    let isolated = sts.exec(0, &["--timeout", "10s", "put", "p/isolated", "x"]);
    assert!(
        !isolated.status.success(),
        "the isolated member acknowledged a write\n{isolated}\n{}",
        sts.logs_all()
    );
    sts.say(&format!(
        "isolated member refused a write after {}: {}; from the network: {}",
        secs(t.elapsed()),
        isolated.stderr.trim(),
        from_net.stderr.trim()
    ));
    assert!(
        isolated.stderr.contains("UNAVAILABLE"),
        "an isolated member should answer UNAVAILABLE (retryable elsewhere)\n{isolated}"
    );
    // Nor does it serve a linearizable read (it cannot confirm it still leads).
    let t = Instant::now();
    let read = sts.exec(0, &["--timeout", "10s", "get", "p/before"]);
    assert!(
        !read.status.success(),
        "the isolated member served a linearizable read\n{read}\n{}",
        sts.logs_all()
    );
    sts.say(&format!(
        "isolated member refused a linearizable read after {}: {}",
        secs(t.elapsed()),
        read.stderr.trim()
    ));
    let iso_view = sts.try_status(0);
    sts.say(&format!(
        "the isolated member's own view {} after the cut (leader, term, [(member, \
         reachable)]): {:?}",
        secs(cut.elapsed()),
        iso_view.map(|s| (
            s.leader,
            s.term,
            s.members
                .iter()
                .map(|m| (m.name.clone(), m.reachable))
                .collect::<Vec<_>>()
        ))
    ));

    // Heal.
    let healed = Instant::now();
    sts.connect(0);
    let (leader_after, s) = sts.wait_membership(&[0, 1, 2], &voters(0..3));
    sts.wait_leader(&[0, 1, 2]);
    let mut expected = during.clone();
    expected.insert("p/before".into(), "1".into());
    for i in 0..3 {
        wait_serves(&sts, i, "p/", &expected);
    }
    sts.say(&format!(
        "reconnected: converged after {} (leader ordkv-{leader_after}, term {})",
        secs(healed.elapsed()),
        s.term
    ));
    for i in 0..3 {
        assert_eq!(
            sts.try_get(i, "p/isolated", Consistency::Linearizable)
                .unwrap_or_else(|e| panic!("{e}\n{}", sts.logs_all())),
            None,
            "the unacknowledged write on the isolated member survived on {}",
            pod_name(i)
        );
    }
    assert_eq!(s.node_ids(), before.node_ids());
}
