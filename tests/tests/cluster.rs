//! Clusters of real `ordkv serve` processes on loopback (see `ordkv_tests::cluster`):
//! bootstrap with a static peer map, write forwarding and reads on every member, a leader
//! SIGKILLed under load and restarted after the failover or at once (the history is checked
//! for linearizability), restarts on the same and on wiped volumes, scale 3 -> 5 -> 3 with learners catching up from a snapshot, a
//! full-cluster restart in random order, a partitioned leader, and a down follower that the
//! leader's log reports once rather than per heartbeat.
//!
//! Randomised tests print their seed; `ORDKV_TEST_SEED=<seed>` replays one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ordkv_proto::v1::kv_client::KvClient;
use ordkv_proto::v1::{Consistency, GetRequest, KeyValue, PutRequest, Role, StatusResponse};
use ordkv_tests::SplitMix64;
use ordkv_tests::cluster::{BackgroundWriter, CONVERGE, Cluster, WriterReport, member_name};
use ordkv_tests::linearizability::{CheckResult, Event, Op, Recorder, check};
use tonic::Code;
use tonic::transport::Channel;

/// Per-request deadline of the load clients: an operation that takes longer has an unknown
/// outcome.
const OP_TIMEOUT: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// One member as a status lists it: what must agree across members and restarts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct MemberView {
    ordinal: u32,
    name: String,
    node_id: u64,
    role: Role,
}

fn members(s: &StatusResponse) -> Vec<MemberView> {
    let mut out: Vec<MemberView> = s
        .members
        .iter()
        .map(|m| MemberView {
            ordinal: m.ordinal,
            name: m.name.clone(),
            node_id: m.node_id,
            role: Role::try_from(m.role).unwrap_or(Role::Unspecified),
        })
        .collect();
    out.sort();
    out
}

/// The membership of voters `kv-0..n` with these node ids.
fn voters(node_ids: &[u64]) -> Vec<MemberView> {
    node_ids
        .iter()
        .enumerate()
        .map(|(i, id)| MemberView {
            ordinal: i as u32,
            name: member_name(i),
            node_id: *id,
            role: Role::Voter,
        })
        .collect()
}

fn put_req(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: Bytes::from(key.to_string()),
        value: Bytes::from(value.to_string()),
        prev_kv: false,
        lease: 0,
    }
}

fn get_req(key: &str, consistency: Consistency) -> GetRequest {
    GetRequest {
        key: Bytes::from(key.to_string()),
        consistency: consistency as i32,
        min_revision: 0,
    }
}

/// Puts through member `i`; panics with the logs unless acknowledged. Returns the revision.
async fn put(c: &Cluster, i: usize, key: &str, value: &str) -> u64 {
    match c.kv(i).put(put_req(key, value)).await {
        Ok(r) => r.into_inner().header.expect("header").revision,
        Err(e) => panic!("put {key} through kv-{i}: {e:?}\n{}", c.logs()),
    }
}

/// Gets through member `i`; panics with the logs on error. Returns the key-value, if any.
async fn get(c: &Cluster, i: usize, key: &str, consistency: Consistency) -> Option<KeyValue> {
    match c.kv(i).get(get_req(key, consistency)).await {
        Ok(r) => r.into_inner().kv,
        Err(e) => panic!(
            "get {key} ({consistency:?}) through kv-{i}: {e:?}\n{}",
            c.logs()
        ),
    }
}

/// Writes `prefix/000..` = `value-of(prefix, n)` with `tasks` concurrent clients, through
/// `via` (round robin). Returns the written key-values.
async fn write_keys(
    c: &Cluster,
    via: &[usize],
    prefix: &str,
    count: usize,
    tasks: usize,
) -> BTreeMap<String, String> {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let mut client = c.kv(via[t % via.len()]);
        let prefix = prefix.to_string();
        handles.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for n in (t..count).step_by(tasks) {
                let (key, value) = (format!("{prefix}/{n:05}"), format!("{prefix}-value-{n}"));
                client
                    .put(put_req(&key, &value))
                    .await
                    .map_err(|e| format!("put {key}: {e:?}"))?;
                written.push((key, value));
            }
            Ok::<_, String>(written)
        }));
    }
    let mut out = BTreeMap::new();
    for h in handles {
        match h.await.expect("writer task") {
            Ok(w) => out.extend(w),
            Err(e) => panic!("{e}\n{}", c.logs()),
        }
    }
    assert_eq!(out.len(), count);
    out
}

fn kv_map(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect()
}

/// Waits until `of` serve identical full ranges (keys, values, revisions) from their local
/// state and report the same revision; returns that range.
async fn converged(c: &Cluster, of: &[usize]) -> Vec<KeyValue> {
    converged_at_least(c, of, 0).await
}

/// [`Cluster::converged_at_least`].
async fn converged_at_least(c: &Cluster, of: &[usize], revision: u64) -> Vec<KeyValue> {
    c.converged_at_least(of, revision).await
}

/// Waits until every one of `of` reports `expected` as the membership and `cluster_id`.
async fn membership_is(c: &Cluster, of: &[usize], cluster_id: &str, expected: &[MemberView]) {
    c.wait_until(
        &format!("members {of:?} report the membership {expected:?}"),
        CONVERGE,
        || async {
            for &i in of {
                let s = c.try_status(i).await?;
                if s.cluster_id != cluster_id {
                    return Err(format!("kv-{i} is in cluster {:?}", s.cluster_id));
                }
                let got = members(&s);
                if got != expected {
                    return Err(format!("kv-{i} reports {got:?}"));
                }
            }
            Ok(())
        },
    )
    .await;
}

/// The part of a log before the first line containing `marker` (all of it if absent).
fn log_before<'a>(log: &'a str, marker: &str) -> &'a str {
    match log.find(marker) {
        Some(at) => &log[..at],
        None => log,
    }
}

