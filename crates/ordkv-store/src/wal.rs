//! The Raft log as segment files (`<data-dir>/wal/{first-index:020}.wal`).
//!
//! Why not in sled: an acknowledged write must be on disk, and making sled durable costs a
//! `flush` that writes and `sync_file_range`s several of sled's buffers per write (measured:
//! about five per put) before the `fdatasync`. A segment file costs one `write` per batch of
//! entries and one `fdatasync` per group commit, as etcd's WAL does beside its B-tree. The
//! state machine stays in sled and is never synced on the write path: after a crash it is
//! re-applied from this log.
//!
//! Segments are preallocated: a new segment is a spare file already filled with zeros and
//! synced, renamed into place. Appends then overwrite written blocks instead of growing the
//! file, so their `fdatasync` has no size or extent change to journal (measured on ext4: about
//! 110 µs instead of 170 µs). `fallocate` would not do: on ext4 it leaves unwritten extents,
//! and the first write into each block still changes them. The spare for the next segment is
//! filled by a background thread, with direct I/O, once the active segment is half full (or
//! at open, when there is none). A rotation never waits for it: without a ready spare the new
//! segment starts empty and grows (slower syncs until the next rotation).
//!
//! Segment: a 16-byte header (`ORDKVWAL`, the segment format as a `u32`, the crc32 of those 12
//! bytes; all little-endian), then records. A header of another segment format is refused,
//! naming both. Segments written by data format 1 have no header: their records start at
//! offset 0 and hold postcard of openraft's `Entry`. They are still read, never appended to
//! (the next append starts a segment of this format).
//!
//! Record: `u32 length, u32 crc32(payload), payload` where the payload is an [`Entry`] as
//! ordkv's own `LogEntry` message, never empty, so a length of 0 is not a record: the records
//! of a segment end where only zeros follow (or at the end of the file). At open every record
//! is checked; a failing record in the last segment with only zeros after it is a torn write
//! that was never acknowledged and is cut off; any other failure is corruption and the store
//! refuses to open.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::codec::corrupt;
use crate::types::{Entry, LogId};

/// A segment is closed and a new one started past this size (also its preallocated size),
/// unless the store is opened with another (`StoreOptions::wal_segment_bytes`).
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
#[cfg(test)]
const SEGMENT_BYTES: u64 = DEFAULT_SEGMENT_BYTES;
/// The spare is zero-filled and synced in steps of this size: one sync of 64 MiB of zeros
/// stalls the appends' syncs of the active segment for tens of milliseconds.
const STEP: u64 = 4 * 1024 * 1024;
const RECORD_HEADER: usize = 8;
const SEGMENT_MAGIC: &[u8; 8] = b"ORDKVWAL";
/// The segment format this version writes (in each segment's header) and reads, besides the
/// headerless segments of data format 1.
pub const SEGMENT_FORMAT: u32 = 1;
/// Read as a record length, its first 4 bytes exceed [`MAX_RECORD`]: a build that knows no
/// header refuses such a segment rather than misreading it.
const SEGMENT_HEADER: usize = 16;
/// No single record is larger (a log entry holds at most one request of bounded size).
const MAX_RECORD: usize = 512 * 1024 * 1024;
/// The next segment while it is being zero-filled; renamed to its segment name when used. Not
/// a `.wal` file, so a crash while filling it leaves nothing that reads as log.
const SPARE: &str = "spare.tmp";

struct Segment {
    first_index: u64,
    records: Records,
    path: PathBuf,
    file: Arc<File>,
    /// Where its records end; the file goes on with preallocated zeros.
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
    /// The background fill of [`SPARE`], once started; `Ok` when it is complete and synced.
    spare: Option<JoinHandle<io::Result<()>>>,
    /// Size of a segment (preallocated, and where the next one starts).
    segment_bytes: u64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A fill outliving the log could still be writing zeros into the spare after the
        // directory is opened again and the spare renamed into a segment.
        if let Some(fill) = self.spare.take() {
            let _ = fill.join();
        }
    }
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

fn all_zero(bytes: &[u8]) -> bool {
    const ZEROS: [u8; 4096] = [0; 4096];
    bytes.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; 1024 * 1024];
    let mut at = from;
    while at < to {
        let n = (to - at).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

/// Writes the spare from scratch (a leftover may be half filled): zeros, then synced, so
/// that appends into it overwrite blocks that are allocated and written.
fn fill_spare(path: &Path, size: u64) -> io::Result<()> {
    match fill_spare_direct(path, size) {
        Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
            // This file system takes no direct I/O: zeros through the page cache.
            tracing::debug!(error = %e, "direct I/O refused; zero-filling through the page cache");
            fill_spare_buffered(path, size)
        }
        r => r,
    }
}

