//! The Raft log as append-only segment files (`<data-dir>/wal/{first-index:020}.wal`).
//!
//! Why not in sled: an acknowledged write must be on disk, and making sled durable costs a
//! `flush` that writes and `sync_file_range`s several of sled's buffers per write (measured:
//! about five per put) before the `fdatasync`. A segment file costs one `write` per batch of
//! entries and one `fdatasync` per group commit, as etcd's WAL does beside its B-tree. The
//! state machine stays in sled and is never synced on the write path: after a crash it is
//! re-applied from this log.
//!
//! Record: `u32 length, u32 crc32(payload), payload` where the payload is a postcard
//! [`Entry`]. At open every record is checked; an incomplete or failing record at the very
//! end of the last segment is a torn write that was never acknowledged and is cut off; any
//! other failure is corruption and the store refuses to open.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::codec::corrupt;
use crate::types::{Entry, LogId};

/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
const HEADER: usize = 8;
/// No single record is larger (a log entry holds at most one request of bounded size).
const MAX_RECORD: usize = 512 * 1024 * 1024;

struct Segment {
    first_index: u64,
    path: PathBuf,
    file: Arc<File>,
    len: u64,
}

/// Where one entry lives.
#[derive(Clone, Copy)]
struct Loc {
    log_id: LogId,
    segment: usize,
    offset: u64,
    len: u32,
}

struct Inner {
    dir: PathBuf,
    segments: Vec<Segment>,
    /// Entries in index order, contiguous: `locs[i]` has index `locs[0].log_id.index + i`.
    locs: VecDeque<Loc>,
}

/// The log files. Cloning shares them.
#[derive(Clone)]
pub(crate) struct Wal {
    inner: Arc<Mutex<Inner>>,
}

