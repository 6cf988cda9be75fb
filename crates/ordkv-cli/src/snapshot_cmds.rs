//! `ordkv snapshot save FILE` (a consistent backup streamed from a member) and
//! `ordkv snapshot restore FILE <serve flags>` (seeds a data dir for a new cluster from it).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use futures::StreamExt;

use crate::serve::ServeArgs;

/// `ordkv snapshot ...`.
#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Saves a consistent backup of the answering member to FILE.
    Save {
        /// Where to write the snapshot (written to FILE.part, then renamed).
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

/// Saves a backup through `client`.
pub async fn save(client: &ordkv_client::Client, file: PathBuf) -> anyhow::Result<()> {
    let part = file.with_extension("part");
    let mut out =
        std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?;
    let mut chunks = client.backup().await?;
    let mut bytes = 0u64;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        bytes += chunk.len() as u64;
        out.write_all(&chunk)?;
    }
    out.sync_all()?;
    drop(out);
    let summary = ordkv::verify_snapshot(&part)
        .with_context(|| format!("the downloaded snapshot {} is damaged", part.display()))?;
    std::fs::rename(&part, &file)?;
    println!(
        "saved revision {} (log index {}) to {} ({bytes} bytes)",
        summary.revision,
        summary.last_log_id.map_or(0, |l| l.index),
        file.display()
    );
    Ok(())
}

/// Restores a backup into the data dir named by the serve flags.
pub async fn restore(file: PathBuf, serve: &ServeArgs) -> anyhow::Result<()> {
    let resolved = crate::serve::resolve(serve)?;
    let dir = resolved.node.data_dir.clone();
    let summary = ordkv::restore_snapshot(&file, resolved.node).await?;
    println!(
        "restored revision {} (log index {}) into {}; start `ordkv serve` with the same flags",
        summary.revision,
        summary.last_log_id.map_or(0, |l| l.index),
        dir.display()
    );
    Ok(())
}
