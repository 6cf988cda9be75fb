//! The Raft log (segment files, see [`crate::wal`]) and the vote, purge point and commit
//! pointer (sled's `raft_meta` tree).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use crate::codec::{decode_meta, encode_meta};
use crate::durability::Durability;
use crate::types::{Entry, LogId, TypeConfig, Vote};
use crate::wal::Wal;

const VOTE: &[u8] = b"vote";
const LAST_PURGED: &[u8] = b"last_purged";
const COMMITTED: &[u8] = b"committed";

/// The log store. Cloning shares the same trees.
#[derive(Clone)]
pub struct LogStore {
    wal: Wal,
    meta: sled::Tree,
    /// Group commit of log appends (`fdatasync` of the active segment).
    wal_sync: Durability,
    /// Durable sled writes (vote, purge point).
    db_sync: Durability,
}

fn sled_err(e: sled::Error) -> io::Error {
    io::Error::other(format!("sled: {e}"))
}

impl LogStore {
    pub(crate) fn new(
        db: &sled::Db,
        wal: Wal,
        wal_sync: Durability,
        db_sync: Durability,
    ) -> io::Result<LogStore> {
        let store = LogStore {
            wal,
            meta: db.open_tree("raft_meta").map_err(sled_err)?,
            wal_sync,
            db_sync,
        };
        // Segments may still hold entries below the purge point; they are not the log.
        if let Some(purged) = store.get_meta::<LogId>(LAST_PURGED)? {
            store.wal.purge(purged.index)?;
        }
        Ok(store)
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.meta.get(key).map_err(sled_err)? {
            None => Ok(None),
            Some(v) => decode_meta(std::str::from_utf8(key).unwrap_or("raft meta"), &v).map(Some),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], v: &T) -> io::Result<()> {
        self.meta.insert(key, encode_meta(v)?).map_err(sled_err)?;
        Ok(())
    }

    /// Marks the log as purged up to `log_id` (a store restored from a snapshot starts its
    /// log there), durably.
    pub(crate) async fn set_purged(&self, log_id: LogId) -> io::Result<()> {
        self.put_meta(LAST_PURGED, &log_id)?;
        self.db_sync.flush().await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => x.saturating_add(1),
            Bound::Excluded(x) => *x,
            Bound::Unbounded => u64::MAX,
        };
        self.wal.read(start, end)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.get_meta(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId> = self.get_meta(LAST_PURGED)?;
        let last = self.wal.last();
        Ok(LogState {
            last_log_id: last.or(last_purged_log_id),
            last_purged_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        self.put_meta(VOTE, vote)?;
        self.db_sync.flush().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        // Not flushed on its own: it is a hint that reaches disk with the next log flush, and
        // an older value on disk only means re-applying a little less at start-up.
        self.put_meta(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(self.get_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.wal.append(entries)?;
        // Readable now; durable when the flusher calls back.
        self.wal_sync.flush_then(callback);
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        self.wal.truncate_after(last_log_id.map(|l| l.index))
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        // The purge point is durable before any file goes: entries at or before it are
        // ignored from then on, and a crash in between leaves no hole.
        self.put_meta(LAST_PURGED, &log_id)?;
        self.db_sync.flush().await?;
        self.wal.purge(log_id.index)
    }
}
