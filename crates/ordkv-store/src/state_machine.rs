//! The state machine: keys (`kv`), watch history (`history`) and its own metadata
//! (`sm_meta`: applied log id, membership, revision, compaction point), all in sled.
//!
//! A batch of log entries is written with plain sled inserts, in an order that makes a crash
//! at any point recoverable: first the batch's watch events in one history row (more when
//! values are large; each event carries the key's previous value: an undo record), then the
//! keys, then one `state` row holding the applied log id, membership and revision, and last
//! the compaction point and the history it drops. Rows per batch rather than per event: sled
//! copies a whole tree node on every insert, and under load a batch holds tens of events. sled
//! recovers a prefix of its writes, so at open history rows newer than `state`'s revision
//! belong to a batch that did not
//! finish: it is undone (newest first) and the log id in `state` again
//! describes the data exactly; openraft re-applies the rest from the log. (sled transactions
//! and batches would give atomicity too, but each one writes and `sync_file_range`s two log
//! buffers, which cost more than the whole rest of a write.) Nothing is flushed here: the
//! Raft log already made every applied entry durable.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use prost::Message;
use tokio::sync::{broadcast, watch};

use crate::apply::{self, Effects, LeaseChange, LeaseTrees, Overlay};
use crate::codec::{OLD_HISTORY_KEY_LEN, decode_meta, encode_meta, history_key, key_u64};
use crate::durability::Durability;
use crate::pb;
use crate::snapshot::{self, SnapshotData};
use crate::types::{Applied, LogId, SnapshotMeta, StoredMembership, TypeConfig};

/// `(applied log id, membership, revision)`, written after each batch's keys (only compaction
/// follows it).
pub(crate) const STATE: &[u8] = b"state";
const COMPACT_REVISION: &[u8] = b"compact_revision";
/// Present while a snapshot is being installed: the keys are then half-replaced.
pub(crate) const INSTALLING: &[u8] = b"installing";
/// The lease rows a batch is about to change, as they were (`pb::LeaseUndo`).
pub(crate) const LEASE_UNDO: &[u8] = b"lease_undo";
/// Present once the history holds only batched rows (see `batch_old_history_rows`), so
/// later opens do not scan it.
pub(crate) const HISTORY_BATCHED: &[u8] = b"history_batched";
/// Size after which a history row ends (at the next revision boundary).
const HISTORY_ROW_BYTES: usize = 256 * 1024;

/// What the state machine knows about itself, kept in memory and in `sm_meta`.
#[derive(Debug, Clone, Default)]
pub(crate) struct SmState {
    pub(crate) applied: Option<LogId>,
    pub(crate) membership: StoredMembership,
    pub(crate) revision: u64,
    /// Oldest revision still in the watch history.
    pub(crate) compact_revision: u64,
    /// Snapshots installed since open (a snapshot build checks that none came meanwhile).
    pub(crate) installs: u64,
}

/// The leases one applied batch granted and ended; `None` when a snapshot install replaced
/// them all.
pub type LeaseChanges = Option<Arc<Vec<LeaseChange>>>;

/// Every lease at one point, and the changes applied after it.
pub struct LeaseSubscription {
    /// Changes after `leases` was read.
    pub changes: broadcast::Receiver<LeaseChanges>,
    /// Every lease as `(id, granted TTL)`.
    pub leases: Vec<(u64, i64)>,
}

/// Events applied together, broadcast to watchers in revision order.
#[derive(Debug)]
pub struct EventBatch {
    /// Each event's revision is `kv.mod_revision`.
    pub events: Vec<pb::Event>,
}

/// Reading history that compaction already discarded.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The requested revision is older than the oldest kept.
    #[error("revision {requested} is compacted; the oldest available is {oldest}")]
    Compacted {
        /// Requested revision.
        requested: u64,
        /// Oldest revision still available.
        oldest: u64,
    },
    /// Storage failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

