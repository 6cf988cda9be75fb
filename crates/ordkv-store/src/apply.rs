//! The KV semantics: what each command does to the keys, computed against an overlay of
//! pending changes so that one batch of log entries commits in one sled transaction.

use std::collections::BTreeMap;
use std::io;
use std::ops::Bound;

use bytes::Bytes;

use crate::codec::{decode_kv, prefix_end};
use crate::pb;
use crate::pb::command::Op;

/// Reads through pending (uncommitted) changes to the committed `kv` tree.
pub(crate) struct Overlay<'a> {
    tree: &'a sled::Tree,
    /// `None` marks a deletion.
    pub(crate) changes: BTreeMap<Bytes, Option<pb::KeyValue>>,
}

fn sled_err(e: sled::Error) -> io::Error {
    io::Error::other(format!("sled: {e}"))
}

impl<'a> Overlay<'a> {
    pub(crate) fn new(tree: &'a sled::Tree) -> Overlay<'a> {
        Overlay {
            tree,
            changes: BTreeMap::new(),
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
            resp.result = Some(R::Put(put(ov, fx, p, next)?));
            fx.revision = next;
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
        None => resp.error = "empty command".into(),
    }
    resp.revision = fx.revision;
    Ok(resp)
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
    };
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
