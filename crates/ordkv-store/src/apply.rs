//! The KV semantics: what each command does to the keys, computed against an overlay of
//! pending changes, so that one batch of log entries is written in the crash-recoverable order
//! `state_machine` describes.

use std::collections::BTreeMap;
use std::io;
use std::ops::Bound;

use bytes::Bytes;

use crate::codec::{decode_kv, prefix_end};
use crate::pb;
use crate::pb::command::Op;

/// Reads through pending (uncommitted) changes to the committed `kv` tree and lease trees.
pub(crate) struct Overlay<'a> {
    tree: &'a sled::Tree,
    leases: &'a LeaseTrees,
    /// `None` marks a deletion.
    pub(crate) changes: BTreeMap<Bytes, Option<pb::KeyValue>>,
    /// Lease id → its TTL (`None`: revoked).
    pub(crate) lease_changes: BTreeMap<u64, Option<i64>>,
    /// `lease_keys` rows (`id || key`) → whether the row exists.
    pub(crate) lease_key_changes: BTreeMap<Vec<u8>, bool>,
}

/// The lease tables: `leases` (big-endian id → [`pb::LeaseRecord`]) and `lease_keys`
/// (`id || key` → nothing), the keys attached to each lease, so a revoke finds them.
pub(crate) struct LeaseTrees {
    pub(crate) leases: sled::Tree,
    pub(crate) lease_keys: sled::Tree,
}

/// The `lease_keys` row of `key` attached to lease `id`.
pub(crate) fn lease_key_row(id: u64, key: &[u8]) -> Vec<u8> {
    let mut row = Vec::with_capacity(8 + key.len());
    row.extend_from_slice(&id.to_be_bytes());
    row.extend_from_slice(key);
    row
}

/// A lease granted or ended by an applied command (for the leader's expiry clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseChange {
    /// Granted with this TTL in seconds.
    Granted {
        /// Lease id.
        id: u64,
        /// TTL in seconds.
        ttl: i64,
    },
    /// Revoked or expired.
    Ended {
        /// Lease id.
        id: u64,
    },
}

fn sled_err(e: sled::Error) -> io::Error {
    io::Error::other(format!("sled: {e}"))
}

impl<'a> Overlay<'a> {
    pub(crate) fn new(tree: &'a sled::Tree, leases: &'a LeaseTrees) -> Overlay<'a> {
        Overlay {
            tree,
            leases,
            changes: BTreeMap::new(),
            lease_changes: BTreeMap::new(),
            lease_key_changes: BTreeMap::new(),
        }
    }

    /// A lease's granted TTL, `None` when it does not exist.
    pub(crate) fn lease(&self, id: u64) -> io::Result<Option<i64>> {
        if let Some(change) = self.lease_changes.get(&id) {
            return Ok(*change);
        }
        match self.leases.leases.get(id.to_be_bytes()).map_err(sled_err)? {
            Some(v) => Ok(Some(crate::codec::decode_lease(&v)?.ttl)),
            None => Ok(None),
        }
    }

    /// The keys attached to lease `id`, in order.
    pub(crate) fn lease_keys(&self, id: u64) -> io::Result<Vec<Bytes>> {
        let prefix = id.to_be_bytes();
        let mut rows: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
        for item in self.leases.lease_keys.scan_prefix(prefix) {
            rows.insert(item.map_err(sled_err)?.0.to_vec(), true);
        }
        let end = (id < u64::MAX).then(|| (id + 1).to_be_bytes().to_vec());
        let upper = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        for (row, present) in self
            .lease_key_changes
            .range::<[u8], _>((Bound::Included(&prefix[..]), upper))
        {
            rows.insert(row.clone(), *present);
        }
        Ok(rows
            .into_iter()
            .filter(|(_, present)| *present)
            .map(|(row, _)| Bytes::copy_from_slice(&row[8..]))
            .collect())
    }

    /// Moves `key` from lease `from` to lease `to` (0: none).
    fn reattach(&mut self, key: &[u8], from: u64, to: u64) {
        if from == to {
            return;
        }
        if from != 0 {
            self.lease_key_changes
                .insert(lease_key_row(from, key), false);
        }
        if to != 0 {
            self.lease_key_changes.insert(lease_key_row(to, key), true);
        }
    }

    pub(crate) fn get(&self, key: &[u8]) -> io::Result<Option<pb::KeyValue>> {
        if let Some(change) = self.changes.get(key) {
            return Ok(change.clone());
        }
        match self.tree.get(key).map_err(sled_err)? {
            Some(v) => Ok(Some(decode_kv(key, &v)?)),
            None => Ok(None),
        }
    }

    /// Calls `visit` for each live key in `[start, end)` in order until it returns false.
    pub(crate) fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        mut visit: impl FnMut(pb::KeyValue) -> bool,
    ) -> io::Result<()> {
        if end.is_some_and(|e| e <= start) {
            return Ok(());
        }
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        let mut committed = self
            .tree
            .range::<&[u8], _>((Bound::Included(start), upper))
            .peekable();
        let mut pending = self
            .changes
            .range::<[u8], _>((Bound::Included(start), upper))
            .peekable();
        loop {
            let next_committed = match committed.peek() {
                Some(Ok((k, _))) => Some(k.clone()),
                Some(Err(_)) => return Err(sled_err(committed.next().unwrap().unwrap_err())),
                None => None,
            };
            let take_pending = match (&next_committed, pending.peek()) {
                (None, None) => return Ok(()),
                (None, Some(_)) => true,
                (Some(_), None) => false,
                (Some(c), Some((p, _))) => p.as_ref() <= c.as_ref(),
            };
            let kv = if take_pending {
                let (k, change) = pending.next().expect("peeked");
                if next_committed.as_deref() == Some(k.as_ref()) {
                    committed.next(); // shadowed by the pending change
                }
                match change {
                    Some(kv) => kv.clone(),
                    None => continue,
                }
            } else {
                let (k, v) = committed.next().expect("peeked").map_err(sled_err)?;
                decode_kv(&k, &v)?
            };
            if !visit(kv) {
                return Ok(());
            }
        }
    }

    fn set(&mut self, key: Bytes, kv: Option<pb::KeyValue>) {
        self.changes.insert(key, kv);
    }
}

