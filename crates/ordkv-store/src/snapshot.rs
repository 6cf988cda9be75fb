//! Snapshots: the whole key space streamed to one checksummed file and back, never held in
//! memory.
//!
//! Layout (format 1, the magic's last byte): `ORDKVSN1`, u32 header length, JSON header (Raft
//! snapshot meta, the store revision and the leases), then records `u32 key length, u32 value
//! length, key, value` (value is the stored key record), an end marker `u32::MAX`, and a
//! CRC32 of everything before it.
//! Watch history is not included: after an install the history starts at the snapshot's
//! revision.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::codec::{corrupt, history_key};
use crate::state_machine::{
    INSTALLING, LEASE_UNDO, SmState, StateMachine, all_leases, decode_history_row, event_revision,
    sled_err,
};
use crate::types::{SnapshotMeta, TypeConfig};

const MAGIC: &[u8; 8] = b"ORDKVSN1";
const END: u32 = u32::MAX;
const SUFFIX: &str = ".snap";
const INSTALL_BATCH_KEYS: usize = 1024;

/// A snapshot file on disk: what openraft hands between the builder, the network and the
/// installer. Only the path travels; the bytes are streamed when needed.
#[derive(Debug, Clone)]
pub struct SnapshotData {
    /// The file.
    pub path: PathBuf,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Header {
    pub(crate) meta: SnapshotMeta,
    pub(crate) revision: u64,
    /// Every lease as `(id, granted TTL)` (absent in snapshots from before leases). The keys
    /// name their lease in their records, which rebuild `lease_keys` on install.
    #[serde(default)]
    pub(crate) leases: Vec<(u64, i64)>,
}

/// Snapshot file names sort by the log index they cover.
fn file_name(meta: &SnapshotMeta) -> String {
    match &meta.last_log_id {
        Some(l) => format!("{:020}-{}{SUFFIX}", l.index, l.leader_id.term),
        None => format!("{:020}-0{SUFFIX}", 0),
    }
}

/// A writer that checksums what passes through it.
struct Crc<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes the current state to a new snapshot file and makes it the current one.
///
/// The keys are copied without the state lock, so applies go on meanwhile: holding it, a
/// build of a million keys stopped every apply, and with it the member's runtime thread, for
/// seconds (long enough for followers to call an election). Then, under the lock for a
/// moment, the keys that batches changed since the copy began (named by the watch history)
/// are read again, and the file is written from the copy with those replaced.
pub(crate) fn build(
    sm: &StateMachine,
) -> io::Result<openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>> {
    build_with(sm, || {})
}

/// [`build`], running `during_copy` after the unlocked copy (tests write there).
pub(crate) fn build_with(
    sm: &StateMachine,
    during_copy: impl FnOnce(),
) -> io::Result<openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>> {
    let dir = &sm.shared.snapshot_dir;
    // Builds may overlap (a backup during openraft's own): each has its own files.
    static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let build = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let copy = dir.join(format!("copy-{}-{build}.tmp", std::process::id()));
    let (from, installs) = {
        let st = sm.read_state();
        (st.revision, st.installs)
    };
    copy_keys(sm, &copy)?;
    during_copy();
    let (header, changed) = {
        let st = sm.read_state();
        let header = Header {
            meta: SnapshotMeta {
                last_log_id: st.applied,
                last_membership: st.membership.clone(),
            },
            revision: st.revision,
            leases: all_leases(&sm.shared.leases.leases)?,
        };
        // Every change since `from` is in the history unless it was compacted or a snapshot
        // replaced the keys; then the copy is made again, under the lock.
        let changed = if st.installs == installs && st.compact_revision <= from + 1 {
            changed_since(sm, from)?
        } else {
            copy_keys(sm, &copy)?;
            BTreeMap::new()
        };
        (header, changed)
    };
    let tmp = dir.join(format!("building-{}-{build}.tmp", std::process::id()));
    write_merged(&tmp, &header, &copy, &changed)?;
    fs::remove_file(&copy)?;
    let path = dir.join(file_name(&header.meta));
    fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    remove_others(dir, &path)?;
    let meta = header.meta;
    remember_current(sm, &path, &meta);
    tracing::info!(path = %path.display(), last_log_id = ?meta.last_log_id, "built snapshot");
    Ok(
        openraft::type_config::alias::SnapshotOf::<TypeConfig, SnapshotData> {
            meta,
            snapshot: SnapshotData { path },
        },
    )
}

/// Copies every key record to `path` as `u32 key length, u32 value length, key, value`.
fn copy_keys(sm: &StateMachine, path: &Path) -> io::Result<()> {
    let mut w = BufWriter::new(File::create(path)?);
    for item in sm.shared.kv.iter() {
        let (k, v) = item.map_err(sled_err)?;
        write_record(&mut w, &k, &v)?;
        crate::crash::point("snapshot.build");
    }
    w.flush()
}

fn write_record(w: &mut impl Write, k: &[u8], v: &[u8]) -> io::Result<()> {
    w.write_all(&(k.len() as u32).to_le_bytes())?;
    w.write_all(&(v.len() as u32).to_le_bytes())?;
    w.write_all(k)?;
    w.write_all(v)
}

/// The current record (`None`: deleted) of every key a batch after revision `from` touched.
/// The caller holds the state lock.
fn changed_since(
    sm: &StateMachine,
    from: u64,
) -> io::Result<BTreeMap<sled::IVec, Option<sled::IVec>>> {
    let sh = &sm.shared;
    let mut changed = BTreeMap::new();
    // A row is keyed by its last revision, so the first one may start at or before `from`.
    for item in sh.history.range(history_key(from + 1)..) {
        let (_, row) = item.map_err(sled_err)?;
        for event in decode_history_row(&row)? {
            if event_revision(&event) <= from {
                continue;
            }
            let Some(kv) = event.kv else { continue };
            let key = sled::IVec::from(kv.key.as_ref());
            if let std::collections::btree_map::Entry::Vacant(e) = changed.entry(key) {
                let now = sh.kv.get(e.key()).map_err(sled_err)?;
                e.insert(now);
            }
        }
    }
    Ok(changed)
}

/// Writes the snapshot file: the header, the copied records with the `changed` keys'
/// current records in their place (left out when deleted), the end marker and the checksum.
fn write_merged(
    path: &Path,
    header: &Header,
    copy: &Path,
    changed: &BTreeMap<sled::IVec, Option<sled::IVec>>,
) -> io::Result<()> {
    let mut w = Crc {
        inner: BufWriter::new(File::create(path)?),
        crc: crc32fast::Hasher::new(),
    };
    let head = serde_json::to_vec(header).map_err(io::Error::other)?;
    w.write_all(MAGIC)?;
    w.write_all(&(head.len() as u32).to_le_bytes())?;
    w.write_all(&head)?;
    let mut current = changed
        .iter()
        .filter_map(|(k, v)| Some((k, v.as_ref()?)))
        .peekable();
    let mut copied = BufReader::new(File::open(copy)?);
    let mut lens = [0u8; 8];
    loop {
        match copied.read_exact(&mut lens) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        let (klen, vlen) = lens.split_at(4);
        let mut k = vec![0; u32::from_le_bytes(klen.try_into().expect("4 bytes")) as usize];
        let mut v = vec![0; u32::from_le_bytes(vlen.try_into().expect("4 bytes")) as usize];
        copied.read_exact(&mut k)?;
        copied.read_exact(&mut v)?;
        while let Some((ck, cv)) = current.next_if(|(ck, _)| ck.as_ref() < k.as_slice()) {
            write_record(&mut w, ck, cv)?;
        }
        if changed.contains_key(k.as_slice()) {
            if let Some((ck, cv)) = current.next_if(|(ck, _)| ck.as_ref() == k.as_slice()) {
                write_record(&mut w, ck, cv)?;
            }
            continue;
        }
        write_record(&mut w, &k, &v)?;
    }
    for (ck, cv) in current {
        write_record(&mut w, ck, cv)?;
    }
    w.write_all(&END.to_le_bytes())?;
    let crc = w.crc.clone().finalize();
    let mut inner = w.inner.into_inner().map_err(|e| e.into_error())?;
    inner.write_all(&crc.to_le_bytes())?;
    inner.sync_all()
}
fn remove_others(dir: &Path, keep: &Path) -> io::Result<()> {
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p != keep && p.extension().is_some_and(|x| x == "snap") {
            fs::remove_file(&p)?;
        }
    }
    Ok(())
}

