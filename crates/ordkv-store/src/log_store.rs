//! The Raft log, vote and commit pointer in sled (`raft_log` and `raft_meta` trees).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};

use crate::codec::{decode_entry, decode_meta, encode_entry, encode_meta, key_u64, u64_key};
use crate::durability::Durability;
use crate::types::{Entry, LogId, TypeConfig, Vote};

const VOTE: &[u8] = b"vote";
const LAST_PURGED: &[u8] = b"last_purged";
const COMMITTED: &[u8] = b"committed";

/// The log store. Cloning shares the same trees.
#[derive(Clone)]
pub struct LogStore {
    log: sled::Tree,
    meta: sled::Tree,
    durability: Durability,
}

fn sled_err(e: sled::Error) -> io::Error {
    io::Error::other(format!("sled: {e}"))
}

impl LogStore {
    pub(crate) fn new(db: &sled::Db, durability: Durability) -> io::Result<LogStore> {
        Ok(LogStore {
            log: db.open_tree("raft_log").map_err(sled_err)?,
            meta: db.open_tree("raft_meta").map_err(sled_err)?,
            durability,
        })
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

    /// The vote as stored, for status and for refusing to start on a corrupt store.
    pub fn stored_vote(&self) -> io::Result<Option<Vote>> {
        self.get_meta(VOTE)
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
        let mut out = Vec::new();
        for item in self.log.range(u64_key(start)..) {
            let (k, v) = item.map_err(sled_err)?;
            let index = key_u64(&k)?;
            if !range.contains(&index) {
                break;
            }
            let entry: Entry = decode_entry("raft log entry", &v)?;
            if entry.log_id.index != index {
                return Err(crate::codec::corrupt(format!(
                    "log entry at index {index} says it is {}",
                    entry.log_id.index
                )));
            }
            out.push(entry);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.get_meta(VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId> = self.get_meta(LAST_PURGED)?;
        let last = match self.log.last().map_err(sled_err)? {
            None => None,
            Some((_, v)) => Some(decode_entry::<Entry>("raft log entry", &v)?.log_id),
        };
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
        self.durability.flush().await
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
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(&u64_key(entry.log_id.index), encode_entry(&entry)?);
        }
        self.log.apply_batch(batch).map_err(sled_err)?;
        // Readable now; durable when the flusher calls back.
        self.durability.flush_then(callback);
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        // Newest first, so a crash in between never leaves a hole.
        let keys: Vec<_> = self
            .log
            .range(u64_key(from)..)
            .keys()
            .collect::<Result<_, _>>()
            .map_err(sled_err)?;
        for k in keys.into_iter().rev() {
            self.log.remove(k).map_err(sled_err)?;
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        // Record the purge point first: entries at or before it are ignored from then on, so
        // removing them needs no transaction.
        self.put_meta(LAST_PURGED, &log_id)?;
        let keys: Vec<_> = self
            .log
            .range(..=u64_key(log_id.index))
            .keys()
            .collect::<Result<_, _>>()
            .map_err(sled_err)?;
        let mut batch = sled::Batch::default();
        for k in keys {
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(sled_err)?;
        Ok(())
    }
}