/// `(start, end)` of a range given as start/end or prefix. `end = None` is unbounded.
/// With a prefix, a non-empty `start` continues a paginated scan from inside the prefix.
pub(crate) fn bounds(start: &[u8], end: &[u8], prefix: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    if !prefix.is_empty() {
        (start.max(prefix).to_vec(), prefix_end(prefix))
    } else {
        (start.to_vec(), (!end.is_empty()).then(|| end.to_vec()))
    }
}

/// Runs a Range against the overlay. `max_limit` caps the number of keys returned.
pub(crate) fn range(
    ov: &Overlay<'_>,
    req: &pb::RangeRequest,
    max_limit: usize,
) -> io::Result<pb::RangeResponse> {
    let (start, end) = bounds(&req.start, &req.end, &req.prefix);
    let limit = match usize::try_from(req.limit) {
        Ok(0) | Err(_) => max_limit,
        Ok(n) => n.min(max_limit),
    };
    let mut resp = pb::RangeResponse::default();
    if req.count_only {
        ov.scan(&start, end.as_deref(), |_| {
            resp.count += 1;
            true
        })?;
        return Ok(resp);
    }
    ov.scan(&start, end.as_deref(), |mut kv| {
        if resp.kvs.len() == limit {
            resp.more = true;
            resp.next_start = kv.key;
            return false;
        }
        if req.keys_only {
            kv.value = Bytes::new();
        }
        resp.kvs.push(kv);
        true
    })?;
    resp.count = resp.kvs.len() as u64;
    Ok(resp)
}

/// State a command can change besides the keys.
pub(crate) struct Effects<'e> {
    /// The store revision; a command that writes moves it forward by exactly one.
    pub(crate) revision: u64,
    /// A requested compaction point, if any.
    pub(crate) compact_to: Option<u64>,
    pub(crate) compact_revision: u64,
    /// Events produced, in order.
    pub(crate) events: &'e mut Vec<pb::Event>,
    pub(crate) max_range_limit: usize,
    /// The log index of the entry being applied (picks lease ids).
    pub(crate) index: u64,
    /// Leases granted and ended, in order.
    pub(crate) lease_changes: &'e mut Vec<LeaseChange>,
}

fn refuse(kind: pb::CommandError, error: String) -> pb::CommandResponse {
    pb::CommandResponse {
        error,
        error_kind: kind as i32,
        ..Default::default()
    }
}

/// The first lease a put among `ops` names that does not exist.
fn missing_lease<'o>(
    ov: &Overlay<'_>,
    mut puts: impl Iterator<Item = &'o pb::PutRequest>,
) -> io::Result<Option<u64>> {
    puts.try_fold(None, |missing, p| {
        Ok(match missing {
            Some(id) => Some(id),
            None if p.lease != 0 && ov.lease(p.lease)?.is_none() => Some(p.lease),
            None => None,
        })
    })
}

fn lease_not_found(id: u64) -> pb::CommandResponse {
    refuse(
        pb::CommandError::LeaseNotFound,
        format!("lease {id} not found (it expired, was revoked, or never existed)"),
    )
}

