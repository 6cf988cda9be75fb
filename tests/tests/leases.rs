//! Leases, locks and elections across real processes: a killed client's keys end on every
//! member at one revision; keys kept alive survive a leader's SIGKILL and a leader paused past
//! the TTL; locks stay exclusive and fenced, and elections have one leader at a time, while
//! members are killed and a holder is paused.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ordkv_client::{Client, StreamExt, WatchStream};
use ordkv_proto::v1::{
    Compare, Consistency, GetRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, TxnResponse,
    WatchRequest, compare, request_op,
};
use ordkv_recipes::{Backend, Election, Lock, Session};
use ordkv_tests::cluster::Cluster;
use ordkv_tests::{COMMAND_DEADLINE, ordkv_command, run_async};

/// The cluster's longest election timeout (`ordkv::node`'s Raft config).
const ELECTION_TIMEOUT: Duration = Duration::from_secs(1);

fn endpoints(c: &Cluster, members: &[usize]) -> Vec<String> {
    members.iter().map(|&i| c.node(i).client_addr()).collect()
}

async fn client(c: &Cluster, members: &[usize]) -> Client {
    Client::connect(&endpoints(c, members))
        .await
        .expect("client")
        .with_timeout(Some(Duration::from_millis(700)))
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Every event under `prefix` on member `i` from `from`, as `(key, is delete, revision,
/// when it arrived)`, gathered in the background.
type Seen = Arc<Mutex<Vec<(String, bool, u64, Instant)>>>;

async fn watch_events(c: &Cluster, i: usize, prefix: &str, from: u64) -> Seen {
    let mut kv = c.kv(i);
    let mut stream = kv
        .watch(WatchRequest {
            prefix: b(prefix),
            start_revision: from,
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let seen: Seen = Default::default();
    let out = seen.clone();
    tokio::spawn(async move {
        while let Ok(Some(resp)) = stream.message().await {
            for e in resp.events {
                let kv = e.kv.unwrap_or_default();
                let delete = e.r#type == ordkv_proto::v1::event::EventType::Delete as i32;
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                out.lock()
                    .unwrap()
                    .push((key, delete, kv.mod_revision, Instant::now()));
            }
        }
    });
    seen
}

async fn value_on(c: &Cluster, i: usize, key: &str) -> Option<Bytes> {
    let resp = c
        .kv(i)
        .get(GetRequest {
            key: b(key),
            consistency: Consistency::Serializable as i32,
            min_revision: 0,
        })
        .await
        .expect("get")
        .into_inner();
    resp.kv.map(|kv| kv.value)
}

/// A client process keeps a 2 s lease alive (`ordkv lease keep-alive`) and is SIGKILLed: its
/// keys are deleted on every member, all at one revision, no sooner than the lease allows and
/// within the TTL plus an election timeout of the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_clients_keys_end_on_every_member_at_one_revision() {
    let c = Cluster::start(3, &[]).await;
    let all = endpoints(&c, &[0, 1, 2]).join(",");
    let cli = |args: &[&str]| {
        let mut cmd = ordkv_command();
        cmd.args(args).args(["--endpoints", &all, "-o", "json"]);
        cmd
    };
    let out = run_async(cli(&["lease", "grant", "2"]), None, COMMAND_DEADLINE).await;
    let granted: serde_json::Value =
        serde_json::from_str(&out.assert_success("grant").stdout_str()).expect("json");
    let (id, ttl) = (
        granted["id"].as_u64().unwrap(),
        granted["ttl"].as_u64().unwrap(),
    );
    assert_eq!(ttl, 2);
    let mut put_revision = 0;
    for (i, key) in ["dead/a", "dead/b", "dead/c"].iter().enumerate() {
        // Through each member: a follower forwards the put with its lease.
        let mut cmd = ordkv_command();
        let at = c.node(i).client_addr();
        cmd.args([
            "put",
            key,
            "v",
            "--lease",
            &id.to_string(),
            "--endpoints",
            &at,
            "-o",
            "json",
        ]);
        let out = run_async(cmd, None, COMMAND_DEADLINE).await;
        let put: serde_json::Value =
            serde_json::from_str(&out.assert_success("put").stdout_str()).expect("json");
        put_revision = put["revision"].as_u64().unwrap();
    }
    let mut watches = Vec::new();
    for i in 0..3 {
        watches.push(watch_events(&c, i, "dead/", put_revision + 1).await);
    }
    let mut keeper = cli(&["lease", "keep-alive", &id.to_string()]);
    let mut keeper = keeper
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start the keep-alive client");
    // Kept alive for twice its TTL: nothing ends.
    tokio::time::sleep(2 * Duration::from_secs(ttl)).await;
    for i in 0..3 {
        assert!(
            value_on(&c, i, "dead/a").await.is_some(),
            "kv-{i} lost a key kept alive"
        );
    }
    keeper.kill().expect("SIGKILL the client");
    let killed_at = Instant::now();
    keeper.wait().expect("reap the client");

    let mut revisions = BTreeMap::new();
    let mut latest = Duration::ZERO;
    let mut earliest = Duration::MAX;
    for (i, seen) in watches.iter().enumerate() {
        let deletes = c
            .wait_until(
                &format!("kv-{i} saw the three deletes"),
                Duration::from_secs(15),
                || async {
                    let seen = seen.lock().unwrap().clone();
                    let deletes: Vec<_> = seen.into_iter().filter(|e| e.1).collect();
                    if deletes.len() >= 3 {
                        Ok(deletes)
                    } else {
                        Err(format!("{deletes:?}"))
                    }
                },
            )
            .await;
        assert_eq!(deletes.len(), 3, "kv-{i}: {deletes:?}");
        for (key, _, revision, at) in &deletes {
            revisions.insert((i, key.clone()), *revision);
            latest = latest.max(at.duration_since(killed_at));
            earliest = earliest.min(at.duration_since(killed_at));
        }
    }
    let distinct: std::collections::BTreeSet<u64> = revisions.values().copied().collect();
    assert_eq!(
        distinct.len(),
        1,
        "the deletes are not at one revision: {revisions:?}"
    );
    let ttl = Duration::from_secs(ttl);
    // The last keepalive went out at most a third of the TTL (plus its round trip) before
    // the kill.
    assert!(
        earliest >= ttl - ttl / 3 - Duration::from_millis(100),
        "deleted {earliest:?} after the kill: early"
    );
    assert!(
        latest <= ttl + ELECTION_TIMEOUT,
        "deleted {latest:?} after the kill: later than TTL + election timeout"
    );
    println!(
        "lease TTL {ttl:?}: keys deleted {earliest:?}..{latest:?} after the client's SIGKILL, at revision {distinct:?} on every member"
    );
}

/// Puts `key` on `lease` through `client`; returns the revision.
async fn put_leased(client: &Client, key: &str, lease: u64) -> u64 {
    let resp = client
        .put(PutRequest {
            key: b(key),
            value: b("v"),
            prev_kv: false,
            lease,
        })
        .await
        .expect("put with lease");
    resp.header.map_or(0, |h| h.revision)
}

async fn deletes(seen: &Seen) -> Vec<(String, bool, u64, Instant)> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|e| e.1)
        .cloned()
        .collect()
}