/// Zeros written with direct I/O, straight from one buffer to the disk: through the page
/// cache the kernel copies every zero page, which cost about 6% of all CPU at 256 writers
/// (perf, `put x256`). The kernel is then asked to read the zeros back into the page cache
/// (by DMA, no copy), so that an append does not wait for a read of the block it lands in.
fn fill_spare_direct(path: &Path, size: u64) -> io::Result<()> {
    use nix::fcntl::{OFlag, PosixFadviseAdvice, posix_fadvise};
    use std::os::unix::fs::OpenOptionsExt;
    const ALIGN: usize = 4096;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(OFlag::O_DIRECT.bits())
        .open(path)?;
    // Direct I/O needs a block-aligned buffer: the aligned part of a larger one.
    let buf = vec![0u8; STEP as usize + ALIGN];
    let skip = buf.as_ptr().align_offset(ALIGN);
    let zeros = &buf[skip..skip + STEP as usize];
    let mut at = 0;
    while at < size {
        file.write_all_at(&zeros[..STEP.min(size - at) as usize], at)?;
        file.sync_data()?;
        posix_fadvise(
            &file,
            at as i64,
            STEP as i64,
            PosixFadviseAdvice::POSIX_FADV_WILLNEED,
        )
        .map_err(io::Error::from)?;
        at += STEP;
    }
    file.sync_all()
}

fn fill_spare_buffered(path: &Path, size: u64) -> io::Result<()> {
    let file = File::create(path)?;
    let mut at = 0;
    while at < size {
        let to = (at + STEP).min(size);
        write_zeros(&file, at, to)?;
        file.sync_data()?;
        at = to;
    }
    file.sync_all()
}

pub(crate) fn segment_header() -> [u8; SEGMENT_HEADER] {
    header_of(SEGMENT_FORMAT)
}

fn header_of(format: u32) -> [u8; SEGMENT_HEADER] {
    let mut h = [0u8; SEGMENT_HEADER];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&format.to_le_bytes());
    let crc = crc32fast::hash(&h[..12]);
    h[12..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Where a segment's records start: after its header, or at 0 in a segment of data format 1,
/// which has none. Refuses a damaged header or one of another segment format.
fn records_start(path: &Path, bytes: &[u8]) -> io::Result<(usize, Records)> {
    if !bytes.starts_with(SEGMENT_MAGIC) {
        return Ok((0, Records::Postcard));
    }
    let header = bytes
        .get(..SEGMENT_HEADER)
        .ok_or_else(|| corrupt(format!("{}: incomplete segment header", path.display())))?;
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    if crc32fast::hash(&header[..12]) != word(12) {
        return Err(corrupt(format!(
            "{}: the segment header fails its checksum",
            path.display()
        )));
    }
    match word(8) {
        SEGMENT_FORMAT => Ok((SEGMENT_HEADER, Records::Owned)),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is in WAL segment format {other}; this ordkv ({}) reads segment format \
                 {SEGMENT_FORMAT}: run the ordkv that wrote it (or a newer one)",
                path.display(),
                env!("CARGO_PKG_VERSION")
            ),
        )),
    }
}

/// How the records of a segment encode their entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Records {
    /// Postcard of openraft's `Entry`: the headerless segments of data format 1.
    Postcard,
    /// ordkv's `LogEntry` message: segment format 1.
    Owned,
}

pub(crate) fn encode(entry: &Entry, out: &mut Vec<u8>) -> io::Result<u32> {
    let payload = crate::codec::encode_entry(entry);
    let len = u32::try_from(payload.len()).map_err(|_| io::Error::other("log entry too large"))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(len)
}

pub(crate) fn decode(what: &str, record: &[u8], records: Records) -> io::Result<Entry> {
    let crc = u32::from_le_bytes([record[4], record[5], record[6], record[7]]);
    let payload = &record[RECORD_HEADER..];
    if crc32fast::hash(payload) != crc {
        return Err(corrupt(format!("{what} fails its checksum")));
    }
    match records {
        Records::Owned => crate::codec::decode_entry(what, payload),
        Records::Postcard => {
            postcard::from_bytes(payload).map_err(|e| corrupt(format!("{what}: {e}")))
        }
    }
}

/// What a segment holds at an offset.
enum Scan {
    /// A valid record and its length with the header.
    Record(Entry, usize),
    /// Only zeros from here on: the records ended.
    End,
    /// A record that fails, and the offset where it claims to end.
    Bad(io::Error, usize),
}