/// Reads and checks a snapshot's header, and verifies the whole file's checksum.
pub(crate) fn verify(path: &Path) -> io::Result<Header> {
    verify_with(path, &mut |_, _| {}).map(|c| c.header)
}

/// What [`verify_with`] read.
pub(crate) struct Checked {
    pub(crate) header: Header,
    pub(crate) keys: u64,
    pub(crate) bytes: u64,
}

/// A reader that checksums and counts what passes through it.
struct CrcReader<R> {
    inner: R,
    crc: crc32fast::Hasher,
    read: u64,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// Checks a snapshot file end to end: the magic, the header, every record's framing up to
/// the end marker, the checksum, and that nothing follows it. Calls `progress(bytes, keys)`
/// every few thousand records.
pub(crate) fn verify_with(path: &Path, progress: &mut dyn FnMut(u64, u64)) -> io::Result<Checked> {
    let name = path.display();
    let truncated = |e: io::Error| match e.kind() {
        io::ErrorKind::UnexpectedEof => corrupt(format!("snapshot {name} is truncated")),
        _ => e,
    };
    let mut r = CrcReader {
        inner: BufReader::with_capacity(256 * 1024, File::open(path)?),
        crc: crc32fast::Hasher::new(),
        read: 0,
    };
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(truncated)?;
    if magic[..7] == MAGIC[..7] && magic != *MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "snapshot {name} is in format {}; this ordkv ({}) reads format {}: restore \
                 it with the ordkv that wrote it, or a newer one",
                char::from(magic[7]),
                env!("CARGO_PKG_VERSION"),
                char::from(MAGIC[7])
            ),
        ));
    }
    if &magic != MAGIC {
        return Err(corrupt(format!("{name} is not an ordkv snapshot")));
    }
    let hlen = read_u32(&mut r).map_err(truncated)? as usize;
    if hlen > 64 * 1024 * 1024 {
        return Err(corrupt("snapshot header is too large"));
    }
    let mut header = vec![0u8; hlen];
    r.read_exact(&mut header).map_err(truncated)?;
    let parsed: Header =
        serde_json::from_slice(&header).map_err(|e| corrupt(format!("snapshot header: {e}")))?;
    let mut keys = 0u64;
    loop {
        let klen = read_u32(&mut r).map_err(truncated)?;
        if klen == END {
            break;
        }
        let vlen = read_u32(&mut r).map_err(truncated)?;
        let len = u64::from(klen) + u64::from(vlen);
        if io::copy(&mut (&mut r).take(len), &mut io::sink())? != len {
            return Err(corrupt(format!("snapshot {name} is truncated")));
        }
        keys += 1;
        if keys.is_multiple_of(4096) {
            progress(r.read, keys);
        }
    }
    let expected = r.crc.clone().finalize();
    let mut tail = [0u8; 4];
    r.inner.read_exact(&mut tail).map_err(truncated)?;
    if u32::from_le_bytes(tail) != expected {
        return Err(corrupt(format!("snapshot {name} fails its checksum")));
    }
    if r.inner.read(&mut [0u8; 1])? != 0 {
        return Err(corrupt(format!(
            "snapshot {name} has bytes after its checksum"
        )));
    }
    let bytes = r.read + 4;
    progress(bytes, keys);
    Ok(Checked {
        header: parsed,
        keys,
        bytes,
    })
}

