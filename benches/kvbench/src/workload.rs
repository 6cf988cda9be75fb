//! One definition of every workload, run the same way against either backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::backend::Backend;
use crate::procstat;

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    Serialize,
    Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Write a distinct value to a random key.
    Put,
    /// Read a random key through the read index / quorum.
    GetLinearizable,
    /// Read a random key from the member's local state.
    GetSerializable,
    /// Read 100 consecutive keys (linearizable).
    Range,
    /// Half puts, half linearizable gets.
    Mixed,
    /// `clients` watchers on the key prefix; writers put at `--watch-rate`; latency is from
    /// the write's start to the event's arrival.
    Watch,
    /// Load `--keys` keys, then read the servers' resident memory.
    Memory,
    /// Grant a lease (TTL `--lease-ttl`), put a key with it, keep it alive once on the
    /// client's keepalive stream; latency is of the three together.
    Lease,
    /// Each client keeps one lease alive, one keepalive after the other on its stream.
    Keepalive,
    /// Grant `--keys` leases of `--lease-ttl` with a key each (as `lease`), read the servers'
    /// memory, then let them all expire: `expiry_delay_ms` is how long after the last
    /// lease's deadline the last one was gone.
    LeaseExpiry,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::GetLinearizable => "get-linearizable",
            Workload::GetSerializable => "get-serializable",
            Workload::Range => "range",
            Workload::Mixed => "mixed",
            Workload::Watch => "watch",
            Workload::Memory => "memory",
            Workload::Lease => "lease",
            Workload::Keepalive => "keepalive",
            Workload::LeaseExpiry => "lease-expiry",
        }
    }
}

#[derive(Clone, Debug, clap::Args)]
pub struct Spec {
    #[arg(long, value_enum)]
    pub workload: Workload,
    /// Concurrent clients (watchers for `watch`).
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// gRPC connections the clients share (to the leader for writes, spread for reads).
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Measured time, after the warm-up.
    #[arg(long, default_value = "10s", value_parser = humantime_secs)]
    pub duration: Duration,
    #[arg(long, default_value = "2s", value_parser = humantime_secs)]
    pub warmup: Duration,
    /// Size of the fixed key space (16-byte keys `key-000000000042`).
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Total puts per second feeding the watchers.
    #[arg(long, default_value_t = 500)]
    pub watch_rate: u32,
    /// TTL of the leases the `lease` workload grants, in seconds.
    #[arg(long, default_value_t = 60)]
    pub lease_ttl: i64,
    /// Server processes whose CPU time and resident memory are recorded.
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn humantime_secs(s: &str) -> Result<Duration, String> {
    let (n, scale) = match s.strip_suffix("ms") {
        Some(n) => (n, 0.001),
        None => (s.strip_suffix('s').unwrap_or(s), 1.0),
    };
    n.parse::<f64>()
        .map(|n| Duration::from_secs_f64(n * scale))
        .map_err(|e| format!("{s:?} is not a duration like 10s or 500ms: {e}"))
}

/// What one run measured. `ops` is per second of measured time (events per second for
/// `watch`); latencies in milliseconds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub backend: crate::backend::Kind,
    pub workload: Workload,
    pub clients: usize,
    pub ops: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub errors: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Server CPU time (all `server_pids` together) per operation, in microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_us_per_op: Option<f64>,
    /// Mean resident memory per server process at the end, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_mb: Option<f64>,
    /// `lease-expiry`: from the last lease's deadline until no lease was left, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_delay_ms: Option<f64>,
}

pub fn key(i: u64) -> Bytes {
    Bytes::from(format!("key-{i:012}"))
}

pub const PREFIX: &[u8] = b"key-";

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// A value that differs on every call (so no store can skip an identical rewrite); its first
/// 8 bytes are the wall-clock time of the call, read back by watchers.
fn value(size: usize, client: usize, seq: u64) -> Bytes {
    let mut v = vec![b'v'; size.max(24)];
    v[..8].copy_from_slice(&unix_nanos().to_le_bytes());
    v[8..16].copy_from_slice(&(client as u64).to_le_bytes());
    v[16..24].copy_from_slice(&seq.to_le_bytes());
    v.truncate(size.max(24));
    v.into()
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// Latencies and errors gathered by every client of a run.
#[derive(Default)]
struct Tally {
    hist: Option<Histogram<u64>>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, hist: &Histogram<u64>, errors: u64, first_error: Option<String>) {
        self.hist
            .get_or_insert_with(histogram)
            .add(hist)
            .expect("same bounds");
        self.errors += errors;
        if self.first_error.is_none() {
            self.first_error = first_error;
        }
    }
}

fn progress(spec: &Spec, what: String) -> ProgressBar {
    if spec.quiet {
        return ProgressBar::hidden();
    }
    let total = (spec.warmup + spec.duration).as_millis() as u64;
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>28} [{bar:30}] {elapsed:>3} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what);
    bar
}