/// A session keeps its lease alive while the leader is SIGKILLed and restarted: its keys never
/// end, on any member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_kept_alive_survive_a_leader_sigkill() {
    let mut c = Cluster::start(3, &[]).await;
    let client = client(&c, &[0, 1, 2]).await;
    let session = Session::new(client.clone(), 4).await.expect("session");
    let revision = put_leased(&client, "alive/a", session.lease()).await;
    put_leased(&client, "alive/b", session.lease()).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let seen = watch_events(&c, follower, "alive/", revision + 1).await;
    c.kill_9(leader);
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.restart(leader).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(!session.is_lost(), "the session was lost");
    assert_eq!(deletes(&seen).await, vec![], "keys kept alive were deleted");
    for i in 0..3 {
        c.wait_until(
            &format!("kv-{i} has the keys"),
            Duration::from_secs(10),
            || async {
                match value_on(&c, i, "alive/b").await {
                    Some(_) => Ok(()),
                    None => Err("missing".to_string()),
                }
            },
        )
        .await;
    }
    session.close().await.expect("close");
    c.wait_until(
        "the keys end with the session",
        Duration::from_secs(10),
        || async {
            let n = deletes(&seen).await.len();
            if n == 2 {
                Ok(())
            } else {
                Err(format!("{n} deletes"))
            }
        },
    )
    .await;
}