fn scan(bytes: &[u8], offset: usize, records: Records) -> Scan {
    let rest = &bytes[offset..];
    // A record's length is never 0, so only a zero length can start the zeros.
    if rest.get(..4).is_none_or(|l| l == [0; 4]) && all_zero(rest) {
        return Scan::End;
    }
    let len = match rest.get(..4) {
        Some(l) => u32::from_le_bytes(l.try_into().expect("4 bytes")) as usize,
        None => usize::MAX,
    };
    if len > MAX_RECORD || RECORD_HEADER + len > rest.len() {
        return Scan::Bad(corrupt("log record is incomplete"), bytes.len());
    }
    let end = offset + RECORD_HEADER + len;
    match decode("log record", &bytes[offset..end], records) {
        Ok(entry) => Scan::Record(entry, RECORD_HEADER + len),
        Err(e) => Scan::Bad(e, end),
    }
}

impl Wal {
    /// [`Wal::open_with`] with the default segment size.
    #[cfg(test)]
    pub(crate) fn open(dir: &Path, purged: Option<u64>) -> io::Result<Wal> {
        Wal::open_with(dir, purged, DEFAULT_SEGMENT_BYTES)
    }

    /// Opens (or creates) the log in `dir`, checking every record; new segments take
    /// `segment_bytes` (a multiple of 4 KiB; segments written with another size are read as
    /// they are). `purged` is the durable purge point: a gap that ends at or below the entry
    /// after it only separates entries that are no longer the log (an earlier version kept
    /// appending into the segment of a log purged past its end), so the entries before it
    /// are dropped instead of the store refusing to open.
    pub(crate) fn open_with(
        dir: &Path,
        purged: Option<u64>,
        segment_bytes: u64,
    ) -> io::Result<Wal> {
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
        // A spare left by the last run may be half filled; the next one is filled afresh.
        match fs::remove_file(dir.join(SPARE)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            segments: Vec::new(),
            locs: VecDeque::new(),
            spare: None,
            segment_bytes,
        };
        let count = names.len();
        for (n, (first_index, path)) in names.into_iter().enumerate() {
            let last_segment = n + 1 == count;
            let mut bytes = Vec::new();
            File::open(&path)?.read_to_end(&mut bytes)?;
            let (mut offset, mut records) = records_start(&path, &bytes)?;
            let segment = inner.segments.len();
            while offset < bytes.len() {
                match scan(&bytes, offset, records) {
                    Scan::Record(entry, len) => {
                        if let Some(prev) = inner.locs.back()
                            && entry.log_id.index > prev.log_id.index + 1
                        {
                            if purged.is_some_and(|p| entry.log_id.index <= p + 1) {
                                inner.locs.clear();
                            } else {
                                return Err(corrupt(format!(
                                    "{}: a hole between log index {} and {}",
                                    path.display(),
                                    prev.log_id.index,
                                    entry.log_id.index
                                )));
                            }
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
                            len: (len - RECORD_HEADER) as u32,
                        });
                        offset += len;
                    }
                    Scan::End => break,
                    Scan::Bad(_, end) if last_segment && all_zero(&bytes[end..]) => {
                        tracing::warn!(path = %path.display(), offset, "cutting off a torn write at the end of the log");
                        // Zeroed rather than shortened, so the segment stays preallocated,
                        // and synced before anything is appended over it.
                        let f = OpenOptions::new().write(true).open(&path)?;
                        write_zeros(&f, offset as u64, end as u64)?;
                        f.sync_data()?;
                        break;
                    }
                    Scan::Bad(e, _) => {
                        return Err(corrupt(format!(
                            "{} at offset {offset}: {e}",
                            path.display()
                        )));
                    }
                }
            }
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            if last_segment && offset == 0 {
                // A headerless last segment without records (data format 1's, or one whose
                // header a crash lost): appends go on in the current format.
                file.write_all_at(&segment_header(), 0)?;
                (offset, records) = (SEGMENT_HEADER, Records::Owned);
            }
            if last_segment {
                // Records a killed process wrote but never synced are served from now on:
                // make them durable before anyone relies on them.
                file.sync_data()?;
            }
            inner.segments.push(Segment {
                first_index,
                records,
                path,
                file: Arc::new(file),
                len: offset as u64,
            });
        }
        // As `write` would have, had this run appended what is there.
        if inner
            .segments
            .last()
            .is_none_or(|s| s.len >= segment_bytes / 2)
        {
            inner.fill_spare_in_background();
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
        self.read_at(from, to, usize::MAX, true)
    }