/// Writes `keys` keys (not measured) so reads find data.
pub async fn preload(backend: &Backend, keys: u64, value_size: usize) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..64)
        .map(|client| {
            let (backend, next) = (backend.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= keys {
                        return anyhow::Ok(());
                    }
                    backend
                        .put(client, key(i), value(value_size, client, i))
                        .await
                        .with_context(|| format!("preloading key {i}"))?;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}

pub async fn run(backend: Backend, spec: Spec) -> anyhow::Result<Record> {
    match spec.workload {
        Workload::Watch => return run_watch(backend, spec).await,
        Workload::Memory => return run_memory(backend, spec).await,
        Workload::LeaseExpiry => return run_lease_expiry(backend, spec).await,
        Workload::Put | Workload::Lease | Workload::Keepalive => {}
        _ => preload(&backend, spec.keys, spec.value_size).await?,
    }
    let bar = progress(&spec, format!("{} x{}", spec.workload.name(), spec.clients));
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let done = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let cpu_at_start = tokio::spawn(cpu_at(measure_from, spec.server_pids.clone()));
    let clients: Vec<_> = (0..spec.clients)
        .map(|client| {
            let (backend, spec, done, tally) =
                (backend.clone(), spec.clone(), done.clone(), tally.clone());
            tokio::spawn(async move {
                let mut hist = histogram();
                let (mut errors, mut first_error) = (0, None);
                let mut seq = 0u64;
                let mut leases = match spec.workload {
                    Workload::Lease | Workload::Keepalive => Some(backend.lease_client(client)),
                    _ => None,
                };
                let kept = match (&mut leases, spec.workload) {
                    (Some(leases), Workload::Keepalive) => {
                        let value = value(spec.value_size, client, 0);
                        Some(
                            leases
                                .cycle(spec.lease_ttl, key(client as u64), value)
                                .await?,
                        )
                    }
                    _ => None,
                };
                loop {
                    let began = Instant::now();
                    if began >= end {
                        break;
                    }
                    seq += 1;
                    let i = fastrand::u64(0..spec.keys);
                    let write = match spec.workload {
                        Workload::Put => true,
                        Workload::Mixed => fastrand::bool(),
                        _ => false,
                    };
                    let result = if let (Some(leases), Some(id)) = (&mut leases, kept) {
                        leases.keep_alive(id).await
                    } else if let Some(leases) = &mut leases {
                        let value = value(spec.value_size, client, seq);
                        leases.cycle(spec.lease_ttl, key(i), value).await.map(drop)
                    } else if write {
                        backend
                            .put(client, key(i), value(spec.value_size, client, seq))
                            .await
                    } else {
                        match spec.workload {
                            Workload::GetSerializable => {
                                backend.get(client, key(i), false).await.map(drop)
                            }
                            Workload::Range => backend
                                .range(client, key(i), key(i + 100), 100)
                                .await
                                .map(drop),
                            _ => backend.get(client, key(i), true).await.map(drop),
                        }
                    };
                    if began < measure_from {
                        continue;
                    }
                    match result {
                        Ok(()) => {
                            hist.saturating_record(began.elapsed().as_micros() as u64);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
                tally.lock().await.merge(&hist, errors, first_error);
                anyhow::Ok(())
            })
        })
        .collect();
    let ticker = tick(bar.clone(), start, done.clone());
    for c in clients {
        c.await??;
    }
    ticker.abort();
    bar.finish_and_clear();
    Ok(record(&backend, &spec, &done, &tally, cpu_at_start.await?).await)
}

async fn run_watch(backend: Backend, spec: Spec) -> anyhow::Result<Record> {
    let mut streams = Vec::with_capacity(spec.clients);
    for watcher in 0..spec.clients {
        streams.push(backend.watch(watcher, Bytes::from_static(PREFIX)).await?);
    }
    let bar = progress(&spec, format!("watch x{}", spec.clients));
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let done = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let cpu_at_start = tokio::spawn(cpu_at(measure_from, spec.server_pids.clone()));
    const WRITERS: usize = 4;
    let period = Duration::from_secs_f64(WRITERS as f64 / f64::from(spec.watch_rate.max(1)));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (backend, spec) = (backend.clone(), spec.clone());
            tokio::spawn(async move {
                let mut every = tokio::time::interval(period);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut seq = 0;
                while Instant::now() < end {
                    every.tick().await;
                    seq += 1;
                    let i = fastrand::u64(0..spec.keys);
                    backend
                        .put(writer, key(i), value(spec.value_size, writer, seq))
                        .await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    let watchers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            let (done, tally) = (done.clone(), tally.clone());
            tokio::spawn(async move {
                let mut hist = histogram();
                let (mut errors, mut first_error) = (0, None);
                // Events of writes still in flight at `end` arrive a little later.
                while let Ok(Some(batch)) =
                    tokio::time::timeout_at(end + Duration::from_millis(500), stream.next()).await
                {
                    let now = unix_nanos();
                    match batch {
                        Ok(values) => {
                            if Instant::now() < measure_from {
                                continue;
                            }
                            for v in values {
                                let sent =
                                    u64::from_le_bytes(v[..8].try_into().unwrap_or_default());
                                hist.saturating_record(now.saturating_sub(sent) / 1000);
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                            break;
                        }
                    }
                }
                tally.lock().await.merge(&hist, errors, first_error);
            })
        })
        .collect();
    let ticker = tick(bar.clone(), start, done.clone());
    for w in writers {
        w.await??;
    }
    for w in watchers {
        w.await?;
    }
    ticker.abort();
    bar.finish_and_clear();
    Ok(record(&backend, &spec, &done, &tally, cpu_at_start.await?).await)
}

async fn run_memory(backend: Backend, spec: Spec) -> anyhow::Result<Record> {
    let started = Instant::now();
    if !spec.quiet {
        eprintln!("loading {} keys of {} bytes...", spec.keys, spec.value_size);
    }
    preload(&backend, spec.keys, spec.value_size).await?;
    let elapsed = started.elapsed().as_secs_f64();
    // Let background work (compaction, snapshots) settle before reading memory.
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(Record {
        backend: backend.kind(),
        workload: Workload::Memory,
        clients: 64,
        ops: spec.keys as f64 / elapsed,
        p50_ms: 0.0,
        p99_ms: 0.0,
        p999_ms: 0.0,
        errors: 0,
        first_error: None,
        cpu_us_per_op: None,
        rss_mb: procstat::mean_rss_mb(&spec.server_pids),
        expiry_delay_ms: None,
    })
}

async fn run_lease_expiry(backend: Backend, spec: Spec) -> anyhow::Result<Record> {
    if !spec.quiet {
        eprintln!(
            "granting {} leases of {} s, a key each...",
            spec.keys, spec.lease_ttl
        );
    }
    let next = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let clients: Vec<_> = (0..spec.clients.max(1))
        .map(|client| {
            let (backend, spec, next, tally) =
                (backend.clone(), spec.clone(), next.clone(), tally.clone());
            tokio::spawn(async move {
                let mut leases = backend.lease_client(client);
                let mut hist = histogram();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= spec.keys {
                        break;
                    }
                    let began = Instant::now();
                    leases
                        .cycle(spec.lease_ttl, key(i), value(spec.value_size, client, i))
                        .await
                        .with_context(|| format!("lease {i}"))?;
                    hist.saturating_record(began.elapsed().as_micros() as u64);
                }
                tally.lock().await.merge(&hist, 0, None);
                anyhow::Ok(())
            })
        })
        .collect();
    for c in clients {
        c.await??;
    }
    let granted = Instant::now();
    let rate = spec.keys as f64 / started.elapsed().as_secs_f64();
    let rss_mb = procstat::mean_rss_mb(&spec.server_pids);
    if !spec.quiet {
        eprintln!("granted at {rate:.0}/s; waiting for them to expire...");
    }
    let last_deadline = granted + Duration::from_secs(spec.lease_ttl.max(0) as u64);
    let give_up = last_deadline + Duration::from_secs(300);
    let expiry_delay_ms = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if backend.lease_count().await? == 0 {
            let now = Instant::now();
            break now.saturating_duration_since(last_deadline).as_secs_f64() * 1000.0;
        }
        anyhow::ensure!(
            Instant::now() < give_up,
            "leases still live 300 s after their TTL"
        );
    };
    let tally = std::mem::take(&mut *tally.lock().await);
    let hist = tally.hist.unwrap_or_else(histogram);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(Record {
        backend: backend.kind(),
        workload: Workload::LeaseExpiry,
        clients: spec.clients,
        ops: rate,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        errors: 0,
        first_error: None,
        cpu_us_per_op: None,
        rss_mb,
        expiry_delay_ms: Some(expiry_delay_ms),
    })
}

async fn cpu_at(at: Instant, pids: Vec<u32>) -> Option<f64> {
    tokio::time::sleep_until(at).await;
    procstat::cpu_seconds(&pids)
}

fn tick(bar: ProgressBar, start: Instant, done: Arc<AtomicU64>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            bar.set_position(start.elapsed().as_millis() as u64);
            bar.set_message(format!("{} measured", done.load(Ordering::Relaxed)));
        }
    })
}

async fn record(
    backend: &Backend,
    spec: &Spec,
    done: &AtomicU64,
    tally: &Mutex<Tally>,
    cpu_before: Option<f64>,
) -> Record {
    let ops = done.load(Ordering::Relaxed);
    let tally = std::mem::take(&mut *tally.lock().await);
    let hist = tally.hist.unwrap_or_else(histogram);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let cpu_after = procstat::cpu_seconds(&spec.server_pids);
    let cpu_us_per_op = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) if ops > 0 => Some((a - b) * 1e6 / ops as f64),
        _ => None,
    };
    Record {
        backend: backend.kind(),
        workload: spec.workload,
        clients: spec.clients,
        ops: ops as f64 / spec.duration.as_secs_f64(),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        errors: tally.errors,
        first_error: tally.first_error,
        cpu_us_per_op,
        rss_mb: procstat::mean_rss_mb(&spec.server_pids),
        expiry_delay_ms: None,
    }
}
