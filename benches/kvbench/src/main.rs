//! `kvbench`: drives one workload against ordkv or etcd and appends what it measured to a
//! JSON-lines file; `kvbench report` turns such a file into medians, ratios and a chart.

mod backend;
mod physical;
mod procstat;
mod report;
mod workload;

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

/// The generated client of etcd's v3 API subset (see `proto/etcd_v3_subset.proto`).
#[allow(clippy::all, missing_docs)]
mod etcd {
    tonic::include_proto!("etcdserverpb");
}

/// One line of a results file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Line {
    Run(workload::Record),
    Fsync {
        append: bool,
        #[serde(flatten)]
        latency: physical::Latency,
    },
    Rtt(physical::Latency),
}

#[derive(Parser)]
#[command(
    version,
    about = "Load tool for ordkv and etcd (same workloads, same client stack)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one workload against one cluster.
    Run {
        #[arg(long, value_enum)]
        backend: backend::Kind,
        /// Client endpoints of every member (`host:port`); writes go to the leader.
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
        #[command(flatten)]
        spec: workload::Spec,
        /// Results file to append to (JSON lines).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Connect over TLS, trusting this PEM CA (both backends).
        #[arg(long)]
        cacert: Option<PathBuf>,
    },
    /// Measure 4 KiB write + fdatasync in a directory (appending and over written blocks).
    Fsync {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 500)]
        count: u32,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Measure the loopback TCP round trip.
    Rtt {
        #[arg(long, default_value_t = 20_000)]
        count: u32,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Medians, ratio table, `compare.json` and a PNG chart from a results file.
    Report {
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        json: PathBuf,
        #[arg(long)]
        chart: Option<PathBuf>,
        /// Also write the table as Markdown here.
        #[arg(long)]
        markdown: Option<PathBuf>,
    },
}

fn append(out: Option<&PathBuf>, line: &Line) -> anyhow::Result<()> {
    let text = serde_json::to_string(line)?;
    println!("{text}");
    if let Some(path) = out {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(f, "{text}")?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run {
            backend,
            endpoints,
            spec,
            out,
            cacert,
        } => {
            if let Some(ca) = cacert {
                let pem =
                    std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
                backend::use_tls(&pem);
            }
            let connections = spec.connections.min(spec.clients.max(1));
            let backend = backend::Backend::connect(backend, &endpoints, connections).await?;
            let record = workload::run(backend, spec).await?;
            append(out.as_ref(), &Line::Run(record))
        }
        Command::Fsync { dir, count, out } => {
            for append_mode in [false, true] {
                let latency = physical::fsync(&dir, count, append_mode)?;
                append(
                    out.as_ref(),
                    &Line::Fsync {
                        append: append_mode,
                        latency,
                    },
                )?;
            }
            Ok(())
        }
        Command::Rtt { count, out } => {
            append(out.as_ref(), &Line::Rtt(physical::loopback_rtt(count)?))
        }
        Command::Report {
            input,
            json,
            chart,
            markdown,
        } => {
            let text = std::fs::read_to_string(&input)
                .with_context(|| format!("reading {}", input.display()))?;
            let lines = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    serde_json::from_str(l)
                        .with_context(|| format!("bad line in {}: {l}", input.display()))
                })
                .collect::<anyhow::Result<Vec<Line>>>()?;
            let rows = report::rows(&lines);
            std::fs::write(&json, serde_json::to_string_pretty(&rows)?)?;
            let table = report::table(&rows, &lines);
            println!("{table}");
            if let Some(path) = markdown {
                std::fs::write(path, &table)?;
            }
            if let Some(path) = chart {
                report::chart(&rows, &path)?;
            }
            Ok(())
        }
    }
}
