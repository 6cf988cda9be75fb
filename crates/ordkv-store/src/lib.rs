//! ordkv storage: the Raft log and the revisioned key-value state machine, both in one sled
//! database, behind openraft's storage traits. This is the only crate that names sled.
//!
//! Durability: a log append is acknowledged to openraft only after sled's flush and an
//! `fdatasync` of its data file (see [`durability`](crate::durability) for group commit).
//! The state machine is never flushed on its own: it is rebuilt from the log after a crash.

mod apply;
mod codec;
mod durability;
mod log_store;
mod snapshot;
mod state_machine;
mod types;

use std::io;
use std::path::Path;

pub use log_store::LogStore;
pub use ordkv_proto::v1 as pb;
pub use snapshot::SnapshotData;
pub use state_machine::{EventBatch, ReadError, StateMachine};
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
}

/// Opens (or creates) the store in `dir`: `dir/sled` for the database and `dir/snapshots`.
pub fn open(dir: &Path, opts: &StoreOptions) -> io::Result<(LogStore, StateMachine)> {
    let sled_dir = dir.join("sled");
    let db = sled::Config::new()
        .path(&sled_dir)
        .cache_capacity(opts.cache_capacity_bytes)
        // Large segments keep values of up to a few MiB inline in the data file that the
        // flusher fsyncs (sled writes bigger items to separate blob files).
        .segment_size(8 * 1024 * 1024)
        .open()
        .map_err(|e| io::Error::other(format!("opening sled in {}: {e}", sled_dir.display())))?;
    let durability = durability::Durability::start(db.clone(), &sled_dir)?;
    let log = LogStore::new(&db, durability.clone())?;
    let sm = StateMachine::open(
        &db,
        dir.join("snapshots"),
        durability,
        opts.history_revisions,
        opts.max_range_limit,
    )?;
    Ok((log, sm))
}

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod tests;
