//! A recorded read/write/compare-and-swap load on a few keys, for fault scenarios against
//! members reached on host ports (the container harness's published client ports).
//!
//! [`HistoryLoad::start`] runs clients on their own runtime thread: client `c` talks to
//! member `c % n` only (so every member, a faulty one included, gets its share of reads the
//! moment it answers again), with random puts of unique values, linearizable gets, and
//! compare-and-swaps (`Txn`: value equals the last one this client read, then put a new
//! one, else read the key). Every operation joins a [`Recorder`] history as
//! [`crate::linearizability`] models it: a put is a write; a get a read; a CAS that
//! succeeded is a read of the expected value and a write of the new one over the same
//! interval (the checker has no read-modify-write; its atomicity is checked apart: values
//! are unique, so no two CASes may succeed from the same value); a CAS that failed is a
//! read of what its failure branch returned. A failed write whose error says
//! `not-applied`, or that never got a connection, is left out; any other failed write has
//! an unknown outcome. A failed read
//! observed nothing and is left out.
//!
//! A poller asks every member's own `Cluster.Status` four times a second and keeps the
//! leader each reported per term: [`HistoryReport::leader_changes`] counts the terms in
//! which some member reported a leader, less one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ordkv_proto::v1::cluster_client::ClusterClient;
use ordkv_proto::v1::compare::{Result as CompareResult, Target as CompareTarget};
use ordkv_proto::v1::kv_client::KvClient;
use ordkv_proto::v1::request_op::Request;
use ordkv_proto::v1::response_op::Response;
use ordkv_proto::v1::{
    Compare, Consistency, GetRequest, PutRequest, RangeRequest, RequestOp, StatusRequest,
    TxnRequest,
};
use tonic::transport::Channel;

use crate::SplitMix64;
use crate::containers::channel_to;
use crate::linearizability::{CheckResult, Event, Op, Recorder, check};

/// Keys the load works on (each an independent register).
pub const KEYS: u64 = 5;
/// Clients per member.
const CLIENTS_PER_MEMBER: usize = 2;
/// Pause between two operations of one client (the machine is shared).
const THINK: Duration = Duration::from_millis(10);
/// Pause after a failed operation.
const BACKOFF: Duration = Duration::from_millis(50);
/// How often the poller asks every member for its status.
const POLL: Duration = Duration::from_millis(250);

/// A successful CAS: (key, expected value, new value).
pub type CasDone = (String, Vec<u8>, Vec<u8>);

/// What the clients and the poller share.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// (call, return) of every acknowledged put or successful CAS, in recorder time.
    writes: Mutex<Vec<(u64, u64)>>,
    /// (key, expected, new) of every successful CAS.
    cas_ok: Mutex<Vec<CasDone>>,
    /// Failed operations by kind and gRPC code: how many, and the first message.
    errors: Mutex<BTreeMap<String, (u64, String)>>,
    /// Per term: the leaders members reported, and when first seen (recorder time).
    leaders: Mutex<BTreeMap<u64, (BTreeSet<u32>, u64)>>,
    /// Operations answered, by kind.
    answered: Mutex<BTreeMap<&'static str, u64>>,
}

impl Shared {
    fn error(&self, kind: &str, e: &tonic::Status) {
        let outcome = e
            .metadata()
            .get(ordkv_proto::WRITE_OUTCOME_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        self.errors
            .lock()
            .unwrap()
            .entry(
                format!("{kind} {:?} {outcome}", e.code())
                    .trim()
                    .to_string(),
            )
            .or_insert_with(|| (0, e.message().to_string()))
            .0 += 1;
    }

    fn answered(&self, kind: &'static str) {
        *self.answered.lock().unwrap().entry(kind).or_default() += 1;
    }
}

/// The running load; see the module doc.
pub struct HistoryLoad {
    prefix: String,
    endpoints: Vec<SocketAddr>,
    recorder: Recorder,
    shared: Arc<Shared>,
    rt: tokio::runtime::Runtime,
    clients: Vec<tokio::task::JoinHandle<()>>,
    poller: Option<tokio::task::JoinHandle<()>>,
    poller_stop: Arc<AtomicBool>,
    op_timeout: Duration,
}

/// The key of register `k` under `prefix`.
pub fn key(prefix: &str, k: u64) -> String {
    format!("{prefix}/k{k}")
}

impl HistoryLoad {
    /// Starts [`CLIENTS_PER_MEMBER`] clients per endpoint (endpoint `i` is member `i`) on
    /// keys `<prefix>/k0..`, each request with `op_timeout`, and the status poller.
    pub fn start(endpoints: Vec<SocketAddr>, prefix: &str, op_timeout: Duration) -> HistoryLoad {
        let seed = SplitMix64::seed_from_env_or_clock();
        println!("[history] {prefix}: seed {seed} (ORDKV_TEST_SEED={seed} replays the choices)");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let recorder = Recorder::start();
        let shared = Arc::new(Shared::default());
        let mut clients = Vec::new();
        for id in 0..(endpoints.len() * CLIENTS_PER_MEMBER) {
            let addr = endpoints[id % endpoints.len()];
            let channel = {
                let _guard = rt.enter();
                channel_to(addr, op_timeout)
            };
            clients.push(rt.spawn(client(
                id as u64,
                seed,
                prefix.to_string(),
                channel,
                recorder.clone(),
                shared.clone(),
            )));
        }
        let poller_stop = Arc::new(AtomicBool::new(false));
        let poller = rt.spawn(poll_leaders(
            endpoints.clone(),
            recorder.clone(),
            shared.clone(),
            poller_stop.clone(),
        ));
        HistoryLoad {
            prefix: prefix.to_string(),
            endpoints,
            recorder,
            shared,
            rt,
            clients,
            poller: Some(poller),
            poller_stop,
            op_timeout,
        }
    }