fn segment_name(first_index: u64) -> String {
    format!("{first_index:020}.wal")
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn encode(entry: &Entry, out: &mut Vec<u8>) -> io::Result<u32> {
    let payload = postcard::to_stdvec(entry).map_err(io::Error::other)?;
    let len = u32::try_from(payload.len()).map_err(|_| io::Error::other("log entry too large"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(len)
}

fn decode(what: &str, record: &[u8]) -> io::Result<Entry> {
    let crc = u32::from_le_bytes([record[4], record[5], record[6], record[7]]);
    let payload = &record[HEADER..];
    if crc32fast::hash(payload) != crc {
        return Err(corrupt(format!("{what} fails its checksum")));
    }
    postcard::from_bytes(payload).map_err(|e| corrupt(format!("{what}: {e}")))
}

impl Wal {
    /// Opens (or creates) the log in `dir`, checking every record.
    pub(crate) fn open(dir: &Path) -> io::Result<Wal> {
        fs::create_dir_all(dir)?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for e in fs::read_dir(dir)? {
            let path = e?.path();
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if path.extension().is_some_and(|x| x == "wal") {
                let first = stem
                    .parse()
                    .map_err(|_| corrupt(format!("unexpected log file {}", path.display())))?;
                names.push((first, path));
            }
        }
        names.sort();
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            segments: Vec::new(),
            locs: VecDeque::new(),
        };
        let count = names.len();
        for (n, (first_index, path)) in names.into_iter().enumerate() {
            let last_segment = n + 1 == count;
            let mut bytes = Vec::new();
            File::open(&path)?.read_to_end(&mut bytes)?;
            let mut offset = 0usize;
            let segment = inner.segments.len();
            while offset < bytes.len() {
                let rest = bytes.len() - offset;
                let len = if rest >= HEADER {
                    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
                        as usize
                } else {
                    usize::MAX
                };
                let whole = len != usize::MAX && len <= MAX_RECORD && HEADER + len <= rest;
                let entry = if whole {
                    decode("log record", &bytes[offset..offset + HEADER + len])
                } else {
                    Err(corrupt("log record is incomplete"))
                };
                let at_end = !whole || offset + HEADER + len == bytes.len();
                match entry {
                    Ok(entry) => {
                        if let Some(prev) = inner.locs.back()
                            && entry.log_id.index > prev.log_id.index + 1
                        {
                            return Err(corrupt(format!(
                                "{}: a hole between log index {} and {}",
                                path.display(),
                                prev.log_id.index,
                                entry.log_id.index
                            )));
                        }
                        if let Some(prev) = inner.locs.back()
                            && entry.log_id.index <= prev.log_id.index
                        {
                            // A later record rewrote an index (after a truncation that was not
                            // yet durable): the later write wins.
                            while inner
                                .locs
                                .back()
                                .is_some_and(|l| l.log_id.index >= entry.log_id.index)
                            {
                                inner.locs.pop_back();
                            }
                        }
                        inner.locs.push_back(Loc {
                            log_id: entry.log_id,
                            segment,
                            offset: offset as u64,
                            len: len as u32,
                        });
                        offset += HEADER + len;
                    }
                    Err(_) if last_segment && at_end => {
                        tracing::warn!(path = %path.display(), offset, "cutting off a torn write at the end of the log");
                        let f = OpenOptions::new().write(true).open(&path)?;
                        f.set_len(offset as u64)?;
                        f.sync_all()?;
                        bytes.truncate(offset);
                        break;
                    }
                    Err(e) => {
                        return Err(corrupt(format!(
                            "{} at offset {offset}: {e}",
                            path.display()
                        )));
                    }
                }
            }
            let file = OpenOptions::new().read(true).append(true).open(&path)?;
            inner.segments.push(Segment {
                first_index,
                path,
                file: Arc::new(file),
                len: bytes.len() as u64,
            });
        }
        Ok(Wal {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last entry's log id.
    pub(crate) fn last(&self) -> Option<LogId> {
        self.lock().locs.back().map(|l| l.log_id)
    }

    /// Entries with index in `[from, to)` that are present.
    pub(crate) fn read(&self, from: u64, to: u64) -> io::Result<Vec<Entry>> {
        let (first, wanted): (u64, Vec<(Arc<File>, Loc)>) = {
            let inner = self.lock();
            let Some(first) = inner.locs.front().map(|l| l.log_id.index) else {
                return Ok(vec![]);
            };
            let start = from.max(first);
            let end = to.min(first + inner.locs.len() as u64);
            let wanted = (start..end)
                .map(|i| {
                    let loc = inner.locs[(i - first) as usize];
                    (inner.segments[loc.segment].file.clone(), loc)
                })
                .collect();
            (first, wanted)
        };
        let _ = first;
        let mut out = Vec::with_capacity(wanted.len());
        for (file, loc) in wanted {
            let mut buf = vec![0u8; HEADER + loc.len as usize];
            file.read_exact_at(&mut buf, loc.offset)?;
            let entry = decode("log record", &buf)?;
            if entry.log_id != loc.log_id {
                return Err(corrupt(format!(
                    "log record at index {} holds {}",
                    loc.log_id.index, entry.log_id
                )));
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// Appends entries (one write); they are durable after [`Wal::sync`].
    pub(crate) fn append(&self, entries: impl IntoIterator<Item = Entry>) -> io::Result<()> {
        let mut inner = self.lock();
        if inner.segments.last().is_none_or(|s| s.len >= SEGMENT_BYTES) {
            let mut entries = entries.into_iter().peekable();
            let Some(first) = entries.peek().map(|e| e.log_id.index) else {
                return Ok(());
            };
            inner.rotate(first)?;
            return inner.write(entries);
        }
        inner.write(entries.into_iter().peekable())
    }

    /// Makes every append so far durable.
    pub(crate) fn sync(&self) -> io::Result<()> {
        let file = self.lock().segments.last().map(|s| s.file.clone());
        match file {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }

    /// Removes every entry after `index` (keeps `index`).
    pub(crate) fn truncate_after(&self, index: Option<u64>) -> io::Result<()> {
        let mut inner = self.lock();
        let keep = match (index, inner.locs.front().map(|l| l.log_id.index)) {
            (_, None) => return Ok(()),
            (None, Some(_)) => 0,
            (Some(i), Some(first)) if i < first => 0,
            (Some(i), Some(first)) => ((i - first + 1) as usize).min(inner.locs.len()),
        };
        let Some(cut) = inner.locs.get(keep).copied() else {
            return Ok(());
        };
        inner.locs.truncate(keep);
        // Drop whole segments after the cut, then shorten the one that holds it.
        while inner.segments.len() > cut.segment + 1 {
            let s = inner.segments.pop().expect("non-empty");
            fs::remove_file(&s.path)?;
        }
        let seg = &mut inner.segments[cut.segment];
        seg.file.set_len(cut.offset)?;
        seg.len = cut.offset;
        Ok(())
    }

    /// Forgets entries up to `index` and deletes segments that hold nothing newer. The
    /// caller has made the purge point durable first.
    pub(crate) fn purge(&self, index: u64) -> io::Result<()> {
        let mut inner = self.lock();
        while inner.locs.front().is_some_and(|l| l.log_id.index <= index) {
            inner.locs.pop_front();
        }
        // A segment can go when the next one starts at or before the first kept entry.
        let first_kept = inner
            .locs
            .front()
            .map(|l| l.log_id.index)
            .unwrap_or(index + 1);
        let mut dropped = 0;
        while inner.segments.len() > 1 && inner.segments[1].first_index <= first_kept {
            let s = inner.segments.remove(0);
            fs::remove_file(&s.path)?;
            dropped += 1;
        }
        if dropped > 0 {
            for l in inner.locs.iter_mut() {
                l.segment -= dropped;
            }
            sync_dir(&inner.dir)?;
        }
        Ok(())
    }
}

impl Inner {
    fn rotate(&mut self, first_index: u64) -> io::Result<()> {
        if let Some(last) = self.segments.last() {
            // Appends acknowledged later must not depend on a file we stop syncing.
            last.file.sync_data()?;
        }
        let path = self.dir.join(segment_name(first_index));
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)?;
        file.set_len(0)?;
        sync_dir(&self.dir)?;
        self.segments.push(Segment {
            first_index,
            path,
            file: Arc::new(file),
            len: 0,
        });
        Ok(())
    }

    fn write(
        &mut self,
        entries: std::iter::Peekable<impl Iterator<Item = Entry>>,
    ) -> io::Result<()> {
        let segment = self.segments.len() - 1;
        let base = self.segments[segment].len;
        let mut buf = Vec::new();
        let mut new = Vec::new();
        for entry in entries {
            if let Some(prev) = new
                .last()
                .or(self.locs.back())
                .map(|l: &Loc| l.log_id.index)
                && entry.log_id.index != prev + 1
            {
                return Err(io::Error::other(format!(
                    "log append at index {} after {prev} would leave a hole",
                    entry.log_id.index
                )));
            }
            let offset = base + buf.len() as u64;
            let len = encode(&entry, &mut buf)?;
            new.push(Loc {
                log_id: entry.log_id,
                segment,
                offset,
                len,
            });
        }
        let seg = &mut self.segments[segment];
        (&*seg.file).write_all(&buf)?;
        seg.len += buf.len() as u64;
        self.locs.extend(new);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::EntryPayload;

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: openraft::testing::log_id::<crate::TypeConfig>(1, 1, index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(wal: &Wal) -> Vec<u64> {
        wal.read(0, u64::MAX)
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect()
    }

    fn only_segment(dir: &Path) -> PathBuf {
        let mut files: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1);
        files.pop().unwrap()
    }

    #[test]
    fn appends_survive_reopen_and_reads_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path()).unwrap();
        wal.append((1..=5).map(entry)).unwrap();
        wal.sync().unwrap();
        assert_eq!(wal.read(2, 4).unwrap().len(), 2);
        drop(wal);
        let wal = Wal::open(dir.path()).unwrap();
        assert_eq!(indexes(&wal), vec![1, 2, 3, 4, 5]);
        assert_eq!(wal.last().map(|l| l.index), Some(5));
    }

    #[test]
    fn appends_that_leave_a_hole_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path()).unwrap();
        wal.append((1..=2).map(entry)).unwrap();
        assert!(wal.append([entry(4)]).is_err());
        assert_eq!(indexes(&wal), vec![1, 2]);
    }

    #[test]
    fn a_torn_tail_is_cut_off_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path()).unwrap();
        wal.append((1..=3).map(entry)).unwrap();
        drop(wal);
        let path = only_segment(dir.path());
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let wal = Wal::open(dir.path()).unwrap();
        assert_eq!(indexes(&wal), vec![1, 2]);
        // The log goes on after the cut.
        wal.append([entry(3)]).unwrap();
        drop(wal);
        assert_eq!(indexes(&Wal::open(dir.path()).unwrap()), vec![1, 2, 3]);
    }

    #[test]
    fn corruption_before_the_end_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path()).unwrap();
        wal.append((1..=3).map(entry)).unwrap();
        drop(wal);
        let path = only_segment(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER + 1] ^= 0xff; // inside the first record's payload
        fs::write(&path, &bytes).unwrap();
        let err = Wal::open(dir.path())
            .err()
            .expect("corruption refused")
            .to_string();
        assert!(err.contains("checksum"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), bytes, "nothing was changed");
    }

    #[test]
    fn truncate_and_purge_keep_the_log_contiguous_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path()).unwrap();
        wal.append((1..=3).map(entry)).unwrap();
        wal.lock().rotate(4).unwrap();
        wal.append((4..=6).map(entry)).unwrap();
        wal.lock().rotate(7).unwrap();
        wal.append((7..=9).map(entry)).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 3);

        wal.truncate_after(Some(5)).unwrap();
        assert_eq!(indexes(&wal), vec![1, 2, 3, 4, 5]);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            2,
            "the third segment went"
        );
        wal.append((6..=7).map(entry)).unwrap();

        wal.purge(4).unwrap();
        assert_eq!(indexes(&wal), vec![5, 6, 7]);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "the first segment went"
        );
        drop(wal);
        // Reopened, entries purged in memory but still in a kept segment come back; the
        // store ignores them below its durable purge point.
        assert_eq!(indexes(&Wal::open(dir.path()).unwrap()), vec![4, 5, 6, 7]);
    }
}
