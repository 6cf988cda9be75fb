//! The Raft log (segment files, see [`crate::wal`]) and the vote, purge point and commit
//! pointer (sled's `raft_meta` tree).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use crate::codec::{decode_meta, encode_meta};
use crate::durability::Durability;
use crate::types::{Entry, LogId, TypeConfig, Vote};
use crate::wal::Wal;

const VOTE: &[u8] = b"vote";
const LAST_PURGED: &[u8] = b"last_purged";
const COMMITTED: &[u8] = b"committed";
/// The most log bytes one append to a follower carries (more when one entry is larger):
/// 64 entries of 1 MiB values made 64 MiB messages.
const MAX_APPEND_BYTES: usize = 4 * 1024 * 1024;

/// The log store. Cloning shares the same trees.
#[derive(Clone)]
pub struct LogStore {
    wal: Wal,
    meta: sled::Tree,
    /// Group commit of log appends (`fdatasync` of the active segment).
    wal_sync: Durability,
    /// Durable sled writes (vote, purge point).
    db_sync: Durability,
    purge: Arc<Mutex<PurgePoints>>,
}

/// openraft's purge point and the one before it (the same one after a restart, a restore
/// or a purge past the log's end). Segment files are purged only up to the earlier one: a
/// replication stream to a member just removed from the membership is no longer counted by
/// openraft's "log in use" check, and can still read from where that member was after a
/// purge (openraft debug-asserts its entries start at the index asked).
/// Reads for openraft's own use stop at its purge point, as its log contract says.
#[derive(Default)]
struct PurgePoints {
    /// Entries at or below are not the log any more.
    logical: Option<u64>,
    /// Entries at or below are gone from the segment files.
    physical: Option<u64>,
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
            purge: Arc::default(),
        };
        // Segments may still hold entries below the purge point; they are not the log.
        if let Some(purged) = store.get_meta::<LogId>(LAST_PURGED)? {
            store.wal.purge(purged.index)?;
            *store.purge.lock().expect("purge points") = PurgePoints {
                logical: Some(purged.index),
                physical: Some(purged.index),
            };
        }
        Ok(store)
    }

    /// The durable purge point's index, read before the log is opened (see [`Wal::open`]).
    pub(crate) fn purged_index(db: &sled::Db) -> io::Result<Option<u64>> {
        let meta = db.open_tree("raft_meta").map_err(sled_err)?;
        match meta.get(LAST_PURGED).map_err(sled_err)? {
            None => Ok(None),
            Some(v) => Ok(Some(decode_meta::<LogId>("last_purged", &v)?.index)),
        }
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

    /// The id of the entry at `index`, if the log holds it (not purged, not past the end).
    pub fn log_id_at(&self, index: u64) -> io::Result<Option<LogId>> {
        let purged = self.purge.lock().expect("purge points").logical;
        if purged.is_some_and(|p| index <= p) {
            return Ok(None);
        }
        Ok(self
            .wal
            .read(index, index.saturating_add(1))?
            .first()
            .map(|e| e.log_id))
    }

    /// Appends `entries` and waits until they are on disk (recovery, offline).
    pub(crate) async fn append_durably(&self, entries: Vec<Entry>) -> io::Result<()> {
        self.wal.append(entries)?;
        self.wal_sync.flush().await?;
        self.db_sync.flush().await
    }

    /// Marks the log as purged up to `log_id` (a store restored from a snapshot starts its
    /// log there), durably.
    pub(crate) async fn set_purged(&self, log_id: LogId) -> io::Result<()> {
        self.put_meta(LAST_PURGED, &log_id)?;
        self.db_sync.flush().await?;
        self.wal.purge(log_id.index)?;
        *self.purge.lock().expect("purge points") = PurgePoints {
            logical: Some(log_id.index),
            physical: Some(log_id.index),
        };
        Ok(())
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
        let first = self
            .purge
            .lock()
            .expect("purge points")
            .logical
            .map_or(0, |i| i + 1);
        self.wal.read(start.max(first), end)
    }

    /// The replication streams' read: at most [`MAX_APPEND_BYTES`] of entries, so an append
    /// of large values stays small enough to be sent and answered quickly; entries purged
    /// since the previous purge point are still served (see [`PurgePoints`]): they are
    /// committed entries, the same on every member. A stream further behind gets nothing
    /// (openraft sends a heartbeat instead) rather than entries after a gap.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        self.wal.read_limited(start, end, MAX_APPEND_BYTES)
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
            last_log_id: last.max(last_purged_log_id),
            last_purged_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        // A vote never goes back (the safety of elections rests on it).
        debug_assert!(
            self.get_meta::<Vote>(VOTE)?
                .is_none_or(|old| old.leader_id.term <= vote.leader_id.term),
            "vote {vote} is older than the one saved"
        );
        self.put_meta(VOTE, vote)?;
        self.db_sync.flush().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        // Not flushed on its own: it is a hint that reaches disk with sled's next flush (its
        // own every 500 ms, or a vote or purge point made durable), and an older value on disk
        // only means re-applying a little less at start-up.
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
        // A purge past the last entry (a snapshot installed over the log) empties the log
        // at once: the next append must follow the purge point.
        let past_the_end = self
            .wal
            .last()
            .is_none_or(|last| last.index <= log_id.index);
        let physical = {
            let mut points = self.purge.lock().expect("purge points");
            let previous = points.logical.replace(log_id.index);
            debug_assert!(
                previous.is_none_or(|p| p <= log_id.index),
                "purge to {} after a purge to {previous:?}",
                log_id.index
            );
            points.physical = if past_the_end {
                Some(log_id.index)
            } else {
                previous.or(points.physical)
            };
            points.physical
        };
        match physical {
            Some(index) => self.wal.purge(index),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;
    use openraft::storage::{IOFlushed, RaftLogStorage};
    use openraft::testing::log_id;
    use tempfile::TempDir;

    use super::*;
    use crate::conformance::test_options;

    fn first_index(entries: &[Entry]) -> Option<u64> {
        entries.first().map(|e| e.log_id.index)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stream_behind_the_latest_purge_still_reads_from_where_it_was() {
        let dir = TempDir::new().unwrap();
        let (mut log, _sm) = crate::open(dir.path(), &test_options()).unwrap();
        let entries = (1..=30).map(|i| Entry {
            log_id: log_id::<TypeConfig>(1, 1, i),
            payload: EntryPayload::Blank,
        });
        log.append(entries, IOFlushed::noop()).await.unwrap();
        log.purge(log_id::<TypeConfig>(1, 1, 10)).await.unwrap();
        log.purge(log_id::<TypeConfig>(1, 1, 20)).await.unwrap();

        // openraft's reads stop at its purge point; a replication stream that was at 15
        // before the second purge gets 16.. exactly, not entries after a gap.
        assert_eq!(
            first_index(&log.try_get_log_entries(0..100).await.unwrap()),
            Some(21)
        );
        assert_eq!(
            first_index(&log.limited_get_log_entries(16, 31).await.unwrap()),
            Some(16)
        );
        assert_eq!(
            first_index(&log.limited_get_log_entries(11, 31).await.unwrap()),
            Some(11)
        );
        // Further behind, nothing rather than entries after a gap.
        assert_eq!(
            first_index(&log.limited_get_log_entries(5, 31).await.unwrap()),
            None
        );
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(20));

        // Reopened, the durable purge point is where the log starts for everyone.
        drop((log, _sm));
        // sled's file lock goes with the fsync threads, shortly after the handles.
        let mut tries = 0;
        let (mut log, _sm) = loop {
            match crate::open(dir.path(), &test_options()) {
                Ok(handles) => break handles,
                Err(e) if tries == 500 => panic!("reopening the store: {e}"),
                Err(_) => tries += 1,
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert_eq!(
            first_index(&log.limited_get_log_entries(11, 31).await.unwrap()),
            None
        );
        assert_eq!(
            first_index(&log.limited_get_log_entries(21, 31).await.unwrap()),
            Some(21)
        );
    }
}