/// A leader SIGSTOPped for longer than a lease's TTL (7 s over 5 s) wakes with that lease long past its
/// deadline on its clock; meanwhile the new leader kept it alive. Whatever expiry the old
/// leader proposes on waking is in its stale term and never commits: the keys stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_does_not_end_leases_the_new_leader_keeps_alive() {
    let c = Cluster::start(3, &[]).await;
    let client = client(&c, &[0, 1, 2]).await;
    // 5 s, under the 7 s pause: with 3 s a keepalive stuck on the paused member, the client's
    // move to another endpoint and the election together outlasted the TTL once on a loaded
    // machine (the session counted itself lost; no key was deleted).
    let session = Session::new(client.clone(), 5).await.expect("session");
    let revision = put_leased(&client, "paused/a", session.lease()).await;
    // Refreshed on the leader's clock once more just before the pause.
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let seen = watch_events(&c, follower, "paused/", revision + 1).await;
    c.node(leader).pause();
    tokio::time::sleep(Duration::from_secs(7)).await;
    c.node(leader).resume();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!session.is_lost(), "the session was lost");
    assert_eq!(deletes(&seen).await, vec![], "a lease kept alive was ended");
    c.wait_until(
        "the old leader still has the key",
        Duration::from_secs(10),
        || async {
            match value_on(&c, leader, "paused/a").await {
                Some(_) => Ok(()),
                None => Err("missing".to_string()),
            }
        },
    )
    .await;
    let stalled = c
        .node(leader)
        .logs()
        .contains("the lease clock did not run for a while");
    println!("the paused leader noticed its stall on waking: {stalled}");
    session.close().await.expect("close");
}

/// A client whose keepalives can be held back, as a paused process's would be.
#[derive(Clone)]
struct Pausable {
    client: Client,
    paused: Arc<AtomicBool>,
}

impl Backend for Pausable {
    type Error = ordkv_client::Error;

    async fn lease_grant(&self, ttl: i64) -> Result<(u64, i64), Self::Error> {
        Backend::lease_grant(&self.client, ttl).await
    }

    async fn lease_keep_alive(&self, id: u64) -> Result<i64, Self::Error> {
        while self.paused.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Backend::lease_keep_alive(&self.client, id).await
    }

    async fn lease_revoke(&self, id: u64) -> Result<(), Self::Error> {
        Backend::lease_revoke(&self.client, id).await
    }

    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, Self::Error> {
        self.client.txn(req).await
    }

    async fn range(
        &self,
        req: RangeRequest,
    ) -> Result<ordkv_proto::v1::RangeResponse, Self::Error> {
        self.client.range(req).await
    }

    async fn watch(&self, req: WatchRequest) -> Result<WatchStream, Self::Error> {
        self.client.watch(req).await
    }
}

const REGISTER: &str = "fenced/register";

/// Tokens as fixed-width decimals, so that the register's byte order is their numeric order.
fn token_text(token: u64) -> Bytes {
    Bytes::from(format!("{token:020}"))
}

#[derive(Debug, Clone)]
struct Hold {
    worker: usize,
    token: u64,
    acquired: Instant,
    released: Instant,
    /// The fenced write: accepted, and the revision it created.
    wrote: bool,
    write_revision: u64,
    /// The holder's keepalives were held back past its TTL.
    paused: bool,
    /// The session counted itself lost by the time the hold ended.
    lost: bool,
}

