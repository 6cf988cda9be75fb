//! ordkv storage: the Raft log (segment files under `wal/`, its vote and purge point in sled)
//! and the revisioned key-value state machine (sled), behind openraft's storage traits. This
//! is the only crate that names sled.
//!
//! Durability: a log append is acknowledged to openraft only after an `fdatasync` of its
//! segment file (see `wal` for the log and `durability` for group commit). The state machine
//! is never synced on the write path: it is re-applied from the log after a crash.

mod apply;
mod codec;
pub mod crash;
mod durability;
mod log_store;
mod recover;
mod snapshot;
mod state_machine;
mod types;
mod wal;

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use durability::Durability;

pub use durability::{SYNC_DURATION, SYNC_WAITERS};

pub use apply::LeaseChange;
pub use log_store::LogStore;
pub use ordkv_proto::v1 as pb;
pub use recover::{Recovered, latest_membership, make_sole_voter};
pub use snapshot::SnapshotData;
pub use state_machine::{EventBatch, LeaseChanges, LeaseSubscription, ReadError, StateMachine};
pub use types::{
    Applied, Command, Entry, LogId, MemberNode, NodeId, SnapshotMeta, StoredMembership, TypeConfig,
    Vote,
};

/// Storage tuning, validated by the caller.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled page cache.
    pub cache_capacity_bytes: u64,
    /// Revisions of watch history kept before automatic compaction.
    pub history_revisions: u64,
    /// Most keys one range returns (also inside a Txn).
    pub max_range_limit: usize,
    /// Size of a Raft log segment, preallocated (two are on disk: the active one and the
    /// next); [`DEFAULT_WAL_SEGMENT_BYTES`] unless a small store wants less.
    pub wal_segment_bytes: u64,
}

pub use wal::DEFAULT_SEGMENT_BYTES as DEFAULT_WAL_SEGMENT_BYTES;

/// Opens (or creates) the store in `dir`: `dir/wal` for the Raft log, `dir/sled` for the
/// vote and the state machine, and `dir/snapshots`.
pub fn open(dir: &Path, opts: &StoreOptions) -> io::Result<(LogStore, StateMachine)> {
    let sled_dir = dir.join("sled");
    let db = sled::Config::new()
        .path(&sled_dir)
        .cache_capacity(opts.cache_capacity_bytes)
        // Large segments keep values of up to a few MiB inline in the data file that the
        // flusher fsyncs (sled writes bigger items to separate blob files).
        .segment_size(8 * 1024 * 1024)
        // LowSpace (the default) rewrites pages more eagerly; under a steady stream of puts
        // that showed up as sled dominating the apply path's CPU.
        .mode(sled::Mode::HighThroughput)
        .open()
        .map_err(|e| io::Error::other(format!("opening sled in {}: {e}", sled_dir.display())))?;
    let failed = Arc::new(AtomicBool::new(false));
    let db_file = File::open(sled_dir.join("db"))?;
    let flushed = db.clone();
    // sled's own flush ends in `sync_file_range` (survives a killed process, not a power
    // loss); the `fdatasync` after it makes it durable.
    let db_sync = Durability::start("ordkv-db-sync", "db", failed.clone(), move || {
        flushed.flush().map_err(|e| format!("sled flush: {e}"))?;
        db_file
            .sync_data()
            .map_err(|e| format!("fdatasync of sled: {e}"))
    })?;
    let wal = wal::Wal::open_with(
        &dir.join("wal"),
        LogStore::purged_index(&db)?,
        opts.wal_segment_bytes,
    )?;
    let synced = wal.clone();
    let wal_sync = Durability::start("ordkv-wal-sync", "wal", failed, move || {
        crash::point("wal.before_sync");
        synced
            .sync()
            .map_err(|e| format!("fdatasync of the raft log: {e}"))?;
        crash::point("wal.after_sync");
        Ok(())
    })?;
    let log = LogStore::new(&db, wal, wal_sync, db_sync.clone())?;
    let sm = StateMachine::open(
        &db,
        dir.join("snapshots"),
        db_sync,
        opts.history_revisions,
        opts.max_range_limit,
    )?;
    Ok((log, sm))
}

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod tests;

/// What a snapshot file holds, from its header (after checking the whole file).
#[derive(Debug, Clone)]
pub struct SnapshotSummary {
    /// The last log entry it covers.
    pub last_log_id: Option<LogId>,
    /// The store revision it holds.
    pub revision: u64,
    /// How many leases it holds.
    pub leases: usize,
    /// How many keys it holds.
    pub keys: u64,
    /// Its size.
    pub bytes: u64,
}

/// Checks a snapshot file end to end (format, framing and checksum) and describes it.
pub fn verify_snapshot(path: &Path) -> io::Result<SnapshotSummary> {
    verify_snapshot_with(path, &mut |_, _| {})
}

/// [`verify_snapshot`], calling `progress(bytes read, keys read)` as it goes.
pub fn verify_snapshot_with(
    path: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> io::Result<SnapshotSummary> {
    let checked = snapshot::verify_with(path, progress)?;
    Ok(SnapshotSummary {
        last_log_id: checked.header.meta.last_log_id,
        revision: checked.header.revision,
        leases: checked.header.leases.len(),
        keys: checked.keys,
        bytes: checked.bytes,
    })
}

/// Seeds an empty store in `dir` from a snapshot file (backup restore): the keys and the
/// revision of the snapshot, a Raft log that starts after it, and a membership of this one
/// member as the only voter. Started, the member leads a new cluster of one; others join it.
pub async fn restore(
    dir: &Path,
    opts: &StoreOptions,
    snapshot_file: &Path,
    node_id: NodeId,
    member: MemberNode,
) -> io::Result<SnapshotSummary> {
    use openraft::storage::{RaftLogStorage, RaftStateMachine};
    let summary = verify_snapshot(snapshot_file)?;
    let last = summary
        .last_log_id
        .ok_or_else(|| io::Error::other("the snapshot covers no log entry"))?;
    let (mut log, mut sm) = open(dir, opts)?;
    let incoming = dir.join("snapshots").join("restore.incoming");
    std::fs::copy(snapshot_file, &incoming)?;
    let header = snapshot::verify(&incoming)?;
    sm.install_snapshot(&header.meta, SnapshotData { path: incoming })
        .await?;
    let membership = openraft::Membership::new(
        vec![std::collections::BTreeSet::from([node_id])],
        std::collections::BTreeMap::from([(node_id, member)]),
    )
    .map_err(io::Error::other)?;
    sm.replace_state(|sh, current| {
        let mut st = current.clone();
        st.membership = StoredMembership::new(Some(last), membership);
        for (k, v) in StateMachine::state_rows(&st)? {
            sh.meta.insert(k, v).map_err(state_machine::sled_err)?;
        }
        Ok(st)
    })?;
    // The current snapshot must carry the new membership too: followers get it from there.
    let sm2 = sm.clone();
    tokio::task::spawn_blocking(move || snapshot::build(&sm2))
        .await
        .map_err(io::Error::other)??;
    log.set_purged(last).await?;
    // The snapshot's entries were led by a member of another cluster; a leader's vote must
    // be above their leader id, which a term of this member's own cannot be while it is
    // equal: start from the snapshot's term, so the first election goes past it.
    log.save_vote(&Vote::new(last.leader_id.term, node_id))
        .await?;
    sm.flush().await?;
    Ok(summary)
}