/// The newest snapshot file in `dir` (names sort by the log index they cover), unread.
pub(crate) fn newest(dir: &Path) -> io::Result<Option<PathBuf>> {
    let mut newest: Option<PathBuf> = None;
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "snap") && newest.as_ref().is_none_or(|n| &p > n) {
            newest = Some(p);
        }
    }
    Ok(newest)
}

/// The newest snapshot, if any. A file is checked end to end once, on a blocking thread (a
/// multi-GB state would stall the runtime), and its meta kept for later calls.
pub(crate) async fn current(
    sm: &StateMachine,
) -> io::Result<Option<openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>>> {
    let Some(path) = newest(&sm.shared.snapshot_dir)? else {
        return Ok(None);
    };
    let known = sm
        .shared
        .current_snapshot
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let meta = match known {
        Some((p, meta)) if p == path => meta,
        _ => {
            let p = path.clone();
            let meta = tokio::task::spawn_blocking(move || verify(&p))
                .await
                .map_err(io::Error::other)??
                .meta;
            remember_current(sm, &path, &meta);
            meta
        }
    };
    Ok(Some(openraft::type_config::alias::SnapshotOf::<
        TypeConfig,
        SnapshotData,
    > {
        meta,
        snapshot: SnapshotData { path },
    }))
}