/// Three workers take a lock in turn; each holder writes its fencing token to a register
/// with a Txn that holds only while its lock key is the one it created and the register is
/// older than its token. Members are SIGKILLed or paused meanwhile, and one worker now and
/// then stops keeping its lease alive while it holds the lock (a paused process), then tries
/// its write. The history must show holders one at a time (among those whose sessions lived)
/// and accepted tokens only ever growing, none from a paused holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_stay_exclusive_and_fenced_while_members_and_holders_fail() {
    let mut c = Cluster::start(3, &[]).await;
    let setup = client(&c, &[0, 1, 2]).await;
    setup
        .put_value(REGISTER, token_text(0))
        .await
        .expect("register");
    let holds: Arc<Mutex<Vec<Hold>>> = Default::default();
    let run_for = Duration::from_secs(25);
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..3 {
        let backend = Pausable {
            client: client(&c, &[worker, (worker + 1) % 3, (worker + 2) % 3]).await,
            paused: Default::default(),
        };
        let holds = holds.clone();
        workers.push(tokio::spawn(async move {
            let mut taken = 0;
            while started.elapsed() < run_for {
                let Ok(session) = Session::new(backend.clone(), 2).await else {
                    continue;
                };
                let lock = Lock::new(&session, "locks/fenced");
                let Ok(guard) = lock.lock_timeout(Duration::from_secs(10)).await else {
                    let _ = session.close().await;
                    continue;
                };
                let acquired = Instant::now();
                taken += 1;
                let paused = worker == 0 && taken % 3 == 2;
                if paused {
                    backend.paused.store(true, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(6)).await;
                    backend.paused.store(false, Ordering::SeqCst);
                } else {
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
                let token = guard.fencing_token();
                let write = backend
                    .client
                    .txn(TxnRequest {
                        compare: vec![
                            guard.still_held(),
                            Compare {
                                result: compare::Result::Less as i32,
                                key: b(REGISTER),
                                target: Some(compare::Target::Value(token_text(token))),
                            },
                        ],
                        success: vec![RequestOp {
                            request: Some(request_op::Request::Put(PutRequest {
                                key: b(REGISTER),
                                value: token_text(token),
                                prev_kv: false,
                                lease: 0,
                            })),
                        }],
                        failure: vec![],
                    })
                    .await;
                let released = Instant::now();
                // The session's own verdict, a moment after the hold, so a loss it was
                // about to notice is counted.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let (wrote, write_revision) = match &write {
                    Ok(t) => (t.succeeded, t.header.as_ref().map_or(0, |h| h.revision)),
                    Err(_) => (false, 0),
                };
                holds.lock().unwrap().push(Hold {
                    worker,
                    token,
                    acquired,
                    released,
                    wrote,
                    write_revision,
                    paused,
                    lost: session.is_lost(),
                });
                let _ = lock.unlock(guard).await;
                let _ = session.close().await;
            }
        }));
    }
    // Faults every few seconds, on each member in turn, leader or not: SIGKILL and restart,
    // or SIGSTOP for longer than an election timeout and SIGCONT.
    let mut victim = 0;
    let mut kill = true;
    while started.elapsed() < run_for - Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_secs(3)).await;
        if kill {
            c.kill_9(victim);
            tokio::time::sleep(Duration::from_secs(1)).await;
            c.restart(victim).await;
        } else {
            c.node(victim).pause();
            tokio::time::sleep(Duration::from_secs(2)).await;
            c.node(victim).resume();
        }
        victim = (victim + 1) % 3;
        kill = !kill;
    }
    for w in workers {
        w.await.expect("worker");
    }

    let holds = holds.lock().unwrap().clone();
    // The store's own history: each lock key's life, in revisions.
    let lives = key_lives(&c, "locks/fenced/").await;
    let mut accepted: Vec<&Hold> = holds.iter().filter(|h| h.wrote).collect();
    assert!(
        accepted.len() >= 10,
        "only {} fenced writes: {holds:#?}",
        accepted.len()
    );
    accepted.sort_by_key(|h| h.write_revision);
    for h in &accepted {
        // The writer's key existed at the write and was the oldest one alive: it held the
        // lock then, whatever its own clock said.
        let (_, (_, ended)) = lives
            .iter()
            .find(|(_, (created, _))| *created == h.token)
            .unwrap_or_else(|| panic!("no lock key was created at {}: {lives:?}", h.token));
        assert!(
            h.write_revision < *ended,
            "a write after its lock key ended: {h:?} (ended at {ended})"
        );
        let older_alive = lives
            .iter()
            .find(|(_, (created, ended))| *created < h.token && *ended > h.write_revision);
        assert!(
            older_alive.is_none(),
            "{h:?} wrote while {older_alive:?} held the lock"
        );
    }
    for pair in accepted.windows(2) {
        assert!(
            pair[0].token < pair[1].token,
            "an older token was accepted after a newer one: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    let paused: Vec<&Hold> = holds.iter().filter(|h| h.paused).collect();
    let refused = paused.iter().filter(|h| !h.wrote).count();
    assert!(
        refused >= 1,
        "no paused holder outlived its lease: {paused:#?}"
    );
    let mut live: Vec<&Hold> = holds.iter().filter(|h| !h.lost && !h.paused).collect();
    live.sort_by_key(|h| h.acquired);
    for pair in live.windows(2) {
        assert!(
            pair[0].released <= pair[1].acquired,
            "two holders at once: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
    let register = setup.get_value(REGISTER).await.expect("register");
    let last = accepted.last().map(|h| token_text(h.token));
    assert_eq!(
        register, last,
        "the register is not the last accepted token"
    );
    println!(
        "{} holds ({} accepted writes; {} paused holders, {refused} refused; {} sessions lost) by workers {:?}",
        holds.len(),
        accepted.len(),
        paused.len(),
        holds.iter().filter(|h| h.lost).count(),
        holds.iter().map(|h| h.worker).collect::<Vec<_>>()
    );
}

/// Every key under `prefix` as it lived: key → (create revision, delete revision or
/// `u64::MAX`), from the watch history of member 0 (every key's, up to now).
async fn key_lives(c: &Cluster, prefix: &str) -> BTreeMap<String, (u64, u64)> {
    let current = c.status(0).await.revision;
    let mut stream = c
        .kv(0)
        .watch(WatchRequest {
            start_revision: 1,
            ..Default::default()
        })
        .await
        .expect("watch history")
        .into_inner();
    let mut lives = BTreeMap::new();
    let mut at = 0;
    while at < current {
        let Some(resp) = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
        else {
            break;
        };
        if resp.created {
            continue;
        }
        at = resp.header.map_or(at, |h| h.revision);
        for e in resp.events {
            let kv = e.kv.unwrap_or_default();
            let key = String::from_utf8_lossy(&kv.key).into_owned();
            if !key.starts_with(prefix) {
                continue;
            }
            if e.r#type == ordkv_proto::v1::event::EventType::Delete as i32 {
                lives
                    .entry(key)
                    .and_modify(|l: &mut (u64, u64)| l.1 = kv.mod_revision);
            } else {
                lives.entry(key).or_insert((kv.create_revision, u64::MAX));
            }
        }
    }
    lives
}

/// One win of the election: (revision, value proclaimed, from, to, session lost or
/// proclaim refused).
type Term = (u64, String, Instant, Instant, bool);

/// Three campaigners win in turn while a member is SIGKILLed and restarted; each winner
/// proclaims a value of its own. Terms never overlap, and an observer sees every winner's
/// value in the order they won.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_election_has_one_leader_at_a_time_and_observers_see_every_change() {
    let mut c = Cluster::start(3, &[]).await;
    let observer_client = client(&c, &[0, 1, 2]).await;
    let mut observed_stream = Election::new(observer_client, "elect/faults").observe();
    let observed: Arc<Mutex<Vec<Bytes>>> = Default::default();
    let out = observed.clone();
    tokio::spawn(async move {
        while let Some(leader) = observed_stream.next().await {
            if let Some(kv) = leader {
                out.lock().unwrap().push(kv.value);
            }
        }
    });
    let terms: Arc<Mutex<Vec<Term>>> = Default::default();
    let mut campaigners = Vec::new();
    for who in 0..3usize {
        let client = client(&c, &[who, (who + 1) % 3, (who + 2) % 3]).await;
        let terms = terms.clone();
        campaigners.push(tokio::spawn(async move {
            for round in 0..3 {
                let Ok(session) = Session::new(client.clone(), 2).await else {
                    continue;
                };
                let election = Election::new(client.clone(), "elect/faults");
                let won = tokio::time::timeout(
                    Duration::from_secs(30),
                    election.campaign(&session, format!("c{who}")),
                )
                .await;
                let Ok(Ok(leadership)) = won else {
                    let _ = session.close().await;
                    continue;
                };
                let from = Instant::now();
                let value = format!("c{who}-r{round}");
                let proclaimed = election.proclaim(&leadership, value.clone()).await.is_ok();
                tokio::time::sleep(Duration::from_millis(800)).await;
                let to = Instant::now();
                tokio::time::sleep(Duration::from_millis(100)).await;
                let lost = session.is_lost() || !proclaimed;
                terms
                    .lock()
                    .unwrap()
                    .push((leadership.revision(), value, from, to, lost));
                let _ = election.resign(leadership).await;
                let _ = session.close().await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader = c.leader().await;
    c.kill_9(leader);
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.restart(leader).await;
    for task in campaigners {
        task.await.expect("campaigner");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut terms = terms.lock().unwrap().clone();
    terms.sort_by_key(|t| t.0);
    assert!(terms.len() >= 6, "only {} terms: {terms:?}", terms.len());
    let live: Vec<_> = terms.iter().filter(|t| !t.4).collect();
    for pair in live.windows(2) {
        assert!(
            pair[0].3 <= pair[1].2,
            "two leaders at once: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
    let observed = observed.lock().unwrap().clone();
    let mut rest = observed.iter();
    for t in &live {
        assert!(
            rest.any(|v| v == t.1.as_bytes()),
            "the observer missed {:?} (or saw it out of order): {observed:?}",
            t.1
        );
    }
    println!("{} terms, {} observed values", terms.len(), observed.len());
}

/// Bad lease requests get a clear error and change nothing; the node goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lease_requests_are_refused_clearly() {
    use ordkv_proto::v1::lease_client::LeaseClient;
    use ordkv_proto::v1::{
        LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest,
    };
    use tonic::Code;
    let node = ordkv_tests::NodeProcess::start("kv-0").await;
    let mut leases = LeaseClient::new(node.channel().await);
    let mut kv = node.kv().await;
    let before = node.status().await.revision;
    for (ttl, fragment) in [
        (0, "is not positive"),
        (-7, "is not positive"),
        (i64::MAX, "over the maximum"),
    ] {
        let e = leases
            .lease_grant(LeaseGrantRequest { ttl, id: 0 })
            .await
            .expect_err("a bad TTL was granted");
        assert_eq!(e.code(), Code::InvalidArgument, "TTL {ttl}: {e:?}");
        assert!(e.message().contains(fragment), "TTL {ttl}: {}", e.message());
    }
    let raised = leases
        .lease_grant(LeaseGrantRequest { ttl: 1, id: 42 })
        .await
        .expect("grant")
        .into_inner();
    assert_eq!((raised.id, raised.ttl, raised.ttl_raised), (42, 2, true));
    let e = leases
        .lease_grant(LeaseGrantRequest { ttl: 5, id: 42 })
        .await
        .expect_err("granted an id twice");
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    // A keepalive of an unknown lease: answered with TTL 0, and the stream goes on.
    let answers = leases
        .lease_keep_alive(tonic::codegen::tokio_stream::iter([
            LeaseKeepAliveRequest { id: 999 },
            LeaseKeepAliveRequest { id: 42 },
        ]))
        .await
        .expect("keepalive stream")
        .into_inner();
    let answers: Vec<_> = answers
        .map(|a| a.expect("keepalive answer"))
        .collect()
        .await;
    assert_eq!(
        answers.iter().map(|a| (a.id, a.ttl)).collect::<Vec<_>>(),
        [(999, 0), (42, 2)]
    );
    let e = leases
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: 999,
            keys: true,
        })
        .await
        .expect_err("the TTL of nothing");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // A put on a revoked lease: NOT_FOUND, and nothing written.
    leases
        .lease_revoke(LeaseRevokeRequest { id: 42 })
        .await
        .expect("revoke");
    let e = kv
        .put(PutRequest {
            key: b("on-revoked"),
            value: b("v"),
            prev_kv: false,
            lease: 42,
        })
        .await
        .expect_err("a put on a revoked lease");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(
        e.message().contains("lease 42 not found"),
        "{}",
        e.message()
    );
    let e = leases
        .lease_revoke(LeaseRevokeRequest { id: 42 })
        .await
        .expect_err("revoked twice");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert_eq!(
        node.status().await.revision,
        before,
        "a refused request changed the store"
    );
    kv.put(PutRequest {
        key: b("still-serving"),
        value: b("v"),
        prev_kv: false,
        lease: 0,
    })
    .await
    .expect("the node still serves");
}

/// The CLI: `lease grant -o json`, `put --lease`, `lease ttl|list|revoke`, `lock NAME --
/// command` (exits with the command's status, holding the lock meanwhile) and `elect`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_grants_leases_runs_commands_under_a_lock_and_elects() {
    let node = ordkv_tests::NodeProcess::start("kv-0").await;
    let at = node.client_addr();
    let cli = |args: &[&str]| {
        let mut cmd = ordkv_command();
        // Before the command: whatever follows `--` is the locked command's.
        cmd.args(["--endpoints", &at]).args(args);
        cmd
    };
    let json = |out: &ordkv_tests::Output| -> serde_json::Value {
        serde_json::from_str(&out.stdout_str()).expect("json output")
    };
    let out = run_async(
        cli(&["lease", "grant", "30", "-o", "json"]),
        None,
        COMMAND_DEADLINE,
    )
    .await;
    let granted = json(out.assert_success("lease grant"));
    let id = granted["id"].as_u64().expect("an id");
    assert_eq!(granted["ttl"], 30);
    let id_text = id.to_string();
    run_async(
        cli(&["put", "svc/a", "1", "--lease", &id_text]),
        None,
        COMMAND_DEADLINE,
    )
    .await
    .assert_success("put --lease");
    let out = run_async(
        cli(&["lease", "ttl", &id_text, "--keys", "-o", "json"]),
        None,
        COMMAND_DEADLINE,
    )
    .await;
    let ttl = json(out.assert_success("lease ttl"));
    assert_eq!(ttl["granted_ttl"], 30);
    assert_eq!(ttl["keys"], serde_json::json!([{"key": "svc/a"}]));
    let out = run_async(cli(&["lease", "list"]), None, COMMAND_DEADLINE).await;
    assert_eq!(
        out.assert_success("lease list").stdout_str(),
        format!("{id}\t30s\n")
    );
    let out = run_async(
        cli(&["lease", "keep-alive", &id_text, "--once"]),
        None,
        COMMAND_DEADLINE,
    )
    .await;
    assert!(
        out.assert_success("keep-alive")
            .stdout_str()
            .contains("TTL 30s")
    );
    let out = run_async(cli(&["lease", "revoke", &id_text]), None, COMMAND_DEADLINE).await;
    assert_eq!(
        out.assert_success("revoke").stdout_str(),
        format!("lease {id} revoked (1 keys deleted)\n")
    );
    let out = run_async(cli(&["get", "svc/a"]), None, COMMAND_DEADLINE).await;
    assert!(!out.status.success(), "the key outlived its lease");
    let out = run_async(
        cli(&["put", "svc/b", "1", "--lease", &id_text]),
        None,
        COMMAND_DEADLINE,
    )
    .await;
    assert!(
        !out.status.success() && out.stderr.contains("not found"),
        "{}",
        out.stderr
    );

    // The command runs under the lock and its exit status comes back; a second `lock` waits
    // until the first is done.
    let script = "echo \"$ORDKV_LOCK_KEY $ORDKV_LOCK_FENCING_TOKEN\"; sleep 1; exit 7";
    let first = tokio::spawn(run_async(
        cli(&["lock", "jobs", "--", "sh", "-c", script]),
        None,
        COMMAND_DEADLINE,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = run_async(
        cli(&[
            "lock",
            "jobs",
            "--",
            "sh",
            "-c",
            "echo $ORDKV_LOCK_FENCING_TOKEN",
        ]),
        None,
        COMMAND_DEADLINE,
    )
    .await;
    let first = first.await.expect("first lock");
    assert_eq!(first.status.code(), Some(7), "{}", first.stderr);
    let first_line = first.stdout_str();
    let (key, token) = first_line.trim().split_once(' ').expect("key and token");
    assert!(key.starts_with("jobs/"), "{first_line}");
    let second_token: u64 = second
        .assert_success("second lock")
        .stdout_str()
        .trim()
        .parse()
        .unwrap();
    assert!(
        second_token > token.parse::<u64>().unwrap(),
        "tokens do not grow"
    );
    let out = run_async(
        cli(&["lock", "jobs", "--wait", "1s", "--", "true"]),
        None,
        COMMAND_DEADLINE,
    )
    .await;
    out.assert_success("a free lock");

    // A campaigner leads until stopped; an observer prints the leader's value.
    let mut leader = cli(&["elect", "primary", "pod-a"]);
    let mut leader = leader
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("campaign");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = run_async(
        cli(&["scan", "--prefix", "primary/"]),
        None,
        COMMAND_DEADLINE,
    )
    .await;
    assert!(
        out.assert_success("scan")
            .stdout_str()
            .ends_with("\tpod-a\n"),
        "{}",
        out.stdout_str()
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(leader.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let status = leader.wait().expect("the campaigner exits");
    assert!(status.success(), "{status:?}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(leader.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    assert_eq!(stdout, "pod-a\n");
    let out = run_async(
        cli(&["scan", "--prefix", "primary/"]),
        None,
        COMMAND_DEADLINE,
    )
    .await;
    assert_eq!(
        out.assert_success("scan").stdout_str(),
        "",
        "the leader key outlived the resign"
    );
}

/// Leases travel in snapshots: a member wiped and re-seeded by a snapshot install knows every
/// lease and its keys (the index rebuilt from the keys' records); made leader, it answers
/// time-to-live questions, revokes with the keys, and keeps a live session's lease alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_survive_a_snapshot_install_and_its_member_leading() {
    use ordkv_proto::v1::{LeaseGrantRequest, LeaseTimeToLiveRequest};
    let mut c = Cluster::start(3, &["--snapshot-every", "100"]).await;
    let client = client(&c, &[0, 1, 2]).await;
    let session = Session::new(client.clone(), 3).await.expect("session");
    put_leased(&client, "snap/kept", session.lease()).await;
    let doomed = client
        .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
        .await
        .expect("grant")
        .id;
    put_leased(&client, "snap/doomed-1", doomed).await;
    put_leased(&client, "snap/doomed-2", doomed).await;
    for i in 0..400 {
        client
            .put_value(format!("filler/{i}"), "x")
            .await
            .expect("filler");
    }
    let leader = c.leader().await;
    let f = (leader + 1) % 3;
    c.wipe(f).await;
    assert!(
        c.node(f).current_log().contains("installed snapshot"),
        "kv-{f} did not install a snapshot:\n{}",
        c.node(f).current_log()
    );
    c.wait_until(
        &format!("kv-{f} has the leased keys"),
        Duration::from_secs(20),
        || async {
            match value_on(&c, f, "snap/doomed-2").await {
                Some(_) => Ok(()),
                None => Err("missing".to_string()),
            }
        },
    )
    .await;
    client.transfer_leader(f as u32).await.expect("transfer");
    c.wait_until(
        &format!("kv-{f} leads"),
        Duration::from_secs(20),
        || async {
            let now = c.leader().await;
            if now == f {
                Ok(())
            } else {
                Err(format!("kv-{now} leads"))
            }
        },
    )
    .await;
    let ttl = client
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: doomed,
            keys: true,
        })
        .await
        .expect("time to live");
    assert_eq!(ttl.granted_ttl, 60);
    assert_eq!(ttl.keys, vec![b("snap/doomed-1"), b("snap/doomed-2")]);
    assert_eq!(
        client.lease_revoke(doomed).await.expect("revoke").deleted,
        2
    );
    for i in 0..3 {
        c.wait_until(
            &format!("kv-{i} lost the revoked keys"),
            Duration::from_secs(10),
            || async {
                match value_on(&c, i, "snap/doomed-1").await {
                    None => Ok(()),
                    Some(_) => Err("still there".to_string()),
                }
            },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!session.is_lost(), "the session was lost");
    assert!(
        value_on(&c, f, "snap/kept").await.is_some(),
        "a kept-alive key ended"
    );
    session.close().await.expect("close");
}