    /// Now, in the history's clock (nanoseconds since the load started).
    pub fn now(&self) -> u64 {
        self.recorder.now()
    }

    /// Writes (puts and CASes) acknowledged so far.
    pub fn acked_writes(&self) -> usize {
        self.shared.writes.lock().unwrap().len()
    }

    /// Linearizable gets of every key through member `i`, `rounds` times over, each key
    /// retried until answered or `within` passed since the call; every answer joins the
    /// history. Returns (answered, failed attempts), or `Err` when `within` ran out.
    pub fn read_every_key(
        &self,
        i: usize,
        rounds: u64,
        within: Duration,
    ) -> Result<(u64, u64), String> {
        let channel = {
            let _guard = self.rt.enter();
            channel_to(self.endpoints[i], self.op_timeout)
        };
        let (recorder, prefix) = (self.recorder.clone(), self.prefix.clone());
        self.rt.block_on(async move {
            let mut kv = KvClient::new(channel);
            let started = Instant::now();
            let (mut answered, mut failed) = (0, 0);
            for round in 0..rounds {
                for k in 0..KEYS {
                    let key = key(&prefix, k);
                    loop {
                        let call = recorder.now();
                        match kv.get(get(&key)).await {
                            Ok(r) => {
                                recorder.record(Event {
                                    client: 1000 + 100 * i as u64 + round,
                                    key: key.clone().into_bytes(),
                                    op: Op::Read {
                                        value: r.into_inner().kv.map(|kv| kv.value.to_vec()),
                                    },
                                    call,
                                    ret: Some(recorder.now()),
                                });
                                answered += 1;
                                break;
                            }
                            Err(e) => {
                                failed += 1;
                                if started.elapsed() > within {
                                    return Err(format!(
                                        "no linearizable read of {key} through member {i} \
                                         within {within:?}: {:?} {}",
                                        e.code(),
                                        e.message()
                                    ));
                                }
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        }
                    }
                }
            }
            Ok((answered, failed))
        })
    }

    /// Stops the clients (each after its current operation), reads every key through every
    /// member (retrying for up to `within`), stops the poller, and returns the record.
    pub fn finish(mut self, within: Duration) -> Result<HistoryReport, String> {
        self.shared.stop.store(true, Ordering::SeqCst);
        for c in std::mem::take(&mut self.clients) {
            self.rt
                .block_on(c)
                .map_err(|e| format!("load client: {e}"))?;
        }
        let ran = Duration::from_nanos(self.recorder.now());
        let mut final_reads = 0;
        for i in 0..self.endpoints.len() {
            final_reads += self.read_every_key(i, 1, within)?.0;
        }
        self.poller_stop.store(true, Ordering::SeqCst);
        if let Some(p) = self.poller.take() {
            let _ = self.rt.block_on(p);
        }
        Ok(HistoryReport {
            events: self.recorder.events(),
            writes: self.shared.writes.lock().unwrap().clone(),
            cas_ok: self.shared.cas_ok.lock().unwrap().clone(),
            errors: self.shared.errors.lock().unwrap().clone(),
            leaders: self.shared.leaders.lock().unwrap().clone(),
            answered: self.shared.answered.lock().unwrap().clone(),
            final_reads,
            ran,
        })
    }
}

impl Drop for HistoryLoad {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.poller_stop.store(true, Ordering::SeqCst);
    }
}

fn get(key: &str) -> GetRequest {
    GetRequest {
        key: Bytes::from(key.to_string()),
        consistency: Consistency::Linearizable as i32,
        min_revision: 0,
    }
}

fn put(key: &str, value: &[u8]) -> PutRequest {
    PutRequest {
        key: Bytes::from(key.to_string()),
        value: Bytes::copy_from_slice(value),
        prev_kv: false,
        lease: 0,
    }
}

/// Whether a failed write surely did not happen: the server said `not-applied`, or the
/// client never connected (a stopped member refuses the connection).
fn not_applied(e: &tonic::Status) -> bool {
    e.metadata()
        .get(ordkv_proto::WRITE_OUTCOME_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        == Some(ordkv_proto::NOT_APPLIED)
        || (e.code() == tonic::Code::Unavailable && e.message().contains("tcp connect error"))
}

async fn client(
    id: u64,
    seed: u64,
    prefix: String,
    channel: Channel,
    recorder: Recorder,
    shared: Arc<Shared>,
) {
    let mut rng = SplitMix64::new(seed ^ (id + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut kv = KvClient::new(channel);
    // The last value this client read per key (what its CAS expects).
    let mut seen: HashMap<String, Vec<u8>> = HashMap::new();
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        let key = key(&prefix, rng.next_u64() % KEYS);
        let dice = rng.next_u64() % 10;
        let ok = if dice < 4 {
            seq += 1;
            let value = format!("c{id}-{seq}").into_bytes();
            let call = recorder.now();
            let result = kv.put(put(&key, &value)).await;
            let ret = result.is_ok().then(|| recorder.now());
            if let Err(e) = &result {
                shared.error("put", e);
            }
            if let Some(ret) = ret {
                shared.writes.lock().unwrap().push((call, ret));
                shared.answered("put");
            }
            if !result.as_ref().err().is_some_and(not_applied) {
                recorder.record(Event {
                    client: id,
                    key: key.into_bytes(),
                    op: Op::Write { value: Some(value) },
                    call,
                    ret,
                });
            }
            result.is_ok()
        } else if dice < 8 || !seen.contains_key(&key) {
            let call = recorder.now();
            match kv.get(get(&key)).await {
                Ok(r) => {
                    let value = r.into_inner().kv.map(|kv| kv.value.to_vec());
                    if let Some(v) = &value {
                        seen.insert(key.clone(), v.clone());
                    }
                    recorder.record(Event {
                        client: id,
                        key: key.into_bytes(),
                        op: Op::Read { value },
                        call,
                        ret: Some(recorder.now()),
                    });
                    shared.answered("get");
                    true
                }
                Err(e) => {
                    shared.error("get", &e);
                    false
                }
            }
        } else {
            let expected = seen[&key].clone();
            seq += 1;
            let value = format!("c{id}-{seq}").into_bytes();
            let txn = TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal as i32,
                    key: Bytes::from(key.clone()),
                    target: Some(CompareTarget::Value(Bytes::from(expected.clone()))),
                }],
                success: vec![RequestOp {
                    request: Some(Request::Put(put(&key, &value))),
                }],
                failure: vec![RequestOp {
                    request: Some(Request::Range(RangeRequest {
                        start: Bytes::from(key.clone()),
                        end: Bytes::from(format!("{key}\0")),
                        ..Default::default()
                    })),
                }],
            };
            let call = recorder.now();
            match kv.txn(txn).await {
                Ok(r) => {
                    let ret = recorder.now();
                    let r = r.into_inner();
                    if r.succeeded {
                        shared.writes.lock().unwrap().push((call, ret));
                        shared.cas_ok.lock().unwrap().push((
                            key.clone(),
                            expected.clone(),
                            value.clone(),
                        ));
                        for op in [
                            Op::Read {
                                value: Some(expected),
                            },
                            Op::Write {
                                value: Some(value.clone()),
                            },
                        ] {
                            recorder.record(Event {
                                client: id,
                                key: key.clone().into_bytes(),
                                op,
                                call,
                                ret: Some(ret),
                            });
                        }
                        seen.insert(key, value);
                        shared.answered("cas-ok");
                    } else {
                        let observed = match r.responses.first().and_then(|o| o.response.as_ref()) {
                            Some(Response::Range(range)) => {
                                range.kvs.first().map(|kv| kv.value.to_vec())
                            }
                            other => panic!("a failed CAS answered {other:?}"),
                        };
                        match &observed {
                            Some(v) => seen.insert(key.clone(), v.clone()),
                            None => seen.remove(&key),
                        };
                        recorder.record(Event {
                            client: id,
                            key: key.into_bytes(),
                            op: Op::Read { value: observed },
                            call,
                            ret: Some(ret),
                        });
                        shared.answered("cas-failed");
                    }
                    true
                }
                Err(e) => {
                    shared.error("cas", &e);
                    if !not_applied(&e) {
                        recorder.record(Event {
                            client: id,
                            key: key.into_bytes(),
                            op: Op::Write { value: Some(value) },
                            call,
                            ret: None,
                        });
                    }
                    false
                }
            }
        };
        tokio::time::sleep(if ok { THINK } else { BACKOFF }).await;
    }
}

