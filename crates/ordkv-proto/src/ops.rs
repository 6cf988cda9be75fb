//! Requests for the common operations, built the same way for the embedded `ordkv::Kv` and
//! for `ordkv_client::Client`: a transaction builder, compare-and-swap, prefix deletes,
//! scans and watches, and the kind of a watch event as a Rust enum.

use prost::bytes::Bytes;

use crate::v1::{
    Compare, DeleteRequest, Event, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchRequest,
    compare, event, request_op,
};

/// What a watch event did to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key was created or changed; `kv` is its new version.
    Put,
    /// The key was deleted; `kv` holds its key and the deleting revision.
    Delete,
}

impl Event {
    /// What this event did to its key.
    pub fn kind(&self) -> EventKind {
        match self.r#type() {
            event::EventType::Put => EventKind::Put,
            event::EventType::Delete => EventKind::Delete,
        }
    }
}

/// A delete of one key.
pub fn delete_key(key: impl Into<Bytes>) -> DeleteRequest {
    DeleteRequest {
        key: key.into(),
        ..Default::default()
    }
}

/// A delete of every key that starts with `prefix`.
pub fn delete_prefix(prefix: impl Into<Bytes>) -> DeleteRequest {
    DeleteRequest {
        prefix: prefix.into(),
        ..Default::default()
    }
}

/// A linearizable read of up to `limit` keys that start with `prefix`, in key order
/// (`limit` 0: the server's maximum). Follow `RangeResponse::next_start` while `more`.
pub fn scan_prefix(prefix: impl Into<Bytes>, limit: u64) -> RangeRequest {
    RangeRequest {
        prefix: prefix.into(),
        limit,
        ..Default::default()
    }
}

/// A watch of one key from now on.
pub fn watch_key(key: impl Into<Bytes>) -> WatchRequest {
    WatchRequest {
        key: key.into(),
        ..Default::default()
    }
}

/// A watch of every key that starts with `prefix`, from now on.
pub fn watch_prefix(prefix: impl Into<Bytes>) -> WatchRequest {
    WatchRequest {
        prefix: prefix.into(),
        ..Default::default()
    }
}

/// A compare-and-swap: put `new` at `key` only if its value is `expected` (`None`: only if
/// the key does not exist). The transaction's `succeeded` says whether it swapped.
pub fn compare_and_swap(
    key: impl Into<Bytes>,
    expected: Option<Bytes>,
    new: impl Into<Bytes>,
) -> TxnRequest {
    let key = key.into();
    let txn = match expected {
        Some(value) => Txn::new().if_value(key.clone(), value),
        None => Txn::new().if_absent(key.clone()),
    };
    txn.then_put(key, new).into()
}

/// A transaction: compares that must all hold, the ops to run if they do, and the ops to
/// run if not.
///
/// ```
/// use ordkv_proto::ops::Txn;
/// let txn = Txn::new()
///     .if_value("config/version", "7")
///     .then_put("config/version", "8")
///     .then_delete("config/draft")
///     .else_get("config/version");
/// let request: ordkv_proto::TxnRequest = txn.into();
/// assert_eq!((request.compare.len(), request.success.len(), request.failure.len()), (1, 2, 1));
/// ```
#[derive(Debug, Clone, Default)]
pub struct Txn(TxnRequest);

impl Txn {
    /// An empty transaction (no compare: `then` runs).
    pub fn new() -> Txn {
        Txn::default()
    }

    fn compare(mut self, key: Bytes, target: compare::Target) -> Txn {
        self.0.compare.push(Compare {
            result: compare::Result::Equal as i32,
            key,
            target: Some(target),
        });
        self
    }

    /// Holds if `key`'s value is `value`.
    pub fn if_value(self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Txn {
        self.compare(key.into(), compare::Target::Value(value.into()))
    }

    /// Holds if `key` does not exist (its version is 0).
    pub fn if_absent(self, key: impl Into<Bytes>) -> Txn {
        self.compare(key.into(), compare::Target::Version(0))
    }

    /// Holds if `compare` holds (e.g. a lock guard's `still_held()`).
    pub fn if_compare(mut self, compare: Compare) -> Txn {
        self.0.compare.push(compare);
        self
    }

    /// Holds if `key` was last modified at `revision` (0: it does not exist).
    pub fn if_mod_revision(self, key: impl Into<Bytes>, revision: u64) -> Txn {
        self.compare(key.into(), compare::Target::ModRevision(revision))
    }

    fn put(key: impl Into<Bytes>, value: impl Into<Bytes>) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::Put(PutRequest {
                key: key.into(),
                value: value.into(),
                prev_kv: false,
                lease: 0,
            })),
        }
    }

    fn delete(key: impl Into<Bytes>) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::Delete(delete_key(key))),
        }
    }

    fn get(key: impl Into<Bytes>) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::Range(RangeRequest {
                start: key.into(),
                ..Default::default()
            })),
        }
    }

    /// If the compares hold: put `value` at `key`.
    pub fn then_put(mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Txn {
        self.0.success.push(Txn::put(key, value));
        self
    }

    /// If the compares hold: delete `key`.
    pub fn then_delete(mut self, key: impl Into<Bytes>) -> Txn {
        self.0.success.push(Txn::delete(key));
        self
    }

    /// If the compares hold: read `key`.
    pub fn then_get(mut self, key: impl Into<Bytes>) -> Txn {
        self.0.success.push(Txn::get(key));
        self
    }

    /// If a compare fails: put `value` at `key`.
    pub fn else_put(mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Txn {
        self.0.failure.push(Txn::put(key, value));
        self
    }

    /// If a compare fails: delete `key`.
    pub fn else_delete(mut self, key: impl Into<Bytes>) -> Txn {
        self.0.failure.push(Txn::delete(key));
        self
    }

    /// If a compare fails: read `key`.
    pub fn else_get(mut self, key: impl Into<Bytes>) -> Txn {
        self.0.failure.push(Txn::get(key));
        self
    }
}

impl From<Txn> for TxnRequest {
    fn from(t: Txn) -> TxnRequest {
        t.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compare_and_swap_from_nothing_compares_the_version_with_zero() {
        let t = compare_and_swap("k", None, "v");
        assert_eq!(t.compare[0].target, Some(compare::Target::Version(0)));
        let t = compare_and_swap("k", Some(Bytes::from_static(b"old")), "v");
        assert_eq!(
            t.compare[0].target,
            Some(compare::Target::Value(Bytes::from_static(b"old")))
        );
        assert!(t.failure.is_empty());
        assert!(matches!(
            &t.success[0].request,
            Some(request_op::Request::Put(p)) if p.value == "v"
        ));
    }

    #[test]
    fn event_kinds_follow_the_wire_type() {
        let mut e = Event::default();
        assert_eq!(e.kind(), EventKind::Put);
        e.set_type(event::EventType::Delete);
        assert_eq!(e.kind(), EventKind::Delete);
    }
}