pub(crate) struct Shared {
    pub(crate) db: sled::Db,
    pub(crate) kv: sled::Tree,
    pub(crate) history: sled::Tree,
    pub(crate) meta: sled::Tree,
    pub(crate) leases: LeaseTrees,
    /// Writers (apply, install) take it exclusively; readers share it, so nobody sees half
    /// of a batch. The snapshot builder holds it only to finish (see `snapshot::build`).
    pub(crate) state: RwLock<SmState>,
    revision_tx: watch::Sender<u64>,
    events_tx: broadcast::Sender<Arc<EventBatch>>,
    /// Leases granted and ended by each applied batch; `None` after a snapshot install
    /// replaced them all.
    pub(crate) lease_tx: broadcast::Sender<LeaseChanges>,
    /// How many leases exist (kept with the state lock held for writing).
    pub(crate) lease_count: std::sync::atomic::AtomicUsize,
    history_max: u64,
    max_range_limit: usize,
    pub(crate) snapshot_dir: PathBuf,
    /// The current snapshot file, checked, and its meta (see `snapshot::current`).
    pub(crate) current_snapshot: std::sync::Mutex<Option<(PathBuf, SnapshotMeta)>>,
    pub(crate) durability: Durability,
}

/// The state machine handle; clones share everything. Besides serving openraft it is the
/// read side used by the node (get, range, watch).
#[derive(Clone)]
pub struct StateMachine {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) fn sled_err(e: sled::Error) -> io::Error {
    io::Error::other(format!("sled: {e}"))
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> io::Result<u64> {
    match tree.get(key).map_err(sled_err)? {
        Some(v) => key_u64(&v),
        None => Ok(0),
    }
}

impl StateMachine {
    pub(crate) fn open(
        db: &sled::Db,
        snapshot_dir: PathBuf,
        durability: Durability,
        history_max: u64,
        max_range_limit: usize,
    ) -> io::Result<StateMachine> {
        let kv = db.open_tree("kv").map_err(sled_err)?;
        let history = db.open_tree("history").map_err(sled_err)?;
        let meta = db.open_tree("sm_meta").map_err(sled_err)?;
        let leases = LeaseTrees {
            leases: db.open_tree("leases").map_err(sled_err)?,
            lease_keys: db.open_tree("lease_keys").map_err(sled_err)?,
        };
        std::fs::create_dir_all(&snapshot_dir)?;
        // Files of a snapshot build that a crash interrupted (no build runs before open).
        for e in std::fs::read_dir(&snapshot_dir)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "tmp") {
                std::fs::remove_file(&p)?;
            }
        }
        if meta.contains_key(INSTALLING).map_err(sled_err)? {
            // A crash interrupted a snapshot install. Start empty; openraft re-installs the
            // saved snapshot (kept before the install began) and re-applies the log.
            tracing::warn!("an interrupted snapshot install is rolled back");
            kv.clear().map_err(sled_err)?;
            history.clear().map_err(sled_err)?;
            leases.leases.clear().map_err(sled_err)?;
            leases.lease_keys.clear().map_err(sled_err)?;
            meta.clear().map_err(sled_err)?;
            db.flush().map_err(sled_err)?;
        }
        let (applied, membership, revision) = match meta.get(STATE).map_err(sled_err)? {
            Some(v) => decode_meta("state machine state", &v)?,
            None => (None, StoredMembership::default(), 0),
        };
        let state = SmState {
            applied,
            membership,
            revision,
            compact_revision: read_u64(&meta, COMPACT_REVISION)?,
            installs: 0,
        };
        if !meta.contains_key(HISTORY_BATCHED).map_err(sled_err)? {
            batch_old_history_rows(&history)?;
            meta.insert(HISTORY_BATCHED, &[]).map_err(sled_err)?;
        }
        undo_unfinished_batch(&kv, &history, state.revision)?;
        undo_unfinished_lease_changes(&meta, &leases, state.applied.map_or(0, |l| l.index))?;
        let (revision_tx, _) = watch::channel(state.revision);
        let (events_tx, _) = broadcast::channel(1024);
        let (lease_tx, _) = broadcast::channel(1024);
        Ok(StateMachine {
            shared: Arc::new(Shared {
                db: db.clone(),
                kv,
                history,
                meta,
                state: RwLock::new(state),
                revision_tx,
                events_tx,
                lease_count: std::sync::atomic::AtomicUsize::new(leases.leases.len()),
                leases,
                lease_tx,
                history_max,
                max_range_limit,
                snapshot_dir,
                current_snapshot: Default::default(),
                durability,
            }),
        })
    }

    pub(crate) fn read_state(&self) -> RwLockReadGuard<'_, SmState> {
        self.shared.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The current revision.
    pub fn revision(&self) -> u64 {
        self.read_state().revision
    }

    /// The oldest revision still in watch history.
    pub fn compact_revision(&self) -> u64 {
        self.read_state().compact_revision
    }

    /// The last applied log entry.
    pub fn applied_log_id(&self) -> Option<LogId> {
        self.read_state().applied
    }

    /// The index of the last applied log entry.
    pub fn applied_index(&self) -> u64 {
        self.read_state().applied.as_ref().map_or(0, |l| l.index)
    }

    /// Follows the applied revision (for `min_revision` reads).
    pub fn revision_watch(&self) -> watch::Receiver<u64> {
        self.shared.revision_tx.subscribe()
    }

    /// Size of the whole sled database on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.shared.db.size_on_disk().unwrap_or(0)
    }

    /// The current snapshot file, if one was built (not read: see `verify_snapshot`).
    pub fn current_snapshot_file(&self) -> io::Result<Option<std::path::PathBuf>> {
        snapshot::newest(&self.shared.snapshot_dir)
    }

    /// Makes everything written so far durable (used at shutdown).
    pub async fn flush(&self) -> io::Result<()> {
        self.shared.durability.flush().await
    }

    /// Whether a storage flush failed (the node must stop).
    pub fn storage_failed(&self) -> bool {
        self.shared.durability.has_failed()
    }

    fn overlay(&self) -> Overlay<'_> {
        Overlay::new(&self.shared.kv, &self.shared.leases)
    }

    /// One key and the revision it was read at.
    pub fn get(&self, key: &[u8]) -> io::Result<(Option<pb::KeyValue>, u64)> {
        let st = self.read_state();
        Ok((self.overlay().get(key)?, st.revision))
    }

    /// A lease's granted TTL in seconds (`None`: no such lease), its keys when asked, and
    /// the revision they were read at.
    pub fn lease(&self, id: u64, keys: bool) -> io::Result<(Option<i64>, Vec<bytes::Bytes>, u64)> {
        let st = self.read_state();
        let ov = self.overlay();
        let ttl = ov.lease(id)?;
        let keys = if keys && ttl.is_some() {
            ov.lease_keys(id)?
        } else {
            Vec::new()
        };
        Ok((ttl, keys, st.revision))
    }

    /// How many leases exist.
    pub fn lease_count(&self) -> usize {
        self.shared
            .lease_count
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every lease as `(id, granted TTL)`, in id order, and the revision they were read at.
    pub fn leases(&self) -> io::Result<(Vec<(u64, i64)>, u64)> {
        let st = self.read_state();
        Ok((all_leases(&self.shared.leases.leases)?, st.revision))
    }

    /// Follows lease grants and ends: every lease applied after this call arrives on the
    /// receiver, and the list returned holds every lease before it. `None` on the receiver
    /// (or a lag) means the leases were replaced: list them again.
    pub fn subscribe_leases(&self) -> io::Result<LeaseSubscription> {
        let _st = self.read_state();
        let changes = self.shared.lease_tx.subscribe();
        let leases = all_leases(&self.shared.leases.leases)?;
        Ok(LeaseSubscription { changes, leases })
    }

    /// A range and the revision it was read at.
    pub fn range(&self, req: &pb::RangeRequest) -> io::Result<(pb::RangeResponse, u64)> {
        let st = self.read_state();
        let resp = apply::range(&self.overlay(), req, self.shared.max_range_limit)?;
        Ok((resp, st.revision))
    }

    /// Starts following events: returns the receiver and the revision up to which events
    /// must come from history instead (every later one arrives on the receiver).
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<EventBatch>>, u64) {
        let st = self.read_state();
        (self.shared.events_tx.subscribe(), st.revision)
    }

    /// Events with revisions in `[from, to]`, at most about `max_events` (whole revisions).
    pub fn history(
        &self,
        from: u64,
        to: u64,
        max_events: usize,
    ) -> Result<Vec<pb::Event>, ReadError> {
        let st = self.read_state();
        if from < st.compact_revision {
            return Err(ReadError::Compacted {
                requested: from,
                oldest: st.compact_revision,
            });
        }
        let mut out: Vec<pb::Event> = Vec::new();
        // The first row whose last event is at or after `from` may start before it.
        'rows: for item in self.shared.history.range(history_key(from)..) {
            let (_, row) = item.map_err(sled_err)?;
            for event in decode_history_row(&row)? {
                let rev = event_revision(&event);
                if rev < from {
                    continue;
                }
                let last_rev = out.last().map(event_revision);
                if rev > to || (out.len() >= max_events && last_rev != Some(rev)) {
                    break 'rows;
                }
                out.push(event);
            }
        }
        Ok(out)
    }

    /// Applies a batch of entries with plain inserts (a crash midway is undone at open);
    /// returns the responses to send.
    fn apply_batch(
        &self,
        batch: Vec<EntryResponder<TypeConfig>>,
    ) -> io::Result<
        Vec<(
            Option<openraft::storage::ApplyResponder<TypeConfig>>,
            Applied,
        )>,
    > {
        let sh = &*self.shared;
        let mut st = sh.state.write().unwrap_or_else(|p| p.into_inner());
        let mut next = st.clone();
        let mut ov = Overlay::new(&sh.kv, &sh.leases);
        let mut events = Vec::new();
        let mut lease_changes = Vec::new();
        let mut compact_to = None;
        let mut responses = Vec::new();
        for (entry, responder) in batch {
            // openraft applies the committed log in order, each entry once.
            debug_assert!(
                next.applied.is_none_or(|a| entry.log_id.index > a.index),
                "apply of {} after {:?}",
                entry.log_id,
                next.applied
            );
            next.applied = Some(entry.log_id);
            let resp = match entry.payload {
                EntryPayload::Blank => pb::CommandResponse {
                    revision: next.revision,
                    ..Default::default()
                },
                EntryPayload::Normal(cmd) => {
                    let mut fx = Effects {
                        revision: next.revision,
                        compact_to,
                        compact_revision: next.compact_revision,
                        events: &mut events,
                        max_range_limit: sh.max_range_limit,
                        index: entry.log_id.index,
                        lease_changes: &mut lease_changes,
                    };
                    let r = apply::execute(&mut ov, &mut fx, cmd.0)?;
                    debug_assert!(fx.revision >= next.revision, "the revision went back");
                    next.revision = fx.revision;
                    compact_to = fx.compact_to;
                    r
                }
                EntryPayload::Membership(m) => {
                    if m.get_joint_config().len() > 1 {
                        crate::crash::point("apply.joint_membership");
                    }
                    next.membership = StoredMembership::new(Some(entry.log_id), m);
                    pb::CommandResponse {
                        revision: next.revision,
                        ..Default::default()
                    }
                }
            };
            responses.push((responder, Applied(resp)));
        }

        // Keep at most `history_max` revisions of history, and honour explicit compactions.
        let auto = if next.revision > sh.history_max {
            next.revision - sh.history_max + 1
        } else {
            0
        };
        let target = compact_to.unwrap_or(0).max(auto);
        let mut dropped_history = Vec::new();
        if target > next.compact_revision {
            for k in sh
                .history
                .range(history_key(next.compact_revision)..history_key(target))
                .keys()
            {
                dropped_history.push(k.map_err(sled_err)?);
            }
            next.compact_revision = target;
        }

        // Lease rows have no history to undo them: their old values go first, in one row.
        let lease_rows = !ov.lease_changes.is_empty() || !ov.lease_key_changes.is_empty();
        if lease_rows {
            let undo = lease_undo(&sh.leases, &ov, next.applied.map_or(0, |l| l.index))?;
            sh.meta.insert(LEASE_UNDO, undo).map_err(sled_err)?;
        }

        // Encoded in place as `pb::HistoryRow`s (the events are still needed for the
        // watchers). A row ends at a revision boundary once it passes HISTORY_ROW_BYTES, so
        // rows stay inline in sled's data file rather than in separate blob files.
        let mut row = Vec::new();
        for (i, ev) in events.iter().enumerate() {
            prost::encoding::message::encode(1, ev, &mut row);
            let rev = event_revision(ev);
            let row_ends = events
                .get(i + 1)
                .is_none_or(|next| event_revision(next) != rev && row.len() >= HISTORY_ROW_BYTES);
            if row_ends {
                sh.history
                    .insert(history_key(rev), std::mem::take(&mut row))
                    .map_err(sled_err)?;
            }
        }
        for (k, change) in &ov.changes {
            match change {
                Some(v) => sh.kv.insert(k.as_ref(), crate::codec::encode_kv(v)),
                None => sh.kv.remove(k.as_ref()),
            }
            .map_err(sled_err)?;
        }
        for (id, ttl) in &ov.lease_changes {
            match ttl {
                Some(ttl) => sh.leases.leases.insert(
                    id.to_be_bytes(),
                    pb::LeaseRecord { ttl: *ttl }.encode_to_vec(),
                ),
                None => sh.leases.leases.remove(id.to_be_bytes()),
            }
            .map_err(sled_err)?;
        }
        for (row, present) in &ov.lease_key_changes {
            match present {
                true => sh.leases.lease_keys.insert(row.as_slice(), &[][..]),
                false => sh.leases.lease_keys.remove(row.as_slice()),
            }
            .map_err(sled_err)?;
        }
        crate::crash::point_with("apply.mid_batch", || {
            let _ = sh.db.flush();
        });
        sh.meta
            .insert(
                STATE,
                encode_meta(&(next.applied, &next.membership, next.revision))?,
            )
            .map_err(sled_err)?;
        // After `state`: the dropped rows may include this batch's undo records. A crash
        // before these writes only leaves more history than asked for.
        if next.compact_revision != st.compact_revision {
            sh.meta
                .insert(COMPACT_REVISION, &next.compact_revision.to_be_bytes())
                .map_err(sled_err)?;
            for k in &dropped_history {
                sh.history.remove(k).map_err(sled_err)?;
            }
        }

        let revision = next.revision;
        *st = next;
        // Still under the lock, so subscribers see batches in order and none is missed.
        if !events.is_empty() {
            let _ = sh.events_tx.send(Arc::new(EventBatch { events }));
        }
        if !lease_changes.is_empty() {
            let count = lease_changes.iter().fold(
                sh.lease_count.load(std::sync::atomic::Ordering::Relaxed),
                |n, change| match change {
                    LeaseChange::Granted { .. } => n + 1,
                    LeaseChange::Ended { .. } => n.saturating_sub(1),
                },
            );
            sh.lease_count
                .store(count, std::sync::atomic::Ordering::Relaxed);
            let _ = sh.lease_tx.send(Some(Arc::new(lease_changes)));
        }
        sh.revision_tx.send_replace(revision);
        drop(st);
        Ok(responses)
    }

    /// Applies commands as log entries `first_index..`, returning their responses.
    #[cfg(test)]
    pub(crate) fn apply_commands(
        &self,
        first_index: u64,
        cmds: Vec<pb::Command>,
    ) -> io::Result<Vec<pb::CommandResponse>> {
        let batch = cmds
            .into_iter()
            .zip(first_index..)
            .map(|(c, index)| {
                let log_id = openraft::testing::log_id::<TypeConfig>(1, 1, index);
                let entry = openraft::Entry {
                    log_id,
                    payload: EntryPayload::Normal(crate::types::Command(c)),
                };
                (entry, None)
            })
            .collect();
        Ok(self
            .apply_batch(batch)?
            .into_iter()
            .map(|(_, a)| a.0)
            .collect())
    }

    /// Replaces the whole state with a snapshot's (see [`snapshot::install`]).
    pub(crate) fn replace_state(
        &self,
        f: impl FnOnce(&Shared, &SmState) -> io::Result<SmState>,
    ) -> io::Result<()> {
        let sh = &*self.shared;
        let mut st = sh.state.write().unwrap_or_else(|p| p.into_inner());
        let mut new = f(sh, &st)?;
        new.installs = st.installs + 1;
        let revision = new.revision;
        *st = new;
        sh.revision_tx.send_replace(revision);
        sh.lease_count
            .store(sh.leases.leases.len(), std::sync::atomic::Ordering::Relaxed);
        let _ = sh.lease_tx.send(None);
        Ok(())
    }

    pub(crate) fn state_rows(st: &SmState) -> io::Result<Vec<(&'static [u8], Vec<u8>)>> {
        Ok(vec![
            (COMPACT_REVISION, st.compact_revision.to_be_bytes().to_vec()),
            (
                STATE,
                encode_meta(&(st.applied, &st.membership, st.revision))?,
            ),
        ])
    }
}