/// Records that `path`, checked, holds `meta` (see [`current`]).
fn remember_current(sm: &StateMachine, path: &Path, meta: &SnapshotMeta) {
    *sm.shared
        .current_snapshot
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some((path.to_path_buf(), meta.clone()));
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Replaces the state machine with the snapshot in `data`, which becomes the current
/// snapshot file. Crash-safe: an `installing` marker makes a restart roll back to empty and
/// re-install.
pub(crate) fn install(
    sm: &StateMachine,
    meta: &SnapshotMeta,
    data: SnapshotData,
) -> io::Result<()> {
    let header = verify(&data.path)?;
    if header.meta.last_log_id != meta.last_log_id {
        return Err(corrupt(format!(
            "snapshot file covers {:?} but was announced as {:?}",
            header.meta.last_log_id, meta.last_log_id
        )));
    }
    let dir = sm.shared.snapshot_dir.clone();
    let path = dir.join(file_name(meta));
    if data.path != path {
        fs::rename(&data.path, &path)?;
        sync_dir(&dir)?;
    }
    remove_others(&dir, &path)?;
    remember_current(sm, &path, &header.meta);

    sm.replace_state(|sh, _| {
        sh.meta.insert(INSTALLING, &[1u8][..]).map_err(sled_err)?;
        sh.db.flush().map_err(sled_err)?;
        sh.kv.clear().map_err(sled_err)?;
        sh.history.clear().map_err(sled_err)?;
        sh.leases.leases.clear().map_err(sled_err)?;
        sh.leases.lease_keys.clear().map_err(sled_err)?;
        for (id, ttl) in &header.leases {
            let record = prost::Message::encode_to_vec(&crate::pb::LeaseRecord { ttl: *ttl });
            sh.leases.leases.insert(id.to_be_bytes(), record).map_err(sled_err)?;
        }

        let mut r = BufReader::new(File::open(&path)?);
        let mut skip = vec![0u8; 8 + 4];
        r.read_exact(&mut skip)?;
        let hlen = u32::from_le_bytes([skip[8], skip[9], skip[10], skip[11]]) as usize;
        io::copy(&mut (&mut r).take(hlen as u64), &mut io::sink())?;
        let mut batch = sled::Batch::default();
        let mut in_batch = 0;
        loop {
            let klen = read_u32(&mut r)?;
            if klen == END {
                break;
            }
            let vlen = read_u32(&mut r)? as usize;
            let mut k = vec![0u8; klen as usize];
            let mut v = vec![0u8; vlen];
            r.read_exact(&mut k)?;
            r.read_exact(&mut v)?;
            let lease = crate::codec::decode_kv(&k, &v)?.lease;
            if lease != 0 {
                let row = crate::apply::lease_key_row(lease, &k);
                sh.leases.lease_keys.insert(row, &[][..]).map_err(sled_err)?;
            }
            batch.insert(k, v);
            in_batch += 1;
            if in_batch == INSTALL_BATCH_KEYS {
                sh.kv.apply_batch(std::mem::take(&mut batch)).map_err(sled_err)?;
                in_batch = 0;
            }
        }
        sh.kv.apply_batch(batch).map_err(sled_err)?;
        crate::crash::point_with("snapshot.install", || {
            let _ = sh.db.flush();
        });

        let st = SmState {
            applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            revision: header.revision,
            compact_revision: header.revision,
            installs: 0, // counted by `replace_state`
        };
        for (k, v) in StateMachine::state_rows(&st)? {
            sh.meta.insert(k, v).map_err(sled_err)?;
        }
        sh.meta.remove(LEASE_UNDO).map_err(sled_err)?;
        sh.meta.remove(INSTALLING).map_err(sled_err)?;
        tracing::info!(last_log_id = ?meta.last_log_id, revision = st.revision, "installed snapshot");
        Ok(st)
    })
}