// ---------------------------------------------------------------------------------------
// 1. Bootstrap
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_bootstrap_with_ordinal_zero_leading() {
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    assert_eq!(leader, 0, "ordinal 0 bootstraps and leads\n{}", c.logs());

    let records: Vec<_> = (0..3).map(|i| c.member_record(i)).collect();
    let cluster_id = records[0].cluster_id.clone();
    assert!(!cluster_id.is_empty(), "kv-0 recorded no cluster id");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.name, member_name(i));
        assert_eq!(r.cluster_id, cluster_id, "kv-{i} recorded another cluster");
    }
    let ids: BTreeSet<u64> = records.iter().map(|r| r.node_id).collect();
    assert_eq!(ids.len(), 3, "node ids are not distinct: {records:?}");
    let expected = voters(&records.iter().map(|r| r.node_id).collect::<Vec<_>>());
    membership_is(&c, &[0, 1, 2], &cluster_id, &expected).await;
    for i in 0..3 {
        let s = c.status(i).await;
        assert_eq!(s.member, member_name(i));
        assert_eq!(s.leader, Some(0), "kv-{i} names another leader");
    }

    // The CLI's JSON shows the same.
    let out = c.node(2).cli(&["cluster", "status", "-o", "json"]).await;
    out.assert_success("ordkv cluster status -o json");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON status");
    assert_eq!(json["cluster_id"], cluster_id.as_str());
    assert_eq!(json["leader"], 0);
    let listed: Vec<(String, String, u64)> = json["members"]
        .as_array()
        .expect("members array")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or_default().to_string(),
                m["role"].as_str().unwrap_or_default().to_string(),
                m["node_id"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    let want: Vec<(String, String, u64)> = records
        .iter()
        .map(|r| (r.name.clone(), "voter".to_string(), r.node_id))
        .collect();
    assert_eq!(listed, want, "{json}");

    // Only ordinal 0 bootstrapped; the others joined its cluster.
    let log0 = c.node(0).current_log();
    assert_eq!(log0.matches("bootstrapping a new cluster").count(), 1);
    for i in 1..3 {
        let log = c.node(i).current_log();
        assert!(
            !log.contains("bootstrapping a new cluster"),
            "kv-{i} bootstrapped"
        );
        assert!(
            log.contains("joining an existing cluster"),
            "kv-{i} did not log its join"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 2. Writes through followers, reads everywhere
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_writes_are_forwarded_and_reads_see_them_on_every_member() {
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let mut via = c.kv(followers[0]);
    let mut readers: Vec<KvClient<Channel>> = (0..3).map(|i| c.kv(i)).collect();

    let mut last = (String::new(), String::new(), 0);
    for n in 0..20 {
        let (key, value) = (format!("fw/{n:02}"), format!("through-a-follower-{n}"));
        let resp = via
            .put(put_req(&key, &value))
            .await
            .unwrap_or_else(|e| panic!("put {key} through follower: {e:?}\n{}", c.logs()))
            .into_inner();
        let header = resp.header.expect("header");
        assert_eq!(header.member, member_name(followers[0]));
        // Linearizable reads right after the ack, through every member.
        for (i, reader) in readers.iter_mut().enumerate() {
            let kv = reader
                .get(get_req(&key, Consistency::Linearizable))
                .await
                .unwrap_or_else(|e| panic!("get {key} on kv-{i}: {e:?}\n{}", c.logs()))
                .into_inner()
                .kv
                .unwrap_or_else(|| panic!("kv-{i} does not see {key} after its ack"));
            assert_eq!(kv.value, value.as_bytes(), "kv-{i}");
            assert_eq!(kv.mod_revision, header.revision, "kv-{i}");
        }
        last = (key, value, header.revision);
    }
    // A serializable read on the other follower catches up by itself.
    let (key, value, revision) = last;
    let other = followers[1];
    c.wait_until(
        &format!("a serializable read on kv-{other} sees {key}"),
        CONVERGE,
        || async {
            let got = c
                .kv(other)
                .get(get_req(&key, Consistency::Serializable))
                .await
                .map_err(|e| format!("{e:?}"))?
                .into_inner()
                .kv;
            match got {
                Some(kv) if kv.value == value.as_bytes() && kv.mod_revision == revision => Ok(()),
                other => Err(format!("saw {other:?}")),
            }
        },
    )
    .await;
    let data = converged(&c, &[0, 1, 2]).await;
    assert_eq!(data.len(), 20);
}

/// Appends answered by each follower, from the leader's `/metrics` (its round-trip histogram).
async fn appends_answered(c: &Cluster, leader: usize, followers: &[usize]) -> f64 {
    let (code, text) = c.node(leader).http_get("/metrics").await.expect("/metrics");
    assert_eq!(code, 200, "{text}");
    followers
        .iter()
        .map(|f| {
            let series = format!(
                "ordkv_peer_append_duration_seconds_count{{peer=\"{}\"}} ",
                member_name(*f)
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&series)?.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {series}in:\n{text}"))
        })
        .sum()
}

/// The leader times every append to each follower until its answer. Each acknowledged put
/// needed an append that a follower answered after the put began, so 30 puts one after the
/// other add at least 30 answers (heartbeats in that time add a few more, never fewer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_times_appends_to_each_follower() {
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    put(&c, leader, "rt/warm", "v").await;
    let before = appends_answered(&c, leader, &followers).await;
    for n in 0..30 {
        put(&c, leader, &format!("rt/{n}"), "v").await;
    }
    let after = appends_answered(&c, leader, &followers).await;
    assert!(
        after - before >= 30.0,
        "30 puts added {} timed appends ({before} -> {after})",
        after - before
    );
}

/// A follower that is down does not flood the leader's log: one line when it stops
/// answering, none per heartbeat or commit, one when it is back; `/metrics` counts the
/// failed calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_follower_is_logged_once_not_per_heartbeat() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let down = (leader + 1) % 3;
    c.kill_9(down);
    // About 2 s down: 20 heartbeats, and a commit per put.
    for n in 0..100 {
        put(&c, leader, &format!("while-down/{n}"), "v").await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.restart(down).await;
    converged(&c, &[0, 1, 2]).await;

    let log = c.node(leader).current_log();
    let about_it: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains(&member_name(down)))
        .collect();
    // The outage may start over once while the member restarts (a stale connection fails
    // after a heartbeat got through); a line per heartbeat would be 20 or more.
    assert!(
        about_it.len() <= 5 && about_it.iter().any(|l| l.contains("peer unreachable")),
        "{} warnings about kv-{down}:\n{}",
        about_it.len(),
        about_it.join("\n")
    );
    let back = format!("peer=\"{}\"", member_name(down));
    assert!(
        log.lines()
            .any(|l| l.contains("peer reachable again") && l.contains(&back)),
        "no line saying kv-{down} is back:\n{log}"
    );
    let (_, metrics) = c.node(leader).http_get("/metrics").await.expect("/metrics");
    let series = format!("ordkv_peer_errors_total{{peer=\"{}\"}} ", member_name(down));
    let errors: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.parse().ok())
        .unwrap_or_else(|| panic!("no {series}in:\n{metrics}"));
    println!(
        "kv-{down} down about 3 s: {} warnings in the leader's log, {errors} failed calls counted",
        about_it.len()
    );
    assert!(errors >= 10.0, "{errors} failed calls counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_follower_writes_names_the_leader() {
    let c = Cluster::start(3, &["--reject-follower-writes"]).await;
    let leader = c.leader().await;
    let leader_addr = c.node(leader).client_addr();
    let revision = c.status(leader).await.revision;
    for f in (0..3).filter(|i| *i != leader) {
        let err = c
            .kv(f)
            .put(put_req("refused", "x"))
            .await
            .expect_err("a follower with --reject-follower-writes accepted a write");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert_eq!(
            err.message(),
            format!("read-only replica; leader is {leader_addr}"),
            "kv-{f}"
        );
        let meta = err
            .metadata()
            .get("ordkv-leader")
            .unwrap_or_else(|| panic!("no ordkv-leader metadata from kv-{f}: {err:?}"));
        assert_eq!(meta.to_str().unwrap(), leader_addr);
    }
    // Nothing was written; the leader itself takes writes, and followers serve them.
    assert_eq!(
        get(&c, leader, "refused", Consistency::Linearizable).await,
        None
    );
    assert_eq!(c.status(leader).await.revision, revision);
    let rev = put(&c, leader, "accepted", "y").await;
    assert_eq!(rev, revision + 1);
    for i in 0..3 {
        let kv = get(&c, i, "accepted", Consistency::Linearizable).await;
        assert_eq!(
            kv.map(|kv| kv.value),
            Some(Bytes::from_static(b"y")),
            "kv-{i}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 3. Leader SIGKILL under load
// ---------------------------------------------------------------------------------------

const LOAD_CLIENTS: u64 = 8;
const LOAD_KEYS: u64 = 5;
const LOAD_FOR: Duration = Duration::from_secs(4);
const KILL_AFTER: Duration = Duration::from_millis(1500);

/// What the load clients share.
#[derive(Default)]
struct LoadShared {
    stop: AtomicBool,
    /// (call, return) of every acknowledged write, in recorder time.
    acked: Mutex<Vec<(u64, u64)>>,
    /// Failed operations by gRPC code: how many, and the first message.
    errors: Mutex<BTreeMap<String, (u64, String)>>,
}

/// One load client: random puts (distinct values) and linearizable gets on a few keys
/// through one member, moving to another member when a request fails.
async fn load_client(
    id: u64,
    seed: u64,
    channels: Vec<Channel>,
    recorder: Recorder,
    shared: Arc<LoadShared>,
) {
    let mut rng = SplitMix64::new(seed ^ (id + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut at = (rng.next_u64() % channels.len() as u64) as usize;
    let mut client = KvClient::new(channels[at].clone());
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        let key = format!("k{}", rng.next_u64() % LOAD_KEYS);
        let failed = if rng.next_u64().is_multiple_of(2) {
            seq += 1;
            let value = format!("c{id}-{seq}");
            let call = recorder.now();
            let result = client.put(put_req(&key, &value)).await;
            let ret = result.is_ok().then(|| recorder.now());
            if let Some(ret) = ret {
                shared.acked.lock().unwrap().push((call, ret));
            }
            // A write the server says was not applied is left out of the history: a read
            // that saw its value would make the history fail the check.
            if outcome(&result) != Some(ordkv_proto::NOT_APPLIED) {
                recorder.record(Event {
                    client: id,
                    key: key.into_bytes(),
                    op: Op::Write {
                        value: Some(value.into_bytes()),
                    },
                    call,
                    ret,
                });
            }
            result.err()
        } else {
            let call = recorder.now();
            match client.get(get_req(&key, Consistency::Linearizable)).await {
                Ok(resp) => {
                    let ret = recorder.now();
                    recorder.record(Event {
                        client: id,
                        key: key.into_bytes(),
                        op: Op::Read {
                            value: resp.into_inner().kv.map(|kv| kv.value.to_vec()),
                        },
                        call,
                        ret: Some(ret),
                    });
                    None
                }
                Err(e) => Some(e),
            }
        };
        if let Some(e) = failed {
            shared
                .errors
                .lock()
                .unwrap()
                .entry(format!(
                    "{:?} {}",
                    e.code(),
                    e.metadata()
                        .get(ordkv_proto::WRITE_OUTCOME_METADATA_KEY)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                ))
                .or_insert_with(|| (0, e.message().to_string()))
                .0 += 1;
            // Another member, after a short pause so a dead one is not hammered.
            at =
                (at + 1 + (rng.next_u64() % (channels.len() as u64 - 1)) as usize) % channels.len();
            client = KvClient::new(channels[at].clone());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The `ordkv-write-outcome` a failed write carries.
fn outcome<T>(result: &Result<T, tonic::Status>) -> Option<&str> {
    result
        .as_ref()
        .err()?
        .metadata()
        .get(ordkv_proto::WRITE_OUTCOME_METADATA_KEY)?
        .to_str()
        .ok()
}

/// When the SIGKILLed leader of [`leader_sigkill_under_load`] starts again.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Restart {
    /// Once the others elected a new leader and the load ended.
    AfterFailover,
    /// At once, on its data dir, while the others may not have noticed it was gone; readers
    /// send it linearizable gets from the moment its client port answers.
    AtOnce,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_under_load_keeps_the_history_linearizable() {
    leader_sigkill_under_load(Restart::AfterFailover).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_and_restart_at_once_under_load_keeps_the_history_linearizable() {
    leader_sigkill_under_load(Restart::AtOnce).await;
}

/// Linearizable gets of every load key on member `i`, from the moment it answers until each
/// key was read `per_key` times; every answered read joins the history.
async fn first_reads(c: &Cluster, i: usize, recorder: &Recorder, per_key: u64) -> u64 {
    let mut client = KvClient::new(c.channel(i, OP_TIMEOUT));
    let started = recorder.now();
    let mut failed = 0;
    for round in 0..per_key {
        for k in 0..LOAD_KEYS {
            let key = format!("k{k}");
            loop {
                let call = recorder.now();
                match client.get(get_req(&key, Consistency::Linearizable)).await {
                    Ok(resp) => {
                        recorder.record(Event {
                            client: 2000 + round,
                            key: key.into_bytes(),
                            op: Op::Read {
                                value: resp.into_inner().kv.map(|kv| kv.value.to_vec()),
                            },
                            call,
                            ret: Some(recorder.now()),
                        });
                        break;
                    }
                    Err(e) => {
                        failed += 1;
                        assert!(
                            recorder.now() - started < CONVERGE.as_nanos() as u64,
                            "no linearizable read of {key} on kv-{i} within {CONVERGE:?}: {e:?}\n{}",
                            c.logs()
                        );
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }
        }
    }
    failed
}

async fn leader_sigkill_under_load(restart: Restart) {
    let seed = SplitMix64::seed_from_env_or_clock();
    println!(
        "leader_sigkill_under_load ({restart:?}) seed: {seed} (ORDKV_TEST_SEED={seed} replays it)"
    );
    let mut c = Cluster::start(3, &[]).await;
    let old_leader = c.leader().await;
    let old_term = c.status(old_leader).await.term;

    let recorder = Recorder::start();
    let shared = Arc::new(LoadShared::default());
    let mut clients = Vec::new();
    for id in 0..LOAD_CLIENTS {
        // Each client has its own connections.
        let channels = (0..3).map(|i| c.channel(i, OP_TIMEOUT)).collect();
        clients.push(tokio::spawn(load_client(
            id,
            seed,
            channels,
            recorder.clone(),
            shared.clone(),
        )));
    }
    let t0 = Instant::now();
    c.wait_until(
        "the load ran 1.5 s with at least 20 acknowledged writes",
        Duration::from_secs(30),
        || async {
            let acked = shared.acked.lock().unwrap().len();
            if t0.elapsed() >= KILL_AFTER && acked >= 20 {
                Ok(())
            } else {
                Err(format!(
                    "{acked} writes acknowledged after {:?}",
                    t0.elapsed()
                ))
            }
        },
    )
    .await;
    let acked_before_kill = shared.acked.lock().unwrap().len();
    c.kill_9(old_leader);
    let killed_at = recorder.now();
    let killed_wall = SystemTime::now();
    let at_once = restart == Restart::AtOnce;
    if at_once {
        c.spawn(old_leader);
        let failed = first_reads(&c, old_leader, &recorder, 4).await;
        println!(
            "kv-{old_leader} restarted at once: {} linearizable reads answered after {failed} \
             refused or failed, {} ms after the SIGKILL",
            4 * LOAD_KEYS,
            Duration::from_nanos(recorder.now() - killed_at).as_millis()
        );
    }

    // Failover: from the kill to the first acknowledgement of a write sent after it.
    let first_ack = c
        .wait_until(
            "a write sent after the SIGKILL is acknowledged",
            CONVERGE,
            || async {
                shared
                    .acked
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(call, _)| *call >= killed_at)
                    .map(|(_, ret)| *ret)
                    .min()
                    .ok_or_else(|| "none yet".to_string())
            },
        )
        .await;
    let failover = Duration::from_nanos(first_ack - killed_at);
    println!(
        "failover: {} ms from SIGKILL of kv-{old_leader} to the first write acknowledged after it",
        failover.as_millis()
    );
    let load_until = (t0 + LOAD_FOR).max(Instant::now() + Duration::from_millis(500));
    c.wait_until("the load period is over", CONVERGE, || async {
        if Instant::now() >= load_until {
            Ok(())
        } else {
            Err("still loading".to_string())
        }
    })
    .await;
    shared.stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.expect("load client");
    }
    // Restarted at once, the old leader may win the election itself.
    let candidates: Vec<usize> = (0..3).filter(|i| at_once || *i != old_leader).collect();
    let new_leader = c.leader_among(&candidates).await;
    let new_term = c.status(new_leader).await.term;
    // When the new leader took over, from its own log.
    let elected = c
        .node(new_leader)
        .current_log()
        .lines()
        .filter(|l| l.contains("becomes leader"))
        .filter_map(log_time)
        .find(|t| *t >= killed_wall)
        .and_then(|t| t.duration_since(killed_wall).ok());
    println!(
        "election: kv-{new_leader} logged \"becomes leader\" {} ms after the SIGKILL",
        elected.map_or("?".to_string(), |d| d.as_millis().to_string())
    );
    // The killed member comes back on its data dir and catches up.
    if at_once {
        c.wait_ready(old_leader).await;
    } else {
        assert_ne!(new_leader, old_leader);
        c.restart(old_leader).await;
    }
    let data = converged(&c, &[0, 1, 2]).await;

    // Final linearizable reads of every key through every member join the history.
    for i in 0..3 {
        let mut client = c.kv(i);
        for k in 0..LOAD_KEYS {
            let key = format!("k{k}");
            let call = recorder.now();
            let got = client
                .get(get_req(&key, Consistency::Linearizable))
                .await
                .unwrap_or_else(|e| panic!("final get {key} on kv-{i}: {e:?}\n{}", c.logs()));
            recorder.record(Event {
                client: 1000 + i as u64,
                key: key.into_bytes(),
                op: Op::Read {
                    value: got.into_inner().kv.map(|kv| kv.value.to_vec()),
                },
                call,
                ret: Some(recorder.now()),
            });
        }
    }

    let history = recorder.events();
    let writes: Vec<&Event> = history
        .iter()
        .filter(|e| matches!(e.op, Op::Write { .. }))
        .collect();
    let acked = writes.iter().filter(|e| e.ret.is_some()).count();
    let reads = history.len() - writes.len();
    let errors = shared.errors.lock().unwrap().clone();
    println!(
        "history: {} ops: {} writes ({acked} acknowledged, {acked_before_kill} before the \
         kill, {} unknown), {reads} reads; failed requests by code: {errors:?}; new leader \
         kv-{new_leader} in term {new_term}",
        history.len(),
        writes.len(),
        writes.len() - acked,
    );
    assert!(
        acked > acked_before_kill,
        "no write acknowledged after the kill"
    );

    // Every key's final value was written by someone, and no acknowledged write is older
    // than a write that completed before it was sent (an acknowledged write lost).
    let finals = kv_map(&data);
    let mut lost = Vec::new();
    for k in 0..LOAD_KEYS {
        let key = format!("k{k}");
        let on_key: Vec<&&Event> = writes.iter().filter(|e| e.key == key.as_bytes()).collect();
        let Some(final_value) = finals.get(&key) else {
            assert!(on_key.is_empty(), "{key} is absent but was written");
            continue;
        };
        let writer = on_key
            .iter()
            .find(|e| matches!(&e.op, Op::Write { value: Some(v) } if v == final_value.as_bytes()))
            .unwrap_or_else(|| {
                panic!("the final value of {key}, {final_value:?}, was never written")
            });
        if let Some(writer_ret) = writer.ret {
            for w in on_key
                .iter()
                .filter(|w| w.ret.is_some() && w.call > writer_ret)
            {
                lost.push(format!("{key}: {:?} (final value {final_value:?})", w.op));
            }
        }
    }
    println!(
        "acknowledged writes lost: {} of {acked}; final values: {finals:?}",
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");

    let started = Instant::now();
    let verdict = check(&history, None, Duration::from_secs(60));
    println!(
        "linearizability check of {} events: {verdict:?} in {:?}",
        history.len(),
        started.elapsed()
    );
    assert_eq!(verdict, CheckResult::Ok, "{}", c.logs());
    // Leadership needs an election after a restart too: a member never leads again in the
    // term it led before it stopped.
    assert!(new_term > old_term, "term {new_term} after {old_term}");

    // A failover is routine: the servers answer UNAVAILABLE (or time out), never INTERNAL,
    // so clients know to retry elsewhere.
    assert!(
        !errors.contains_key("Internal"),
        "requests failed with INTERNAL during the failover: {errors:?}"
    );
}

/// The UTC timestamp that starts a log line (`2026-01-02T03:04:05.678901Z ...`).
fn log_time(line: &str) -> Option<SystemTime> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<u64>().ok()?,
        t.next()?.parse::<u64>().ok()?,
    );
    let secs: f64 = t.next()?.parse().ok()?;
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let whole = days * 86_400 + h * 3600 + min * 60;
    Some(UNIX_EPOCH + Duration::from_secs(whole) + Duration::from_secs_f64(secs))
}

// ---------------------------------------------------------------------------------------
// 4. Restart on the same data dir
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_keeps_its_identity_and_catches_up() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let f = if leader == 2 { 1 } else { 2 };
    let other = 3 - leader - f;
    let before = write_keys(&c, &[leader], "before", 20, 4).await;
    let cluster_id = c.member_record(leader).cluster_id;
    let membership = members(&c.status(leader).await);
    let node_id = c.member_record(f).node_id;

    c.kill_9(f);
    // Writes while it is down, through the other follower (forwarded).
    let during = write_keys(&c, &[other], "during", 20, 4).await;
    c.restart(f).await;

    assert_eq!(c.member_record(f).node_id, node_id, "the node id changed");
    let data = kv_map(&converged(&c, &[0, 1, 2]).await);
    let mut expected = before.clone();
    expected.extend(during.clone());
    assert_eq!(data, expected);
    for key in during.keys().rev().take(5) {
        let kv = get(&c, f, key, Consistency::Linearizable).await;
        assert_eq!(
            kv.map(|kv| kv.value),
            Some(Bytes::from(during[key].clone())),
            "{key} on kv-{f}"
        );
    }
    membership_is(&c, &[0, 1, 2], &cluster_id, &membership).await;
    let log = c.node(f).current_log();
    assert!(
        !log.contains("asking the leader to admit") && !log.contains("joining an existing cluster"),
        "a restart with data asked to join again:\n{log}"
    );
}

// ---------------------------------------------------------------------------------------
// 5. Lost volumes
// ---------------------------------------------------------------------------------------

/// What the wiped ordinal 0 said about itself while it came back.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    cluster_id: String,
    leader: Option<u32>,
    term: u64,
    admitted: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_members_rejoin_under_new_node_ids() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let cluster_id = c.member_record(0).cluster_id;
    let mut ids: Vec<u64> = (0..3).map(|i| c.member_record(i).node_id).collect();
    let mut expected = write_keys(&c, &[leader], "a", 30, 4).await;

    // A follower loses its volume.
    let f = if leader == 2 { 1 } else { 2 };
    let old = ids[f];
    c.wipe(f).await;
    let record = c.member_record(f);
    assert_eq!(
        record.cluster_id, cluster_id,
        "kv-{f} is in another cluster"
    );
    assert_ne!(record.node_id, old, "kv-{f} reused its old node id");
    ids[f] = record.node_id;
    membership_is(&c, &[0, 1, 2], &cluster_id, &voters(&ids)).await;
    assert_eq!(kv_map(&converged(&c, &[0, 1, 2]).await), expected);
    for key in expected.keys().take(5) {
        let kv = get(&c, f, key, Consistency::Linearizable).await;
        assert_eq!(
            kv.map(|kv| kv.value),
            Some(Bytes::from(expected[key].clone()))
        );
    }
    let log = c.node(f).current_log();
    assert!(
        log.contains("joining an existing cluster"),
        "kv-{f}:\n{log}"
    );
    assert!(
        !log.contains("bootstrapping a new cluster"),
        "kv-{f}:\n{log}"
    );

    // Ordinal 0 loses its volume: it is killed, the others elect, it comes back empty.
    let old0 = ids[0];
    c.kill_9(0);
    let new_leader = c.leader_among(&[1, 2]).await;
    expected.extend(write_keys(&c, &[1, 2], "b", 20, 4).await);
    c.wipe_data(0);
    c.spawn(0);
    let seen: Mutex<Vec<Seen>> = Mutex::default();
    c.wait_until("the wiped kv-0 is ready", CONVERGE, || async {
        if let Ok(s) = c.try_status(0).await {
            let admitted = s
                .members
                .iter()
                .any(|m| m.name == "kv-0" && m.node_id != old0);
            let now = Seen {
                cluster_id: s.cluster_id,
                leader: s.leader,
                term: s.term,
                admitted,
            };
            let mut seen = seen.lock().unwrap();
            if seen.last() != Some(&now) {
                seen.push(now);
            }
        }
        match c.node(0).http_get("/readyz").await {
            Ok((200, _)) => Ok(()),
            other => Err(format!("/readyz: {other:?}")),
        }
    })
    .await;
    c.wait_ready(0).await;
    let seen = seen.into_inner().unwrap();
    println!("kv-0 while rejoining (cluster id, leader, term, admitted): {seen:?}");
    for s in &seen {
        assert!(
            s.cluster_id.is_empty() || s.cluster_id == cluster_id,
            "kv-0 reported another cluster: {seen:?}"
        );
        assert!(
            s.admitted || s.leader != Some(0),
            "kv-0 reported itself leader before it was re-admitted: {seen:?}"
        );
    }
    let record = c.member_record(0);
    assert_eq!(record.cluster_id, cluster_id, "kv-0 is in another cluster");
    assert_ne!(record.node_id, old0, "kv-0 reused its old node id");
    ids[0] = record.node_id;
    membership_is(&c, &[0, 1, 2], &cluster_id, &voters(&ids)).await;
    let log = c.node(0).current_log();
    assert!(
        !log.contains("bootstrapping a new cluster"),
        "kv-0 bootstrapped again:\n{log}"
    );
    assert!(log.contains("joining an existing cluster"), "kv-0:\n{log}");
    let before_admission = log_before(&log, "admitted");
    for never in ["becomes leader", "new candidate"] {
        assert!(
            !before_admission.contains(never),
            "kv-0 logged {never:?} before it was re-admitted:\n{log}"
        );
    }
    assert_eq!(kv_map(&converged(&c, &[0, 1, 2]).await), expected);
    for key in expected.keys().rev().take(5) {
        let kv = get(&c, 0, key, Consistency::Linearizable).await;
        assert_eq!(
            kv.map(|kv| kv.value),
            Some(Bytes::from(expected[key].clone()))
        );
    }
    // Still one cluster, still writable.
    put(&c, new_leader, "after", "wipes").await;
    for i in 0..3 {
        assert_eq!(c.status(i).await.cluster_id, cluster_id);
    }
}

// ---------------------------------------------------------------------------------------
// 6. Scale 3 -> 5 -> 3
// ---------------------------------------------------------------------------------------

/// Keys written before the scale-up. openraft keeps `max_in_snapshot_log_to_keep` (1000)
/// entries behind a snapshot, so the log is purged, and new members must start from a
/// snapshot, only past ~1100 entries.
const SCALE_KEYS: usize = 1300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_three_to_five_learners_and_back() {
    let args = ["--snapshot-every", "100", "--max-voters", "3"];
    let mut c = Cluster::start_planned(3, 5, &args).await;
    let leader = c.leader().await;
    let cluster_id = c.member_record(0).cluster_id;
    let ids: Vec<u64> = (0..3).map(|i| c.member_record(i).node_id).collect();

    let started = Instant::now();
    let expected = write_keys(&c, &[0, 1, 2], "seed", SCALE_KEYS, 16).await;
    println!("{SCALE_KEYS} keys written in {:?}", started.elapsed());
    c.wait_until("the leader built a snapshot", CONVERGE, || async {
        if c.node(leader).current_log().contains("built snapshot") {
            Ok(())
        } else {
            Err("no \"built snapshot\" in its log".into())
        }
    })
    .await;

    let writer = BackgroundWriter::start(&c, &[0, 1, 2], "bg/");
    let mut progress = writer.progresses(&c, 0, 10, "before scale-up").await;

    // Scale up: kv-3 and kv-4 join as learners (voters are full) and catch up.
    c.add_member(3).await;
    c.add_member(4).await;
    let mut five = voters(&ids);
    for i in 3..5 {
        five.push(MemberView {
            ordinal: i as u32,
            name: member_name(i),
            node_id: c.member_record(i).node_id,
            role: Role::Learner,
        });
        let record = c.member_record(i);
        assert_eq!(record.cluster_id, cluster_id);
    }
    membership_is(&c, &[0, 1, 2, 3, 4], &cluster_id, &five).await;
    for i in 3..5 {
        let log = c.node(i).current_log();
        assert!(
            log.contains("installed snapshot"),
            "kv-{i} did not catch up through a snapshot:\n{log}"
        );
        // Every earlier key, from its local state and linearizably.
        let local = kv_map(&c.range(i, Consistency::Serializable).await);
        let missing: Vec<&String> = expected
            .iter()
            .filter(|(k, v)| local.get(*k) != Some(v))
            .map(|(k, _)| k)
            .collect();
        assert!(
            missing.is_empty(),
            "kv-{i} lacks {} keys: {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        let linear = kv_map(&c.range(i, Consistency::Linearizable).await);
        assert!(expected.iter().all(|(k, v)| linear.get(k) == Some(v)));
    }
    // A write acknowledged by the leader is at once visible to linearizable reads on
    // learners.
    for n in 0..5 {
        let (key, value) = (format!("probe/{n}"), format!("p{n}"));
        let rev = put(&c, leader, &key, &value).await;
        for i in 3..5 {
            let kv = get(&c, i, &key, Consistency::Linearizable)
                .await
                .unwrap_or_else(|| panic!("learner kv-{i} misses {key}"));
            assert_eq!(
                (kv.value, kv.mod_revision),
                (Bytes::from(value.clone()), rev)
            );
        }
    }
    progress = writer
        .progresses(&c, progress, 10, "with five members")
        .await;

    // Scale down: the two highest ordinals go away and are removed at once.
    c.kill_9(4);
    c.kill_9(3);
    let out = c.node(1).cli(&["cluster", "remove", "4"]).await;
    out.assert_success("ordkv cluster remove 4");
    println!("remove 4: {}", out.stdout_str().trim());
    let out = c.node(2).cli(&["cluster", "remove", "3"]).await;
    out.assert_success("ordkv cluster remove 3");
    println!("remove 3: {}", out.stdout_str().trim());
    membership_is(&c, &[0, 1, 2], &cluster_id, &voters(&ids)).await;
    writer
        .progresses(&c, progress, 10, "after scale-down")
        .await;
    for i in 0..3 {
        put(&c, i, &format!("after-scale-down/{i}"), "ok").await;
    }

    let WriterReport { acked, failed, .. } = writer.stop().await;
    let data = kv_map(&converged(&c, &[0, 1, 2]).await);
    println!(
        "background writer: {} acknowledged, {failed} failed",
        acked.len()
    );
    let lost: Vec<&(String, String)> = acked
        .iter()
        .filter(|(k, v)| data.get(k) != Some(v))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged background writes lost: {lost:?}"
    );
    assert!(expected.iter().all(|(k, v)| data.get(k) == Some(v)));
}

/// A follower down while the leader's log was purged past it catches up from a snapshot,
/// takes more entries, and still opens its data dir after a SIGKILL. (The log of a member
/// that installed a snapshot over it once kept its old entries in the same segment file,
/// before the new ones and after a gap, and the member refused to start: "a hole between
/// log index ...".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_caught_up_from_a_snapshot_restarts() {
    let mut c = Cluster::start(3, &["--snapshot-every", "100"]).await;
    let leader = c.leader().await;
    let follower = (0..3).find(|i| *i != leader).expect("a follower");
    let others: Vec<usize> = (0..3).filter(|i| *i != follower).collect();
    let mut expected = write_keys(&c, &others, "before", 50, 4).await;
    let had = c.status(follower).await.applied_index;
    c.kill_9(follower);
    // Past the most entries the leader keeps for a lagging follower (ten times the 100
    // behind each snapshot), so the follower's next entry is purged on the leader once the
    // leader gives up the append it had in flight to it.
    expected.extend(write_keys(&c, &others, "while-down", 1500, 16).await);
    let leader = c.leader_among(&others).await;
    c.wait_purged_past(leader, had + 100).await;
    c.restart(follower).await;
    c.wait_until("the follower installed a snapshot", CONVERGE, || async {
        match c
            .node(follower)
            .current_log()
            .contains("installed snapshot")
        {
            true => Ok(()),
            false => Err("no \"installed snapshot\" in its log".to_string()),
        }
    })
    .await;
    expected.extend(write_keys(&c, &others, "after", 50, 4).await);
    // Entries appended after the snapshot, then a restart.
    c.wait_until("the follower serves every key", CONVERGE, || {
        serves(&c, follower, &expected)
    })
    .await;
    c.kill_9(follower);
    c.restart(follower).await;
    c.wait_until("the restarted follower serves every key", CONVERGE, || {
        serves(&c, follower, &expected)
    })
    .await;
}

/// Whether member `i` serves every key of `expected` from its local state.
async fn serves(c: &Cluster, i: usize, expected: &BTreeMap<String, String>) -> Result<(), String> {
    let local = c.try_range(i, Consistency::Serializable).await;
    let local = kv_map(&local.map_err(|e| format!("{e:?}"))?);
    match expected
        .iter()
        .filter(|(k, v)| local.get(*k) != Some(v))
        .count()
    {
        0 => Ok(()),
        missing => Err(format!("{missing} keys missing")),
    }
}

/// The first write through a follower after the leader was SIGKILLed: its forward to the
/// dead leader is refused at connect, so it never left the follower; the follower waits for
/// the next leader and forwards it there within the request deadline, instead of failing at
/// once ("peer unavailable: Connection refused").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_a_follower_waits_out_the_leaders_death() {
    let mut c = Cluster::start(3, &[]).await;
    for round in 0..2 {
        let leader = c.leader().await;
        let follower = (0..3).find(|i| *i != leader).expect("a follower");
        put(&c, follower, &format!("before-{round}"), "1").await;
        c.kill_9(leader);
        // Long enough for the closed connection to be noticed, short of an election.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let key = format!("after-{round}");
        let revision = put(&c, follower, &key, "2").await;
        println!(
            "round {round}: the write through kv-{follower} was acknowledged {:?} after the \
             leader kv-{leader} died (revision {revision})",
            started.elapsed() + Duration::from_millis(200)
        );
        let kv = get(&c, follower, &key, Consistency::Linearizable).await;
        assert_eq!(kv.map(|kv| kv.mod_revision), Some(revision));
        c.restart(leader).await;
    }
}

/// A follower that comes back far behind (it was SIGKILLed while 64 values of 1 MiB were
/// written) is not ready until it has applied what the leader had committed: `/readyz`
/// decides whether Kubernetes sends it read-Service traffic and lets a rolling update move
/// on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_far_behind_is_not_ready_until_it_caught_up() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let follower = (0..3).find(|i| *i != leader).expect("a follower");
    c.kill_9(follower);
    let big = "x".repeat(1024 * 1024 - 64);
    for n in 0..64 {
        put(&c, leader, &format!("big/{n:03}"), &big).await;
    }
    let committed = c.status(leader).await.commit_index;
    c.node_mut(follower).spawn();
    let started = Instant::now();
    let (ready_after, applied) = c
        .wait_until(
            "the follower answers /readyz with 200",
            CONVERGE,
            || async {
                match c.node(follower).http_get("/readyz").await {
                    Ok((200, _)) => {
                        let applied = c.try_status(follower).await?.applied_index;
                        Ok((started.elapsed(), applied))
                    }
                    Ok((code, body)) => Err(format!("{code} {}", body.trim())),
                    Err(e) => Err(e.to_string()),
                }
            },
        )
        .await;
    println!(
        "kv-{follower} ready {ready_after:?} after its restart, applied {applied} of the \
         leader's {committed}"
    );
    assert!(
        applied >= committed,
        "kv-{follower} said ready at applied {applied}, the leader had committed {committed}"
    );
}

// ---------------------------------------------------------------------------------------
// 7. Full stop, restart in random order
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_cluster_restart_in_random_order() {
    let seed = SplitMix64::seed_from_env_or_clock();
    let mut rng = SplitMix64::new(seed);
    let mut order = vec![0usize, 1, 2];
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    println!("full_cluster_restart seed: {seed}; restart order {order:?}");

    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let cluster_id = c.member_record(0).cluster_id;
    let ids: Vec<u64> = (0..3).map(|i| c.member_record(i).node_id).collect();
    let expected = write_keys(&c, &[leader], "k", 50, 4).await;
    let before = converged(&c, &[0, 1, 2]).await;
    assert_eq!(kv_map(&before), expected);
    let revision_before = c.status(leader).await.revision;

    for i in 0..3 {
        c.kill_9(i);
    }
    for &i in &order {
        c.spawn(i);
        // The next one starts once this one's HTTP server answers.
        c.wait_until(&format!("kv-{i} answers /livez"), CONVERGE, || async {
            c.node(i)
                .http_get("/livez")
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await;
    }
    c.wait_ready_all().await;
    let leader = c.leader().await;
    println!("leader after the restart: kv-{leader}");
    membership_is(&c, &[0, 1, 2], &cluster_id, &voters(&ids)).await;
    let after = converged_at_least(&c, &[0, 1, 2], revision_before).await;
    assert_eq!(after, before, "the data changed across the full restart");
    for key in expected.keys().take(5) {
        for i in 0..3 {
            let kv = get(&c, i, key, Consistency::Linearizable).await;
            assert_eq!(
                kv.map(|kv| kv.value),
                Some(Bytes::from(expected[key].clone()))
            );
        }
    }
    let revision = c.status(leader).await.revision;
    for i in 0..3 {
        let rev = put(&c, i, &format!("after-restart/{i}"), "ok").await;
        assert_eq!(
            rev,
            revision + 1 + i as u64,
            "revision of the write through kv-{i}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 8. Partitioned leader
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_acknowledges_nothing_and_the_majority_moves_on() {
    let c = Cluster::start(3, &["--enable-fault-injection"]).await;
    let old = c.leader().await;
    let old_term = c.status(old).await.term;
    let majority: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let mut expected = write_keys(&c, &[old], "pre", 10, 2).await;

    c.partition(old, &majority).await;
    let cut_at = Instant::now();
    let new = c.leader_among(&majority).await;
    let new_term = c.status(new).await.term;
    println!(
        "kv-{old} isolated; kv-{new} leads the majority in term {new_term} after {} ms",
        cut_at.elapsed().as_millis()
    );
    assert!(new_term > old_term);
    // The majority serves writes, through its leader and its follower.
    for &i in &majority {
        let key = format!("majority/{i}");
        put(&c, i, &key, "yes").await;
        expected.insert(key, "yes".into());
    }

    // A write to the old leader is not acknowledged.
    let mut to_old = KvClient::new(c.channel(old, OP_TIMEOUT));
    let sent = Instant::now();
    let result = to_old.put(put_req("old-leader", "unacknowledged")).await;
    println!(
        "write to the isolated kv-{old}: {:?} after {} ms",
        result
            .as_ref()
            .map(|_| "acknowledged")
            .map_err(|e| e.code()),
        sent.elapsed().as_millis()
    );
    assert!(
        result.is_err(),
        "the isolated old leader acknowledged a write: {result:?}\n{}",
        c.logs()
    );
    // A linearizable read there fails, or sees the majority's writes (never stale data).
    match to_old
        .get(get_req(
            &format!("majority/{}", majority[0]),
            Consistency::Linearizable,
        ))
        .await
    {
        Err(e) => println!("linearizable read on the isolated kv-{old}: {:?}", e.code()),
        Ok(r) => assert_eq!(
            r.into_inner().kv.map(|kv| kv.value),
            Some(Bytes::from_static(b"yes")),
            "a stale linearizable read on the isolated old leader"
        ),
    }

    // Given longer than the server's own request wait (5 s), the isolated member answers
    // itself; it cannot accept the write, so the answer must not be a success.
    let mut patient = KvClient::new(c.channel(old, Duration::from_secs(15)));
    let sent = Instant::now();
    let patient_result = patient
        .put(put_req("old-leader/patient", "unacknowledged"))
        .await;
    println!(
        "patient write to the isolated kv-{old}: {:?} after {} ms",
        patient_result.as_ref().map(|_| "acknowledged"),
        sent.elapsed().as_millis()
    );
    assert!(
        patient_result.is_err(),
        "the isolated old leader acknowledged a write: {patient_result:?}\n{}",
        c.logs()
    );

    c.heal().await;
    let leader = c.leader().await;
    let data = kv_map(&converged(&c, &[0, 1, 2]).await);
    for key in ["old-leader", "old-leader/patient"] {
        let old_write = data.get(key).cloned();
        println!("after healing: kv-{leader} leads; the unacknowledged {key} is {old_write:?}");
        if let Some(v) = &old_write {
            assert_eq!(v, "unacknowledged");
            expected.insert(key.into(), v.clone());
        }
        for i in 0..3 {
            let kv = get(&c, i, key, Consistency::Linearizable).await;
            assert_eq!(
                kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
                old_write,
                "{key} on kv-{i}"
            );
        }
    }
    assert_eq!(data, expected);
    let rev = put(&c, old, "after-heal", "ok").await;
    for i in 0..3 {
        let kv = get(&c, i, "after-heal", Consistency::Linearizable).await;
        assert_eq!(kv.map(|kv| kv.mod_revision), Some(rev));
    }

    // A member that forwards writes (no --reject-follower-writes) and cannot get one
    // accepted says so with UNAVAILABLE (or DEADLINE_EXCEEDED), not with the
    // FAILED_PRECONDITION "read-only replica" answer of --reject-follower-writes.
    let err = patient_result.expect_err("checked above");
    assert!(
        matches!(err.code(), Code::Unavailable | Code::DeadlineExceeded),
        "the isolated leader refused a write with {:?} {:?} (metadata {:?})",
        err.code(),
        err.message(),
        err.metadata()
    );
}

// ---------------------------------------------------------------------------------------
// 9. Scale up again on retained volumes
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_again_reattaches_retained_volumes() {
    // With --max-voters 4, kv-3 joins as a voter and kv-4 as a learner.
    let mut c = Cluster::start_planned(3, 5, &["--max-voters", "4"]).await;
    let leader = c.leader().await;
    let cluster_id = c.member_record(0).cluster_id;
    c.add_member(3).await;
    c.add_member(4).await;
    let ids: Vec<u64> = (0..5).map(|i| c.member_record(i).node_id).collect();
    let mut five = voters(&ids);
    five[4].role = Role::Learner;
    membership_is(&c, &[0, 1, 2, 3, 4], &cluster_id, &five).await;
    let mut expected = write_keys(&c, &[leader], "before", 20, 4).await;

    // Scale down (volumes kept), writes while they are away.
    c.kill_9(4);
    c.kill_9(3);
    for ordinal in ["4", "3"] {
        let out = c.node(leader).cli(&["cluster", "remove", ordinal]).await;
        out.assert_success("ordkv cluster remove");
    }
    membership_is(&c, &[0, 1, 2], &cluster_id, &voters(&ids[..3])).await;
    expected.extend(write_keys(&c, &[leader], "away", 20, 4).await);
    let term = c.status(leader).await.term;

    // Scale up again: both come back on their old volumes, are admitted again (one voter
    // and one learner: voters are capped at 4) and catch up, without deposing the leader.
    c.spawn(3);
    c.spawn(4);
    c.wait_until(
        "kv-3 and kv-4 are members again, one voter and one learner",
        CONVERGE,
        || async {
            let s = c.try_status(leader).await?;
            let got = members(&s);
            let names: Vec<&str> = got.iter().map(|m| m.name.as_str()).collect();
            let voters = got.iter().filter(|m| m.role == Role::Voter).count();
            if names == ["kv-0", "kv-1", "kv-2", "kv-3", "kv-4"] && voters == 4 {
                Ok(())
            } else {
                Err(format!("the leader reports {got:?}"))
            }
        },
    )
    .await;
    for (i, id) in ids.iter().enumerate().skip(3) {
        assert_eq!(
            c.member_record(i).node_id,
            *id,
            "kv-{i} changed its node id"
        );
    }
    let data = kv_map(&converged(&c, &[0, 1, 2, 3, 4]).await);
    assert_eq!(data, expected);
    for i in 3..5 {
        let key = "away/00019";
        let kv = get(&c, i, key, Consistency::Linearizable).await;
        assert_eq!(
            kv.map(|kv| kv.value),
            Some(Bytes::from(expected[key].clone()))
        );
    }
    let s = c.status(leader).await;
    assert_eq!(
        (s.leader, s.term),
        (Some(leader as u32), term),
        "the returning members disrupted the leader"
    );
}
