//! `ordkv snapshot save FILE` (a consistent backup streamed from a member),
//! `ordkv snapshot verify FILE` (checks a backup end to end) and
//! `ordkv snapshot restore FILE <serve flags>` (seeds a data dir for a new cluster from it).
//! In a terminal each shows its progress (bytes, keys, rate) on stderr; `-o json` prints a
//! summary at the end.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::output::{Format, print_json};
use crate::serve::ServeArgs;

/// `ordkv snapshot ...`.
#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Saves a consistent backup of the answering member to FILE, or into --dir.
    Save {
        /// Where to write the snapshot (written to FILE.part, fsynced, checked, then renamed).
        #[arg(required_unless_present = "dir")]
        file: Option<PathBuf>,
        /// Write into this directory instead, under a name that sorts by time
        /// (`ordkv-backup-<unix seconds>-<member>-r<revision>.snap`, as `serve --backup-dir`
        /// names them).
        #[arg(long, conflicts_with = "file", value_name = "DIR")]
        dir: Option<PathBuf>,
        /// With --dir: then delete all but the newest N backups there.
        #[arg(long, requires = "dir", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        keep: Option<u32>,
    },
    /// Checks a backup end to end (format, every record, checksum) and describes it; exits 1
    /// if it is damaged.
    Verify {
        /// The snapshot file.
        file: PathBuf,
    },
    /// Creates a data dir from a backup: a new cluster whose first member (this one) holds
    /// the snapshot's data. Give the same flags as `ordkv serve` (name, data dir, service or
    /// peers), then start `ordkv serve` with them; other members join with empty data dirs.
    Restore {
        /// The snapshot file.
        file: PathBuf,
        #[command(flatten)]
        serve: Box<ServeArgs>,
    },
}

/// A progress line on stderr when it is a terminal; nothing otherwise.
fn progress(what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template(
            "{spinner} {prefix} {bytes} ({bytes_per_sec}) {msg} [{elapsed}]",
        )
        .expect("a valid template"),
    );
    bar.set_prefix(what.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Checks `file`, showing progress on `bar`.
fn verify_with(file: &Path, bar: &ProgressBar) -> std::io::Result<ordkv::SnapshotSummary> {
    bar.set_position(0);
    ordkv::verify_snapshot_with(file, &mut |bytes, keys| {
        bar.set_position(bytes);
        bar.set_message(format!("{keys} keys"));
    })
}

fn summary_json(file: &Path, s: &ordkv::SnapshotSummary, took: Duration) -> serde_json::Value {
    json!({
        "file": file.display().to_string(),
        "revision": s.revision,
        "log_index": s.last_log_id.map_or(0, |l| l.index),
        "keys": s.keys,
        "leases": s.leases,
        "bytes": s.bytes,
        "seconds": took.as_secs_f64(),
    })
}

fn describe(s: &ordkv::SnapshotSummary) -> String {
    format!(
        "revision {} (log index {}), {} keys, {} leases, {} bytes",
        s.revision,
        s.last_log_id.map_or(0, |l| l.index),
        s.keys,
        s.leases,
        s.bytes
    )
}

/// Where `snapshot save` writes.
pub enum SaveTo {
    /// This file.
    File(PathBuf),
    /// A new file in this directory, then keep the newest `keep`.
    Dir { dir: PathBuf, keep: Option<u32> },
}

/// Saves a backup through `client`.
pub async fn save(client: &ordkv_client::Client, to: SaveTo, fmt: Format) -> anyhow::Result<()> {
    let started = Instant::now();
    let part = match &to {
        SaveTo::File(file) => file.with_extension("part"),
        SaveTo::Dir { dir, .. } => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            dir.join(ordkv::backup_part_name("ordkv-backup-saving"))
        }
    };
    let mut out =
        std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?;
    let bar = progress("saving");
    let member = client.status().await?.member;
    let mut chunks = client.backup().await?;
    let mut bytes = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        bytes += chunk.len() as u64;
        bar.set_position(bytes);
        out.write_all(&chunk)?;
    }
    out.sync_all()?;
    drop(out);
    bar.set_prefix("checking");
    let summary = verify_with(&part, &bar)
        .with_context(|| format!("the downloaded snapshot {} is damaged", part.display()))?;
    let file = match &to {
        SaveTo::File(file) => file.clone(),
        SaveTo::Dir { dir, .. } => dir.join(ordkv::backup_file_name(&member, summary.revision)),
    };
    std::fs::rename(&part, &file)?;
    if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)?.sync_all()?;
    }
    if let SaveTo::Dir {
        dir,
        keep: Some(keep),
    } = &to
    {
        ordkv::prune_backups(dir, *keep as usize)?;
    }
    bar.finish_and_clear();
    match fmt {
        Format::Json => print_json(&summary_json(&file, &summary, started.elapsed()))?,
        Format::Human => println!("saved {} to {}", describe(&summary), file.display()),
    }
    Ok(())
}

/// Checks a backup file.
pub fn verify(file: &Path, fmt: Format) -> anyhow::Result<()> {
    let started = Instant::now();
    let bar = progress("checking");
    let checked = verify_with(file, &bar);
    bar.finish_and_clear();
    let summary = checked.with_context(|| format!("{} is damaged", file.display()))?;
    match fmt {
        Format::Json => print_json(&summary_json(file, &summary, started.elapsed()))?,
        Format::Human => println!("{}: ok: {}", file.display(), describe(&summary)),
    }
    Ok(())
}

/// Restores a backup into the data dir named by the serve flags.
pub async fn restore(file: PathBuf, serve: &ServeArgs, fmt: Format) -> anyhow::Result<()> {
    let started = Instant::now();
    let resolved = crate::serve::resolve(serve)?;
    let dir = resolved.node.data_dir.clone();
    let bar = progress("checking");
    let checked = verify_with(&file, &bar);
    bar.finish_and_clear();
    checked.with_context(|| format!("{} is damaged; nothing was restored", file.display()))?;
    let bar = progress("restoring");
    let restored = ordkv::restore_snapshot(&file, resolved.node).await;
    bar.finish_and_clear();
    let summary = restored?;
    match fmt {
        Format::Json => print_json(&summary_json(&file, &summary, started.elapsed()))?,
        Format::Human => println!(
            "restored {} into {}; start `ordkv serve` with the same flags",
            describe(&summary),
            dir.display()
        ),
    }
    Ok(())
}