    /// Entries from index `from` on, below `to`, stopping before their payloads' total size
    /// passes `max_bytes` (but with one entry at least); none when `from` is no longer here.
    pub(crate) fn read_limited(
        &self,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> io::Result<Vec<Entry>> {
        self.read_at(from, to, max_bytes, false)
    }

    /// `skip_missing`: start at the first entry present when `from` is gone.
    fn read_at(
        &self,
        from: u64,
        to: u64,
        max_bytes: usize,
        skip_missing: bool,
    ) -> io::Result<Vec<Entry>> {
        let wanted: Vec<(Arc<File>, Records, Loc)> = {
            let inner = self.lock();
            let Some(first) = inner.locs.front().map(|l| l.log_id.index) else {
                return Ok(vec![]);
            };
            if from < first && !skip_missing {
                return Ok(vec![]);
            }
            let start = from.max(first);
            let end = to.min(first + inner.locs.len() as u64);
            let mut bytes = 0usize;
            (start..end)
                .map(|i| inner.locs[(i - first) as usize])
                .take_while(|loc| {
                    let within = bytes == 0 || bytes + loc.len as usize <= max_bytes;
                    bytes += loc.len as usize;
                    within
                })
                .map(|loc| {
                    let segment = &inner.segments[loc.segment];
                    (segment.file.clone(), segment.records, loc)
                })
                .collect()
        };
        let mut out = Vec::with_capacity(wanted.len());
        for (file, records, loc) in wanted {
            let mut buf = vec![0u8; RECORD_HEADER + loc.len as usize];
            file.read_exact_at(&mut buf, loc.offset)?;
            let entry = decode("log record", &buf, records)?;
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
        let segment_bytes = inner.segment_bytes;
        // A segment of data format 1 takes no records of this one.
        if inner
            .segments
            .last()
            .is_none_or(|s| s.len >= segment_bytes || s.records == Records::Postcard)
        {
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
        let mut removed = false;
        while inner.segments.len() > cut.segment + 1 {
            let s = inner.segments.pop().expect("non-empty");
            fs::remove_file(&s.path)?;
            removed = true;
        }
        if removed {
            // Durable now rather than with some later journal commit (an append that overwrites
            // preallocated blocks commits none): a removed segment back after a crash would put
            // stale entries after newer ones.
            sync_dir(&inner.dir)?;
        }
        let seg = &mut inner.segments[cut.segment];
        // Shortened, not zeroed: one size change cannot leave part of the old records behind
        // new ones after a crash. Appends grow this segment again until the next rotation.
        seg.file.set_len(cut.offset)?;
        seg.len = cut.offset;
        if seg.len == 0 {
            // A segment of data format 1, now empty: it becomes one of this format (the next
            // append would otherwise start a segment of the same name). An empty file left by
            // a crash here is given its header at open.
            seg.file.write_all_at(&segment_header(), 0)?;
            (seg.len, seg.records) = (SEGMENT_HEADER as u64, Records::Owned);
        }
        Ok(())
    }

    /// Forgets entries up to `index` and deletes segments that hold nothing newer. The
    /// caller has made the purge point durable first.
    pub(crate) fn purge(&self, index: u64) -> io::Result<()> {
        let mut inner = self.lock();
        while inner.locs.front().is_some_and(|l| l.log_id.index <= index) {
            inner.locs.pop_front();
        }
        if inner.locs.is_empty() {
            // Purged past its end (a snapshot installed over it): every segment goes, and the
            // next append starts a segment of its own. Appended to the last one, it would
            // follow the old entries after a gap.
            let segments = std::mem::take(&mut inner.segments);
            for s in &segments {
                fs::remove_file(&s.path)?;
            }
            if !segments.is_empty() {
                sync_dir(&inner.dir)?;
            }
            return Ok(());
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
        // The spare if its fill is done; else (still filling, failed, never started) an
        // empty file: the appends must not wait for 64 MiB of zeros.
        let ready = match self.spare.take() {
            Some(fill) if fill.is_finished() => match fill.join() {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "zero-filling the next log segment failed");
                    false
                }
                Err(_) => false,
            },
            still_filling => {
                self.spare = still_filling;
                false
            }
        };
        let path = self.dir.join(segment_name(first_index));
        if ready {
            fs::rename(self.dir.join(SPARE), &path)?;
        } else {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?;
        }
        sync_dir(&self.dir)?;
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        // Durable with the first append's sync; a crash before it leaves a segment without
        // header or records, which the next open gives its header.
        file.write_all_at(&segment_header(), 0)?;
        self.segments.push(Segment {
            first_index,
            records: Records::Owned,
            path,
            file: Arc::new(file),
            len: SEGMENT_HEADER as u64,
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
        seg.file.write_all_at(&buf, base)?;
        seg.len += buf.len() as u64;
        let half_full = seg.len >= self.segment_bytes / 2;
        self.locs.extend(new);
        // Zero-filling a segment takes tens of ms (more on a busy disk): done ahead, it does
        // not stall the appends at the rotation.
        if half_full {
            self.fill_spare_in_background();
        }
        Ok(())
    }

    /// Starts zero-filling the spare unless a fill is under way or done and unused.
    fn fill_spare_in_background(&mut self) {
        if self.spare.is_none() {
            let (spare, size) = (self.dir.join(SPARE), self.segment_bytes);
            self.spare = std::thread::Builder::new()
                .name("ordkv-wal-spare".into())
                .spawn(move || fill_spare(&spare, size))
                .ok();
        }
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

    /// The `.wal` files in `dir` (not the spare), in log order.
    fn segment_paths(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect();
        files.sort();
        files
    }

    fn segments_in(dir: &Path) -> usize {
        segment_paths(dir).len()
    }

    fn only_segment(dir: &Path) -> PathBuf {
        let mut files = segment_paths(dir);
        assert_eq!(files.len(), 1);
        files.pop().unwrap()
    }

    /// Opens the log and waits until the spare its open started is filled, so that the first
    /// rotation takes it.
    fn open_with_spare(dir: &Path) -> Wal {
        let wal = Wal::open(dir, None).unwrap();
        wait_for_spare(&wal);
        wal
    }

    /// Waits until the spare being filled (if any) is done.
    fn wait_for_spare(wal: &Wal) {
        while wal.lock().spare.as_ref().is_some_and(|f| !f.is_finished()) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Where the records of the last segment end.
    fn records_end(wal: &Wal) -> usize {
        wal.lock().segments.last().unwrap().len as usize
    }

    /// Offsets of the records of the only segment, from reading it back.
    fn record_offsets(path: &Path) -> Vec<usize> {
        let bytes = fs::read(path).unwrap();
        let mut offsets = vec![];
        let (mut at, records) = records_start(path, &bytes).unwrap();
        while let Scan::Record(_, len) = scan(&bytes, at, records) {
            offsets.push(at);
            at += len;
        }
        offsets
    }

    fn overwrite(path: &Path, offset: usize, bytes: &[u8]) {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        f.write_all_at(bytes, offset as u64).unwrap();
    }

    /// An entry of about `bytes` bytes.
    fn big_entry(index: u64, bytes: usize) -> Entry {
        let put = crate::pb::PutRequest {
            key: b"k".to_vec().into(),
            value: vec![7u8; bytes].into(),
            prev_kv: false,
            lease: 0,
        };
        Entry {
            log_id: openraft::testing::log_id::<crate::TypeConfig>(1, 1, index),
            payload: EntryPayload::Normal(crate::Command(crate::pb::Command {
                op: Some(crate::pb::command::Op::Put(put)),
            })),
        }
    }

    #[test]
    fn appends_survive_reopen_and_reads_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), None).unwrap();
        wal.append((1..=5).map(entry)).unwrap();
        wal.sync().unwrap();
        assert_eq!(wal.read(2, 4).unwrap().len(), 2);
        drop(wal);
        let wal = Wal::open(dir.path(), None).unwrap();
        assert_eq!(indexes(&wal), vec![1, 2, 3, 4, 5]);
        assert_eq!(wal.last().map(|l| l.index), Some(5));
    }

    #[test]
    fn appends_that_leave_a_hole_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), None).unwrap();
        wal.append((1..=2).map(entry)).unwrap();
        assert!(wal.append([entry(4)]).is_err());
        assert_eq!(indexes(&wal), vec![1, 2]);
    }