/// Applies one command. Never panics on any input: a command the leader should have refused
/// (malformed) becomes a response with `error` set and changes nothing.
pub(crate) fn execute(
    ov: &mut Overlay<'_>,
    fx: &mut Effects<'_>,
    cmd: pb::Command,
) -> io::Result<pb::CommandResponse> {
    use pb::command_response::Result as R;
    let next = fx.revision + 1;
    let mut resp = pb::CommandResponse::default();
    match cmd.op {
        Some(Op::Put(p)) => {
            if let Some(id) = missing_lease(ov, std::iter::once(&p))? {
                resp = lease_not_found(id);
            } else {
                resp.result = Some(R::Put(put(ov, fx, p, next)?));
                fx.revision = next;
            }
        }
        Some(Op::Delete(d)) => {
            let r = delete(ov, fx, &d, next)?;
            if r.deleted > 0 {
                fx.revision = next;
            }
            resp.result = Some(R::Delete(r));
        }
        Some(Op::Txn(t)) => {
            let succeeded = t
                .compare
                .iter()
                .map(|c| compare(ov, c))
                .collect::<io::Result<Vec<bool>>>()?
                .into_iter()
                .all(|ok| ok);
            let ops = if succeeded { t.success } else { t.failure };
            let puts = ops.iter().filter_map(|op| match &op.request {
                Some(pb::request_op::Request::Put(p)) => Some(p),
                _ => None,
            });
            if let Some(id) = missing_lease(ov, puts)? {
                let mut resp = lease_not_found(id);
                resp.revision = fx.revision;
                return Ok(resp);
            }
            let mut wrote = false;
            let mut responses = Vec::with_capacity(ops.len());
            for op in ops {
                use pb::request_op::Request as Q;
                use pb::response_op::Response as S;
                let r = match op.request {
                    Some(Q::Put(p)) => {
                        wrote = true;
                        S::Put(put(ov, fx, p, next)?)
                    }
                    Some(Q::Delete(d)) => {
                        let r = delete(ov, fx, &d, next)?;
                        wrote |= r.deleted > 0;
                        S::Delete(r)
                    }
                    Some(Q::Range(r)) => S::Range(range(ov, &r, fx.max_range_limit)?),
                    None => continue,
                };
                responses.push(pb::ResponseOp { response: Some(r) });
            }
            if wrote {
                fx.revision = next;
            }
            resp.result = Some(R::Txn(pb::TxnResponse {
                header: None,
                succeeded,
                responses,
            }));
        }
        Some(Op::Compact(c)) => {
            if c.revision > fx.revision {
                resp.error = format!(
                    "compact revision {} is in the future (current revision {})",
                    c.revision, fx.revision
                );
            } else if c.revision > fx.compact_revision {
                fx.compact_to = Some(fx.compact_to.unwrap_or(0).max(c.revision));
            }
            resp.result = Some(R::Compact(pb::CompactResponse::default()));
        }
        Some(Op::LeaseGrant(g)) => resp = grant(ov, fx, &g)?,
        Some(Op::LeaseRevoke(r)) if !r.expired_ids.is_empty() => {
            let mut deleted = 0;
            for id in r.expired_ids {
                if ov.lease(id)?.is_some() {
                    deleted += end_lease(ov, fx, id, next)?;
                }
            }
            if deleted > 0 {
                fx.revision = next;
            }
            resp.result = Some(R::LeaseRevoke(pb::LeaseRevokeResponse {
                header: None,
                deleted,
            }));
        }
        Some(Op::LeaseRevoke(r)) => {
            if ov.lease(r.id)?.is_none() {
                resp = lease_not_found(r.id);
            } else {
                let deleted = end_lease(ov, fx, r.id, next)?;
                if deleted > 0 {
                    fx.revision = next;
                }
                resp.result = Some(R::LeaseRevoke(pb::LeaseRevokeResponse {
                    header: None,
                    deleted,
                }));
            }
        }
        None => resp.error = "empty command".into(),
    }
    resp.revision = fx.revision;
    Ok(resp)
}

/// Deletes lease `id`'s keys at revision `rev` and the lease; returns how many keys.
fn end_lease(ov: &mut Overlay<'_>, fx: &mut Effects<'_>, id: u64, rev: u64) -> io::Result<u64> {
    let mut deleted = 0;
    for key in ov.lease_keys(id)? {
        let one = pb::DeleteRequest {
            key,
            ..Default::default()
        };
        deleted += delete(ov, fx, &one, rev)?.deleted;
    }
    ov.lease_changes.insert(id, None);
    fx.lease_changes.push(LeaseChange::Ended { id });
    Ok(deleted)
}

