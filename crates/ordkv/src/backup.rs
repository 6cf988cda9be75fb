//! Backups: a fresh snapshot of the applied state, on demand (`Cluster.Backup`) and on a
//! schedule (`--backup-dir`, `--backup-every`, `--backup-keep`).
//!
//! A scheduled backup is the same file `ordkv snapshot save` writes: copied from the fresh
//! snapshot to a temporary name in the backup dir, fsynced, verified end to end, renamed
//! and the dir fsynced, so a crash leaves either the whole file or no file under the final
//! name. Names sort by time (`ordkv-backup-<unix seconds>-<member>-r<revision>.snap`); the
//! newest `keep` are kept, older ones and leftover temporary files are deleted.
//! `ordkv snapshot save --dir` names and prunes its files the same way.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ordkv_store::SnapshotSummary;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::replica::Replica;

const PREFIX: &str = "ordkv-backup-";
const SUFFIX: &str = ".snap";
const PART: &str = ".part";

/// Scheduled backups written by this member.
#[derive(Debug, Clone)]
pub struct BackupSchedule {
    /// Where the files go (e.g. a second volume).
    pub dir: PathBuf,
    /// Time between two backups; the first one is taken one period after the start.
    pub every: Duration,
    /// How many backups to keep (the newest).
    pub keep: usize,
    /// Also while this member does not lead (its own applied state, which may trail the
    /// leader's by what it has not applied yet). By default only the leader writes.
    pub on_followers: bool,
}

impl BackupSchedule {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.every < Duration::from_secs(1) {
            return Err(Error::InvalidArgument(format!(
                "backup interval {:?} must be at least 1s (--backup-every)",
                self.every
            )));
        }
        if self.keep == 0 {
            return Err(Error::InvalidArgument(
                "keep at least one backup (--backup-keep)".into(),
            ));
        }
        Ok(())
    }
}

/// Metric: backups written by the schedule, by `outcome` (`ok`, `failed`).
pub const BACKUPS: &str = "ordkv_backups_total";
/// Metric: when the last scheduled backup was written (Unix seconds).
pub const BACKUP_LAST_SUCCESS: &str = "ordkv_backup_last_success_timestamp_seconds";

/// Builds a snapshot covering everything applied here and opens it.
pub(crate) async fn fresh_snapshot(replica: &Replica) -> Result<(SnapshotSummary, std::fs::File)> {
    let applied = replica.status().applied_index;
    replica
        .raft
        .trigger()
        .snapshot()
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))?;
    replica
        .raft
        .wait(Some(Duration::from_secs(120)))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= applied),
            "a snapshot covering the applied state",
        )
        .await
        .map_err(|e| Error::Unavailable(format!("building the snapshot: {e}")))?;
    // A newer snapshot may replace the file between finding and opening it: retry.
    let storage = |e: std::io::Error| Error::Storage(e.to_string());
    for _ in 0..3 {
        let Some(path) = replica.sm.current_snapshot_file().map_err(storage)? else {
            continue;
        };
        if let Ok(file) = std::fs::File::open(&path) {
            let summary = tokio::task::spawn_blocking(move || {
                ordkv_store::verify_snapshot(&path).map(|s| (s, file))
            })
            .await
            .map_err(|e| Error::Internal(format!("verifying the snapshot: {e}")))?
            .map_err(storage)?;
            return Ok(summary);
        }
    }
    Err(Error::Unavailable(
        "the snapshot file kept changing; retry".into(),
    ))
}

/// Takes a backup every `schedule.every` until `stop`.
pub(crate) async fn run(replica: Replica, schedule: BackupSchedule, stop: CancellationToken) {
    let mut next = tokio::time::Instant::now() + schedule.every;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        next = tokio::time::Instant::now() + schedule.every;
        if !schedule.on_followers && !replica.is_leader() {
            continue;
        }
        let started = Instant::now();
        match write_one(&replica, &schedule).await {
            Ok((path, summary)) => {
                metrics::counter!(BACKUPS, "outcome" => "ok").increment(1);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                metrics::gauge!(BACKUP_LAST_SUCCESS).set(now.as_secs_f64());
                tracing::info!(
                    path = %path.display(),
                    revision = summary.revision,
                    keys = summary.keys,
                    bytes = summary.bytes,
                    took = ?started.elapsed(),
                    "backup written"
                );
            }
            Err(e) => {
                metrics::counter!(BACKUPS, "outcome" => "failed").increment(1);
                tracing::warn!(dir = %schedule.dir.display(), error = %e, "backup failed; the next one is tried on schedule");
            }
        }
    }
}

async fn write_one(
    replica: &Replica,
    schedule: &BackupSchedule,
) -> Result<(PathBuf, SnapshotSummary)> {
    let (summary, mut file) = fresh_snapshot(replica).await?;
    let name = backup_file_name(replica.name(), summary.revision);
    let dir = schedule.dir.clone();
    let keep = schedule.keep;
    tokio::task::spawn_blocking(move || {
        let path = dir.join(&name);
        let part = dir.join(backup_part_name(&name));
        let mut out = std::fs::File::create(&part)?;
        std::io::copy(&mut file, &mut out)?;
        out.sync_all()?;
        drop(out);
        let written = ordkv_store::verify_snapshot(&part)?;
        std::fs::rename(&part, &path)?;
        std::fs::File::open(&dir)?.sync_all()?;
        prune_backups(&dir, keep)?;
        Ok::<_, std::io::Error>((path, written))
    })
    .await
    .map_err(|e| Error::Internal(format!("writing the backup: {e}")))?
    .map_err(|e| {
        Error::Storage(format!(
            "writing a backup to {}: {e}",
            schedule.dir.display()
        ))
    })
}

/// The name of a backup of `member` at `revision` taken now: names sort by time.
pub fn backup_file_name(member: &str, revision: u64) -> String {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("{PREFIX}{unix:010}-{member}-r{revision}{SUFFIX}")
}

/// The temporary name a backup is written under before it is renamed to `name`.
pub fn backup_part_name(name: &str) -> String {
    format!("{name}{PART}")
}

/// Deletes all but the newest `keep` backups in `dir` (files named by
/// [`backup_file_name`]), and leftover temporary files of interrupted ones.
pub fn prune_backups(dir: &Path, keep: usize) -> std::io::Result<()> {
    let mut backups = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.starts_with(PREFIX) {
            continue;
        }
        if name.ends_with(PART) {
            std::fs::remove_file(&path)?;
        } else if name.ends_with(SUFFIX) {
            backups.push(path);
        }
    }
    backups.sort();
    let old = backups.len().saturating_sub(keep);
    for path in &backups[..old] {
        std::fs::remove_file(path)?;
        tracing::info!(path = %path.display(), "old backup deleted");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prune_keeps_the_newest_and_removes_leftovers_only_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "ordkv-backup-0000000001-kv-0-r5.snap",
            "ordkv-backup-0000000003-kv-1-r9.snap",
            "ordkv-backup-0000000002-kv-0-r7.snap",
            "ordkv-backup-0000000004-kv-0-r9.snap.part",
            "someone-elses.snap",
        ];
        for n in names {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        prune_backups(dir.path(), 2).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "ordkv-backup-0000000002-kv-0-r7.snap",
                "ordkv-backup-0000000003-kv-1-r9.snap",
                "someone-elses.snap",
            ]
        );
    }
}