    #[test]
    fn a_torn_tail_is_cut_off_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), None).unwrap();
        wal.append((1..=3).map(entry)).unwrap();
        let end = records_end(&wal);
        drop(wal);
        // The file ends inside the last record, as a segment written before preallocation
        // could.
        let path = only_segment(dir.path());
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(end as u64 - 3)
            .unwrap();
        let wal = Wal::open(dir.path(), None).unwrap();
        assert_eq!(indexes(&wal), vec![1, 2]);
        // The log goes on after the cut.
        wal.append([entry(3)]).unwrap();
        drop(wal);
        assert_eq!(
            indexes(&Wal::open(dir.path(), None).unwrap()),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn corruption_before_the_end_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), None).unwrap();
        wal.append((1..=3).map(entry)).unwrap();
        drop(wal);
        let path = only_segment(dir.path());
        let mut bytes = fs::read(&path).unwrap();
        bytes[SEGMENT_HEADER + RECORD_HEADER + 1] ^= 0xff; // inside the first record's payload
        fs::write(&path, &bytes).unwrap();
        let err = Wal::open(dir.path(), None)
            .err()
            .expect("corruption refused")
            .to_string();
        assert!(err.contains("checksum"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), bytes, "nothing was changed");
    }

    #[test]
    fn a_preallocated_segment_ends_in_zeros_and_appends_do_not_grow_it() {
        let dir = tempfile::tempdir().unwrap();
        let wal = open_with_spare(dir.path());
        wal.append((1..=3).map(entry)).unwrap();
        wal.sync().unwrap();
        let end = records_end(&wal);
        drop(wal);
        let path = only_segment(dir.path());
        assert_eq!(fs::metadata(&path).unwrap().len(), SEGMENT_BYTES);
        let bytes = fs::read(&path).unwrap();
        assert!(all_zero(&bytes[end..]), "zeros after the records");

        let wal = Wal::open(dir.path(), None).unwrap();
        assert_eq!(indexes(&wal), vec![1, 2, 3]);
        assert_eq!(records_end(&wal), end, "the zeros are not records");
        wal.append((4..=5).map(entry)).unwrap();
        drop(wal);
        assert_eq!(fs::metadata(&path).unwrap().len(), SEGMENT_BYTES);
        assert_eq!(
            indexes(&Wal::open(dir.path(), None).unwrap()),
            vec![1, 2, 3, 4, 5]
        );
    }

    #[test]
    fn a_torn_record_followed_by_zeros_is_cut_off() {
        // What of the last record reached the disk: its header and part of its payload, or
        // its header alone.
        for kept in [RECORD_HEADER + 2, RECORD_HEADER] {
            let dir = tempfile::tempdir().unwrap();
            let wal = open_with_spare(dir.path());
            wal.append((1..=3).map(entry)).unwrap();
            let end = records_end(&wal);
            drop(wal);
            let path = only_segment(dir.path());
            let last = record_offsets(&path)[2];
            overwrite(&path, last + kept, &vec![0; end - last - kept]);

            let wal = Wal::open(dir.path(), None).unwrap();
            assert_eq!(indexes(&wal), vec![1, 2], "kept {kept}");
            let bytes = fs::read(&path).unwrap();
            assert!(all_zero(&bytes[last..]), "the torn record was zeroed");
            assert_eq!(
                bytes.len() as u64,
                SEGMENT_BYTES,
                "and the file not shortened"
            );
            // The log goes on after the cut.
            wal.append([entry(3)]).unwrap();
            drop(wal);
            assert_eq!(
                indexes(&Wal::open(dir.path(), None).unwrap()),
                vec![1, 2, 3]
            );
        }
    }

    #[test]
    fn a_bad_record_followed_by_a_valid_one_is_refused() {
        // The middle record torn (payload zeroed) or its header lost (zero length): either
        // way a valid record follows, so it is not the end of the log.
        for header_lost in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let wal = Wal::open(dir.path(), None).unwrap();
            wal.append((1..=3).map(entry)).unwrap();
            drop(wal);
            let path = only_segment(dir.path());
            let offsets = record_offsets(&path);
            let (from, to) = match header_lost {
                false => (offsets[1] + RECORD_HEADER + 2, offsets[2]),
                true => (offsets[1], offsets[1] + RECORD_HEADER),
            };
            overwrite(&path, from, &vec![0; to - from]);
            let bytes = fs::read(&path).unwrap();
            let err = Wal::open(dir.path(), None)
                .err()
                .expect("corruption refused")
                .to_string();
            assert!(err.contains("corrupt"), "{err}");
            assert_eq!(fs::read(&path).unwrap(), bytes, "nothing was changed");
        }
    }

    #[test]
    fn a_spare_present_at_reopen_is_not_log_and_is_filled_again() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), None).unwrap();
        wal.append((1..=3).map(entry)).unwrap();
        // Past half the segment, the next one is zero-filled in the background.
        wal.append((4..=20).map(|i| big_entry(i, 2 * 1024 * 1024)))
            .unwrap();
        assert!(wal.lock().spare.is_some(), "the spare is being filled");
        drop(wal); // waits for the fill
        let spare = dir.path().join(SPARE);
        assert_eq!(fs::metadata(&spare).unwrap().len(), SEGMENT_BYTES);

        let wal = Wal::open(dir.path(), None).unwrap();
        assert_eq!(indexes(&wal), (1..=20).collect::<Vec<_>>());
        // The segment is past its half: a fill starts afresh (the leftover is not trusted).
        let fill = wal
            .lock()
            .spare
            .take()
            .expect("the spare is being filled again");
        fill.join().unwrap().unwrap();
        fs::remove_file(&spare).unwrap();
        // Rotating without a ready spare does not wait for one: the segment starts empty.
        wal.lock().rotate(21).unwrap();
        wal.append((21..=22).map(entry)).unwrap();
        let second = dir.path().join(segment_name(21));
        assert_eq!(
            fs::metadata(&second).unwrap().len() as usize,
            records_end(&wal)
        );
        // Past its half, the spare is filled for the next rotation, which takes it.
        wal.append((23..=40).map(|i| big_entry(i, 2 * 1024 * 1024)))
            .unwrap();
        wait_for_spare(&wal);
        wal.lock().rotate(41).unwrap();
        wal.append((41..=42).map(entry)).unwrap();
        let third = dir.path().join(segment_name(41));
        assert_eq!(fs::metadata(&third).unwrap().len(), SEGMENT_BYTES);
        drop(wal);
        assert_eq!(
            indexes(&Wal::open(dir.path(), None).unwrap()),
            (1..=42).collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_spare_is_zeros_from_scratch_with_or_without_direct_io() {
        // `fill_spare` takes the buffered way only where direct I/O is refused (EINVAL).
        let dir = tempfile::tempdir().unwrap();
        let spare = dir.path().join(SPARE);
        for (how, fill) in [
            ("direct", fill_spare as fn(&Path, u64) -> io::Result<()>),
            ("buffered", fill_spare_buffered),
        ] {
            // The default size, and a small one that is not a multiple of the fill step.
            for size in [SEGMENT_BYTES, STEP + 64 * 1024] {
                fs::write(&spare, vec![0xab; 3 * STEP as usize / 2]).unwrap();
                fill(&spare, size).unwrap();
                let bytes = fs::read(&spare).unwrap();
                assert_eq!(bytes.len() as u64, size, "{how}");
                assert!(all_zero(&bytes), "{how}: old bytes left in the spare");
            }
        }
    }

    #[test]
    fn a_half_filled_spare_from_a_crash_is_never_used_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), None).unwrap();
        wal.append((1..=3).map(entry)).unwrap();
        drop(wal);
        // A crash in the middle of the fill: short, and not zeros where it was not synced.
        let spare = dir.path().join(SPARE);
        fs::write(&spare, vec![0xab; SEGMENT_BYTES as usize / 2]).unwrap();

        let wal = Wal::open(dir.path(), None).unwrap();
        assert_eq!(indexes(&wal), vec![1, 2, 3]);
        assert!(!spare.exists(), "the leftover is removed at open");
        wal.lock().fill_spare_in_background();
        wait_for_spare(&wal);
        wal.lock().rotate(4).unwrap();
        wal.append((4..=6).map(entry)).unwrap();
        let end = records_end(&wal);
        drop(wal);
        let bytes = fs::read(dir.path().join(segment_name(4))).unwrap();
        assert_eq!(bytes.len() as u64, SEGMENT_BYTES);
        assert!(all_zero(&bytes[end..]), "filled again from scratch");
        assert_eq!(
            indexes(&Wal::open(dir.path(), None).unwrap()),
            vec![1, 2, 3, 4, 5, 6]
        );
    }

    #[test]
    fn truncate_and_purge_keep_the_log_contiguous_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), None).unwrap();
        wal.append((1..=3).map(entry)).unwrap();
        wal.lock().rotate(4).unwrap();
        wal.append((4..=6).map(entry)).unwrap();
        wal.lock().rotate(7).unwrap();
        wal.append((7..=9).map(entry)).unwrap();
        assert_eq!(segments_in(dir.path()), 3);

        wal.truncate_after(Some(5)).unwrap();
        assert_eq!(indexes(&wal), vec![1, 2, 3, 4, 5]);
        assert_eq!(segments_in(dir.path()), 2, "the third segment went");
        wal.append((6..=7).map(entry)).unwrap();

        wal.purge(4).unwrap();
        assert_eq!(indexes(&wal), vec![5, 6, 7]);
        assert_eq!(segments_in(dir.path()), 1, "the first segment went");
        drop(wal);
        // Reopened, entries purged in memory but still in a kept segment come back; the
        // store ignores them below its durable purge point.
        assert_eq!(
            indexes(&Wal::open(dir.path(), None).unwrap()),
            vec![4, 5, 6, 7]
        );
    }

    #[test]
    fn a_limited_read_stops_at_its_size_but_returns_one_entry_at_least() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), None).unwrap();
        wal.append((1..=4).map(|i| big_entry(i, 1000))).unwrap();
        let read = |max| -> Vec<u64> {
            let entries = wal.read_limited(1, 5, max).unwrap();
            entries.iter().map(|e| e.log_id.index).collect()
        };
        assert_eq!(read(10), vec![1], "one entry even when it alone is larger");
        assert_eq!(read(2100), vec![1, 2]);
        assert_eq!(read(usize::MAX), vec![1, 2, 3, 4]);
        wal.purge(2).unwrap();
        assert!(
            wal.read_limited(1, 5, usize::MAX).unwrap().is_empty(),
            "no gap after 1"
        );
        assert_eq!(indexes(&wal), vec![3, 4]);
    }

    #[test]
    fn a_log_purged_past_its_end_starts_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), None).unwrap();
        wal.append((1..=3).map(entry)).unwrap();
        wal.purge(10).unwrap();
        assert_eq!(indexes(&wal), Vec::<u64>::new());
        assert_eq!(segments_in(dir.path()), 0);
        wal.append((11..=12).map(entry)).unwrap();
        drop(wal);
        assert_eq!(indexes(&Wal::open(dir.path(), None).unwrap()), vec![11, 12]);
    }

    #[test]
    fn a_gap_below_the_purge_point_is_no_corruption() {
        // What an earlier version left: entries 1..=3, then 8..=9 after a purge to 7, in one
        // segment.
        let (dir, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let wal = Wal::open(dir.path(), None).unwrap();
        wal.append((1..=3).map(entry)).unwrap();
        let later = Wal::open(other.path(), None).unwrap();
        later.append((8..=9).map(entry)).unwrap();
        let tail = fs::read(only_segment(other.path())).unwrap()
            [SEGMENT_HEADER..records_end(&later)]
            .to_vec();
        overwrite(&only_segment(dir.path()), records_end(&wal), &tail);
        drop(wal);

        let refused = Wal::open(dir.path(), None)
            .err()
            .expect("a hole above the purge point");
        assert!(
            refused
                .to_string()
                .contains("a hole between log index 3 and 8"),
            "{refused}"
        );
        assert!(
            Wal::open(dir.path(), Some(6)).is_err(),
            "8 does not follow the purge point 6"
        );
        assert_eq!(
            indexes(&Wal::open(dir.path(), Some(7)).unwrap()),
            vec![8, 9]
        );
    }

    /// A segment of data format 1: postcard records from offset 0, no header.
    fn headerless_segment(path: &Path, entries: impl IntoIterator<Item = Entry>) {
        let mut bytes = Vec::new();
        for e in entries {
            let payload = postcard::to_stdvec(&e).unwrap();
            bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
            bytes.extend_from_slice(&payload);
        }
        fs::write(path, bytes).unwrap();
    }

    #[test]
    fn segments_of_data_format_1_are_read_and_the_log_goes_on_in_the_current_format() {
        let dir = tempfile::tempdir().unwrap();
        headerless_segment(&dir.path().join(segment_name(1)), (1..=3).map(entry));
        // The empty tail a rotation of data format 1 left (a renamed spare of zeros).
        fs::write(dir.path().join(segment_name(4)), vec![0u8; 8192]).unwrap();

        let wal = Wal::open_with(dir.path(), None, 4096).unwrap();
        assert_eq!(indexes(&wal), vec![1, 2, 3]);
        wal.append((4..=5).map(entry)).unwrap();
        for batch in (6..=1000).collect::<Vec<_>>().chunks(50) {
            wal.append(batch.iter().copied().map(entry)).unwrap(); // past 4 KiB: rotations
        }
        wal.sync().unwrap();
        drop(wal);

        let names = segment_paths(dir.path());
        assert!(names.len() >= 3, "{names:?}");
        let starts: Vec<bool> = names
            .iter()
            .map(|p| fs::read(p).unwrap().starts_with(&segment_header()))
            .collect();
        assert!(!starts[0], "the old segment is left as it was");
        assert!(starts[1..].iter().all(|h| *h), "{starts:?}");
        assert_eq!(
            indexes(&Wal::open(dir.path(), None).unwrap()),
            (1..=1000).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_segment_of_data_format_1_is_never_appended_to() {
        // Appending after it starts a segment of this format.
        let dir = tempfile::tempdir().unwrap();
        headerless_segment(&dir.path().join(segment_name(1)), (1..=3).map(entry));
        let wal = Wal::open(dir.path(), None).unwrap();
        wal.append([entry(4)]).unwrap();
        drop(wal);
        assert_eq!(segments_in(dir.path()), 2);
        assert!(
            fs::read(dir.path().join(segment_name(4)))
                .unwrap()
                .starts_with(&segment_header())
        );
        assert_eq!(
            indexes(&Wal::open(dir.path(), None).unwrap()),
            vec![1, 2, 3, 4]
        );

        // Truncated to nothing, it becomes one of this format (same name, same file).
        let dir = tempfile::tempdir().unwrap();
        headerless_segment(&dir.path().join(segment_name(1)), (1..=3).map(entry));
        let wal = Wal::open(dir.path(), None).unwrap();
        wal.truncate_after(None).unwrap();
        wal.append((1..=2).map(entry)).unwrap();
        drop(wal);
        let path = only_segment(dir.path());
        assert!(fs::read(&path).unwrap().starts_with(&segment_header()));
        assert_eq!(indexes(&Wal::open(dir.path(), None).unwrap()), vec![1, 2]);
    }

    #[test]
    fn a_segment_of_another_format_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), None).unwrap();
        wal.append((1..=3).map(entry)).unwrap();
        drop(wal);
        let path = only_segment(dir.path());
        overwrite(&path, 0, &header_of(SEGMENT_FORMAT + 1));
        let before = fs::read(&path).unwrap();

        let err = Wal::open(dir.path(), None)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains(&format!("in WAL segment format {}", SEGMENT_FORMAT + 1))
                && err.contains(&format!("reads segment format {SEGMENT_FORMAT}")),
            "{err}"
        );
        assert_eq!(fs::read(&path).unwrap(), before, "nothing was changed");

        // A damaged header is corruption, not a format.
        overwrite(&path, 9, &[0xff]);
        let err = Wal::open(dir.path(), None)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("segment header fails its checksum"), "{err}");
    }
}