async fn poll_leaders(
    endpoints: Vec<SocketAddr>,
    recorder: Recorder,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) {
    // A frozen or cut-off member must not hold up the others' answers: one task each.
    let mut tasks = Vec::new();
    for addr in endpoints {
        let (recorder, shared, stop) = (recorder.clone(), shared.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = ClusterClient::new(channel_to(addr, Duration::from_secs(1)));
            while !stop.load(Ordering::SeqCst) {
                if let Ok(r) = c.status(StatusRequest {}).await {
                    let r = r.into_inner();
                    if let Some(leader) = r.leader {
                        let now = recorder.now();
                        shared
                            .leaders
                            .lock()
                            .unwrap()
                            .entry(r.term)
                            .or_insert_with(|| (BTreeSet::new(), now))
                            .0
                            .insert(leader);
                    }
                }
                tokio::time::sleep(POLL).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// What a [`HistoryLoad`] recorded.
#[derive(Debug, Clone)]
pub struct HistoryReport {
    /// Every recorded operation.
    pub events: Vec<Event>,
    /// (call, return) of acknowledged writes (puts and successful CASes), recorder time.
    pub writes: Vec<(u64, u64)>,
    /// (key, expected, new) of every successful CAS.
    pub cas_ok: Vec<CasDone>,
    /// Failed operations by kind, code and outcome: how many, and the first message.
    pub errors: BTreeMap<String, (u64, String)>,
    /// Per term: the leaders members reported, and when first seen.
    pub leaders: BTreeMap<u64, (BTreeSet<u32>, u64)>,
    /// Operations answered by kind (the load's clients only).
    pub answered: BTreeMap<&'static str, u64>,
    /// Linearizable reads of [`HistoryLoad::finish`].
    pub final_reads: u64,
    /// How long the clients ran.
    pub ran: Duration,
}

impl HistoryReport {
    /// Terms in which some member reported a leader, less one.
    pub fn leader_changes(&self) -> usize {
        self.leaders.len().saturating_sub(1)
    }

    /// Leader changes first seen in `[from, to)` (recorder time).
    pub fn leader_changes_between(&self, from: u64, to: u64) -> usize {
        let first = self.leaders.values().map(|(_, at)| *at).min();
        self.leaders
            .values()
            .filter(|(_, at)| Some(*at) != first && (from..to).contains(at))
            .count()
    }

    /// The longest time in which no client's write was acknowledged (between two
    /// acknowledgements, or from the last one to the end), and when it began.
    pub fn longest_write_gap(&self) -> (Duration, Duration) {
        let mut rets: Vec<u64> = self.writes.iter().map(|(_, ret)| *ret).collect();
        rets.sort_unstable();
        rets.push(self.ran.as_nanos() as u64);
        let mut best = (0, 0);
        for w in rets.windows(2) {
            if w[1].saturating_sub(w[0]) > best.0 {
                best = (w[1] - w[0], w[0]);
            }
        }
        (Duration::from_nanos(best.0), Duration::from_nanos(best.1))
    }

    /// `term: leaders` as reported, e.g. `{2: [0], 3: [1]}`.
    pub fn terms(&self) -> BTreeMap<u64, Vec<u32>> {
        self.leaders
            .iter()
            .map(|(t, (l, _))| (*t, l.iter().copied().collect()))
            .collect()
    }

    /// Two members reported different leaders in one term (Raft's election safety).
    pub fn two_leaders_in_a_term(&self) -> Option<(u64, Vec<u32>)> {
        self.terms().into_iter().find(|(_, l)| l.len() > 1)
    }

    /// Pairs of successful CASes from the same expected value (with unique values, at most
    /// one can succeed).
    pub fn double_cas(&self) -> Vec<String> {
        let mut by_from: BTreeMap<(&str, &[u8]), Vec<&[u8]>> = BTreeMap::new();
        for (key, from, to) in &self.cas_ok {
            by_from.entry((key, from)).or_default().push(to);
        }
        by_from
            .into_iter()
            .filter(|(_, to)| to.len() > 1)
            .map(|((key, from), to)| {
                format!(
                    "{key}: {} -> {:?}",
                    String::from_utf8_lossy(from),
                    to.iter()
                        .map(|t| String::from_utf8_lossy(t).into_owned())
                        .collect::<Vec<_>>()
                )
            })
            .collect()
    }

    /// The `q` quantile (0..=1) of acknowledged write latencies called in `[from, to)`, and
    /// how many there were.
    pub fn write_latency(&self, q: f64, from: u64, to: u64) -> (Option<Duration>, usize) {
        let mut l: Vec<u64> = self
            .writes
            .iter()
            .filter(|(call, _)| (from..to).contains(call))
            .map(|(call, ret)| ret - call)
            .collect();
        l.sort_unstable();
        if l.is_empty() {
            return (None, 0);
        }
        let at = ((l.len() as f64 * q).ceil() as usize).clamp(1, l.len()) - 1;
        (Some(Duration::from_nanos(l[at])), l.len())
    }

    /// Runs the linearizability check within `budget`, prints the verdict, and returns it
    /// with how long it took.
    pub fn check(&self, budget: Duration) -> (CheckResult, Duration) {
        let started = Instant::now();
        let verdict = check(&self.events, None, budget);
        (verdict, started.elapsed())
    }

    /// One line: operations by kind, unknown writes, errors.
    pub fn summary(&self) -> String {
        let unknown = self
            .events
            .iter()
            .filter(|e| matches!(e.op, Op::Write { .. }) && e.ret.is_none())
            .count();
        format!(
            "{} events checked ({} final reads); answered {:?}; writes of unknown outcome \
             {unknown}; failures {:?}; terms with a leader (term: leaders) {:?}",
            self.events.len(),
            self.final_reads,
            self.answered,
            self.errors,
            self.terms()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(writes: Vec<(u64, u64)>, leaders: &[(u64, u32, u64)]) -> HistoryReport {
        let mut by_term: BTreeMap<u64, (BTreeSet<u32>, u64)> = BTreeMap::new();
        for &(term, leader, at) in leaders {
            by_term
                .entry(term)
                .or_insert_with(|| (BTreeSet::new(), at))
                .0
                .insert(leader);
        }
        HistoryReport {
            events: Vec::new(),
            writes,
            cas_ok: Vec::new(),
            errors: BTreeMap::new(),
            leaders: by_term,
            answered: BTreeMap::new(),
            final_reads: 0,
            ran: Duration::from_nanos(100),
        }
    }

    #[test]
    fn leader_changes_count_terms_with_a_leader_after_the_first() {
        let r = report(vec![], &[(1, 0, 0), (3, 2, 50), (4, 2, 70), (4, 1, 71)]);
        assert_eq!(r.leader_changes(), 2);
        assert_eq!(r.leader_changes_between(0, 60), 1);
        assert_eq!(r.leader_changes_between(60, u64::MAX), 1);
        assert_eq!(r.two_leaders_in_a_term(), Some((4, vec![1, 2])));
        assert_eq!(report(vec![], &[(1, 0, 0)]).leader_changes(), 0);
    }

    #[test]
    fn write_latency_quantiles_and_gaps() {
        // Latencies 1..=100 ns, called at 0..100.
        let writes: Vec<(u64, u64)> = (0..100).map(|i| (i, 2 * i + 1)).collect();
        let r = report(writes, &[]);
        assert_eq!(
            r.write_latency(0.99, 0, 100),
            (Some(Duration::from_nanos(99)), 100)
        );
        assert_eq!(
            r.write_latency(0.5, 0, 100),
            (Some(Duration::from_nanos(50)), 100)
        );
        assert_eq!(r.write_latency(0.99, 200, 300), (None, 0));
        // Acknowledged at 10, 40, 45; the run ended at 100: the last gap is the longest.
        let gaps = report(vec![(0, 10), (0, 40), (0, 45)], &[]);
        assert_eq!(
            gaps.longest_write_gap(),
            (Duration::from_nanos(55), Duration::from_nanos(45))
        );
    }

    #[test]
    fn two_cas_successes_from_one_value_are_reported() {
        let mut r = report(vec![], &[]);
        r.cas_ok = vec![
            ("k".into(), b"a".to_vec(), b"b".to_vec()),
            ("k".into(), b"b".to_vec(), b"c".to_vec()),
        ];
        assert!(r.double_cas().is_empty());
        r.cas_ok.push(("k".into(), b"a".to_vec(), b"d".to_vec()));
        assert_eq!(r.double_cas(), vec!["k: a -> [\"b\", \"d\"]".to_string()]);
    }
}
