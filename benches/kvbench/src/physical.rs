//! The physical limits a replicated write cannot beat: one fsync and one network round trip.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

fn summarize(hist: &Histogram<u64>) -> Latency {
    Latency {
        p50_ms: hist.value_at_quantile(0.5) as f64 / 1e6,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1e6,
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// `count` times: write 4 KiB and fdatasync. `append` grows a new file (so every sync also
/// commits a size change); otherwise the writes go over an already written 4 MiB region.
pub fn fsync(dir: &Path, count: u32, append: bool) -> anyhow::Result<Latency> {
    let path = dir.join(format!("kvbench-fsync-{}", std::process::id()));
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let block = [0x5au8; 4096];
    const REGION: u64 = 1024;
    if !append {
        for i in 0..REGION {
            file.write_all_at(&block, i * 4096)?;
        }
        file.sync_all()?;
    }
    let mut hist = histogram();
    for i in 0..u64::from(count) {
        let began = Instant::now();
        let offset = if append {
            i * 4096
        } else {
            (i % REGION) * 4096
        };
        file.write_all_at(&block, offset)?;
        file.sync_data()?;
        hist.saturating_record(began.elapsed().as_nanos() as u64);
    }
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(summarize(&hist))
}

/// Round trips of a 64-byte message over loopback TCP (no Nagle), after 1000 warm-up trips.
/// Latencies are recorded in nanoseconds.
pub fn loopback_rtt(count: u32) -> anyhow::Result<Latency> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; 64];
        while s.read_exact(&mut buf).is_ok() {
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut buf = [7u8; 64];
    let mut hist = histogram();
    for i in 0..count + 1000 {
        let began = Instant::now();
        s.write_all(&buf)?;
        s.read_exact(&mut buf)?;
        if i >= 1000 {
            hist.saturating_record(began.elapsed().as_nanos() as u64);
        }
    }
    drop(s);
    echo.join().expect("echo thread")?;
    Ok(summarize(&hist))
}