fn grant(
    ov: &mut Overlay<'_>,
    fx: &mut Effects<'_>,
    g: &pb::LeaseGrantRequest,
) -> io::Result<pb::CommandResponse> {
    if g.ttl <= 0 {
        return Ok(refuse(
            pb::CommandError::Invalid,
            format!("lease TTL {} is not positive", g.ttl),
        ));
    }
    let id = if g.id != 0 {
        if ov.lease(g.id)?.is_some() {
            return Ok(refuse(
                pb::CommandError::LeaseExists,
                format!("lease {} already exists", g.id),
            ));
        }
        g.id
    } else {
        // The entry's log index is unique and the same on every replica; an id a client
        // chose may hold it, so look on from there.
        let mut id = fx.index.max(1);
        while ov.lease(id)?.is_some() {
            id += 1;
        }
        id
    };
    ov.lease_changes.insert(id, Some(g.ttl));
    fx.lease_changes
        .push(LeaseChange::Granted { id, ttl: g.ttl });
    Ok(pb::CommandResponse {
        revision: fx.revision,
        result: Some(pb::command_response::Result::LeaseGrant(
            pb::LeaseGrantResponse {
                header: None,
                id,
                ttl: g.ttl,
                ttl_raised: false,
            },
        )),
        ..Default::default()
    })
}

fn put(
    ov: &mut Overlay<'_>,
    fx: &mut Effects<'_>,
    p: pb::PutRequest,
    rev: u64,
) -> io::Result<pb::PutResponse> {
    let prev = ov.get(&p.key)?;
    let kv = pb::KeyValue {
        key: p.key.clone(),
        value: p.value,
        create_revision: prev.as_ref().map_or(rev, |x| x.create_revision),
        mod_revision: rev,
        version: prev.as_ref().map_or(1, |x| x.version + 1),
        lease: p.lease,
    };
    ov.reattach(&p.key, prev.as_ref().map_or(0, |x| x.lease), p.lease);
    ov.set(p.key, Some(kv.clone()));
    fx.events.push(pb::Event {
        r#type: pb::event::EventType::Put as i32,
        kv: Some(kv),
        prev_kv: prev.clone(),
    });
    Ok(pb::PutResponse {
        header: None,
        prev_kv: if p.prev_kv { prev } else { None },
    })
}

fn delete(
    ov: &mut Overlay<'_>,
    fx: &mut Effects<'_>,
    d: &pb::DeleteRequest,
    rev: u64,
) -> io::Result<pb::DeleteResponse> {
    let mut victims = Vec::new();
    if d.prefix.is_empty() && d.end.is_empty() {
        if let Some(kv) = ov.get(&d.key)? {
            victims.push(kv);
        }
    } else {
        let (start, end) = bounds(&d.key, &d.end, &d.prefix);
        ov.scan(&start, end.as_deref(), |kv| {
            victims.push(kv);
            true
        })?;
    }
    let mut resp = pb::DeleteResponse {
        deleted: victims.len() as u64,
        ..Default::default()
    };
    for prev in victims {
        ov.reattach(&prev.key, prev.lease, 0);
        ov.set(prev.key.clone(), None);
        fx.events.push(pb::Event {
            r#type: pb::event::EventType::Delete as i32,
            kv: Some(pb::KeyValue {
                key: prev.key.clone(),
                mod_revision: rev,
                ..Default::default()
            }),
            prev_kv: Some(prev.clone()),
        });
        if d.prev_kv {
            resp.prev_kvs.push(prev);
        }
    }
    Ok(resp)
}

fn compare(ov: &Overlay<'_>, c: &pb::Compare) -> io::Result<bool> {
    use pb::compare::Target;
    use std::cmp::Ordering;
    let cur = ov.get(&c.key)?;
    let num = |f: fn(&pb::KeyValue) -> u64| cur.as_ref().map_or(0, f);
    let ord: Option<Ordering> = match &c.target {
        Some(Target::Version(v)) => Some(num(|k| k.version).cmp(v)),
        Some(Target::CreateRevision(v)) => Some(num(|k| k.create_revision).cmp(v)),
        Some(Target::ModRevision(v)) => Some(num(|k| k.mod_revision).cmp(v)),
        Some(Target::Value(v)) => cur.as_ref().map(|k| k.value.as_ref().cmp(v.as_ref())),
        None => None,
    };
    let Some(ord) = ord else { return Ok(false) };
    Ok(match pb::compare::Result::try_from(c.result) {
        Ok(pb::compare::Result::Equal) => ord == Ordering::Equal,
        Ok(pb::compare::Result::Greater) => ord == Ordering::Greater,
        Ok(pb::compare::Result::Less) => ord == Ordering::Less,
        Ok(pb::compare::Result::NotEqual) => ord != Ordering::Equal,
        Err(_) => false,
    })
}