pub(crate) fn event_revision(event: &pb::Event) -> u64 {
    event.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

pub(crate) fn decode_history_row(row: &[u8]) -> io::Result<Vec<pb::Event>> {
    pb::HistoryRow::decode(row)
        .map(|r| r.events)
        .map_err(|e| crate::codec::corrupt(format!("history row: {e}")))
}

pub(crate) fn all_leases(tree: &sled::Tree) -> io::Result<Vec<(u64, i64)>> {
    tree.iter()
        .map(|item| {
            let (k, v) = item.map_err(sled_err)?;
            Ok((key_u64(&k)?, crate::codec::decode_lease(&v)?.ttl))
        })
        .collect()
}

/// The undo record of the lease rows `ov` is about to change (see `LEASE_UNDO`).
fn lease_undo(trees: &LeaseTrees, ov: &Overlay<'_>, log_index: u64) -> io::Result<Vec<u8>> {
    let mut rows = Vec::new();
    for id in ov.lease_changes.keys() {
        let key = id.to_be_bytes().to_vec();
        let previous = trees.leases.get(&key).map_err(sled_err)?;
        rows.push(pb::UndoRow {
            tree: 0,
            key: key.into(),
            previous: previous.map(|v| bytes::Bytes::copy_from_slice(&v)),
        });
    }
    for row in ov.lease_key_changes.keys() {
        let previous = trees.lease_keys.get(row).map_err(sled_err)?;
        rows.push(pb::UndoRow {
            tree: 1,
            key: bytes::Bytes::copy_from_slice(row),
            previous: previous.map(|v| bytes::Bytes::copy_from_slice(&v)),
        });
    }
    Ok(pb::LeaseUndo { log_index, rows }.encode_to_vec())
}

/// Restores the lease rows of a batch that a crash interrupted (newer than `applied`).
fn undo_unfinished_lease_changes(
    meta: &sled::Tree,
    trees: &LeaseTrees,
    applied: u64,
) -> io::Result<()> {
    let Some(undo) = meta.get(LEASE_UNDO).map_err(sled_err)? else {
        return Ok(());
    };
    let undo = pb::LeaseUndo::decode(undo.as_ref())
        .map_err(|e| crate::codec::corrupt(format!("lease undo record: {e}")))?;
    if undo.log_index > applied {
        tracing::warn!(
            rows = undo.rows.len(),
            "undoing lease changes of a batch that a crash interrupted"
        );
        for row in undo.rows {
            let tree = if row.tree == 0 {
                &trees.leases
            } else {
                &trees.lease_keys
            };
            match row.previous {
                Some(v) => tree.insert(row.key.as_ref(), v.as_ref()),
                None => tree.remove(row.key.as_ref()),
            }
            .map_err(sled_err)?;
        }
    }
    meta.remove(LEASE_UNDO).map_err(sled_err)?;
    Ok(())
}

/// Undoes the writes of a batch that a crash interrupted: history rows newer than the
/// recorded revision, newest event first, restoring each key's previous value.
fn undo_unfinished_batch(kv: &sled::Tree, history: &sled::Tree, revision: u64) -> io::Result<()> {
    let rows: Vec<(sled::IVec, sled::IVec)> = history
        .range(history_key(revision.saturating_add(1))..)
        .collect::<Result<_, _>>()
        .map_err(sled_err)?;
    if rows.is_empty() {
        return Ok(());
    }
    tracing::warn!(
        rows = rows.len(),
        revision,
        "undoing a batch that a crash interrupted"
    );
    for (k, row) in rows.iter().rev() {
        for event in decode_history_row(row)?.into_iter().rev() {
            let key = event.kv.map(|kv| kv.key).unwrap_or_default();
            match event.prev_kv {
                Some(prev) => kv.insert(key.as_ref(), crate::codec::encode_kv(&prev)),
                None => kv.remove(key.as_ref()),
            }
            .map_err(sled_err)?;
        }
        history.remove(k).map_err(sled_err)?;
    }
    Ok(())
}

/// Rewrites history from before batching (one `pb::Event` per row, keyed `revision || seq`)
/// as one row per revision. Idempotent: a crash halfway leaves rows that the next open
/// rewrites the same way.
fn batch_old_history_rows(history: &sled::Tree) -> io::Result<()> {
    let mut groups: Vec<(u64, Vec<sled::IVec>, Vec<u8>)> = Vec::new();
    for item in history.iter() {
        let (k, v) = item.map_err(sled_err)?;
        if k.len() != OLD_HISTORY_KEY_LEN {
            continue;
        }
        let rev = key_u64(&k[..8])?;
        if groups.last().is_none_or(|g| g.0 != rev) {
            groups.push((rev, Vec::new(), Vec::new()));
        }
        let event = pb::Event::decode(v.as_ref())
            .map_err(|e| crate::codec::corrupt(format!("history event: {e}")))?;
        let group = groups.last_mut().expect("pushed above");
        prost::encoding::message::encode(1, &event, &mut group.2);
        group.1.push(k);
    }
    if !groups.is_empty() {
        tracing::info!(
            revisions = groups.len(),
            "rewriting watch history in the batched format"
        );
    }
    for (rev, old_keys, row) in groups {
        history.insert(history_key(rev), row).map_err(sled_err)?;
        for k in old_keys {
            history.remove(k).map_err(sled_err)?;
        }
    }
    Ok(())
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let st = self.read_state();
        Ok((st.applied, st.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> io::Result<()>
    where
        S: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        while let Some(item) = entries.try_next().await? {
            batch.push(item);
        }
        for (responder, resp) in self.apply_batch(batch)? {
            if let Some(r) = responder {
                r.send(resp);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: SnapshotData,
    ) -> io::Result<()> {
        let sm = self.clone();
        let meta = meta.clone();
        tokio::task::spawn_blocking(move || snapshot::install(&sm, &meta, data))
            .await
            .map_err(io::Error::other)??;
        self.shared.durability.flush().await
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> io::Result<Option<openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>>>
    {
        snapshot::current(self).await
    }
}

impl openraft::RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(
        &mut self,
    ) -> io::Result<openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>> {
        let sm = self.clone();
        let snap = tokio::task::spawn_blocking(move || snapshot::build(&sm))
            .await
            .map_err(io::Error::other)??;
        // The log is purged up to a snapshot, so what it covers must be on disk first.
        self.shared.durability.flush().await?;
        Ok(snap)
    }
}
