//! Embedded ordkv beside raw sled doing the same work with the same durability.
//!
//! Durability is matched: every acknowledged raw-sled write is followed by `flush()` and an
//! `fdatasync` of sled's data file, which is what ordkv does before acknowledging a write.
//! Reads are compared as ordkv serializable (local) and linearizable reads against a sled
//! `get`. Run: `cargo bench -p ordkv-benches --bench embedded`.

use std::fs::File;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ordkv::pb;

const VALUE_BYTES: usize = 256;
const KEYS: u64 = 10_000;
const WRITERS: u64 = 32;

fn key(i: u64) -> Bytes {
    Bytes::from(format!("key/{:08}", i % KEYS))
}

/// A distinct value per write: sled skips rewriting an identical value.
fn value(i: u64) -> Bytes {
    let mut v = vec![b'v'; VALUE_BYTES];
    v[..8].copy_from_slice(&i.to_be_bytes());
    Bytes::from(v)
}

struct RawSled {
    db: sled::Db,
    data_file: File,
    _dir: tempfile::TempDir,
}

impl RawSled {
    fn open() -> RawSled {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("sled"))
            .cache_capacity(128 * 1024 * 1024) // ordkv's default
            .segment_size(8 * 1024 * 1024)
            .open()
            .unwrap();
        let data_file = File::open(dir.path().join("sled/db")).unwrap();
        RawSled {
            db,
            data_file,
            _dir: dir,
        }
    }

    fn durable_put(&self, k: &[u8], v: &[u8]) {
        self.db.insert(k, v).unwrap();
        self.db.flush().unwrap();
        self.data_file.sync_data().unwrap();
    }
}

async fn open_ordkv() -> (ordkv::Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let node = ordkv::Node::open(ordkv::NodeConfig::new(dir.path()))
        .await
        .unwrap();
    (node, dir)
}

async fn fill(kv: &ordkv::Kv) {
    for i in 0..KEYS {
        kv.put_value(key(i), value(i)).await.unwrap();
    }
}

fn puts(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut g = c.benchmark_group("put");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(8));

    let sled = Arc::new(RawSled::open());
    g.bench_function(BenchmarkId::new("raw-sled", 1), |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            sled.durable_put(&key(i), &value(i));
        })
    });
    g.bench_function(BenchmarkId::new("raw-sled", WRITERS), |b| {
        b.iter_custom(|iters| {
            let per = iters.div_ceil(WRITERS);
            let start = Instant::now();
            std::thread::scope(|s| {
                for w in 0..WRITERS {
                    let sled = &sled;
                    s.spawn(move || {
                        for i in 0..per {
                            let n = w * 1_000_000 + i;
                            sled.durable_put(&key(n), &value(n));
                        }
                    });
                }
            });
            start.elapsed()
        })
    });

    let (node, _dir) = rt.block_on(open_ordkv());
    let kv = node.kv();
    g.bench_function(BenchmarkId::new("ordkv", 1), |b| {
        let mut i = 0;
        b.to_async(&rt).iter(|| {
            i += 1;
            let kv = kv.clone();
            async move { kv.put_value(key(i), value(i)).await.unwrap() }
        })
    });
    g.bench_function(BenchmarkId::new("ordkv", WRITERS), |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let kv = kv.clone();
            async move {
                let per = iters.div_ceil(WRITERS);
                let start = Instant::now();
                let tasks: Vec<_> = (0..WRITERS)
                    .map(|w| {
                        let kv = kv.clone();
                        tokio::spawn(async move {
                            for i in 0..per {
                                let n = w * 1_000_000 + i;
                                kv.put_value(key(n), value(n)).await.unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
                start.elapsed()
            }
        })
    });
    g.finish();
    rt.block_on(node.shutdown()).unwrap();
}

fn reads(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sled = RawSled::open();
    for i in 0..KEYS {
        sled.db.insert(key(i), value(i).as_ref()).unwrap();
    }
    let (node, _dir) = rt.block_on(open_ordkv());
    let kv = node.kv();
    rt.block_on(fill(&kv));

    let mut g = c.benchmark_group("get");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("raw-sled", |b| {
        b.iter(|| {
            i += 7919;
            sled.db.get(key(i)).unwrap().unwrap()
        })
    });
    for (name, level) in [
        ("ordkv-serializable", pb::Consistency::Serializable),
        ("ordkv-linearizable", pb::Consistency::Linearizable),
    ] {
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                i += 7919;
                let kv = kv.clone();
                async move {
                    kv.get(pb::GetRequest {
                        key: key(i),
                        consistency: level as i32,
                        min_revision: 0,
                    })
                    .await
                    .unwrap()
                }
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("range-100");
    g.throughput(Throughput::Elements(100));
    g.bench_function("raw-sled", |b| {
        b.iter(|| {
            i += 7919;
            let start = key(i % (KEYS - 100));
            sled.db
                .range(start.as_ref()..)
                .take(100)
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
        })
    });
    g.bench_function("ordkv-serializable", |b| {
        b.to_async(&rt).iter(|| {
            i += 7919;
            let kv = kv.clone();
            async move {
                kv.range(pb::RangeRequest {
                    start: key(i % (KEYS - 100)),
                    limit: 100,
                    consistency: pb::Consistency::Serializable as i32,
                    ..Default::default()
                })
                .await
                .unwrap()
            }
        })
    });
    g.finish();
    rt.block_on(node.shutdown()).unwrap();
}

criterion_group!(benches, puts, reads);
criterion_main!(benches);
