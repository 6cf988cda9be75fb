//! Request validation: every check runs before a request reaches Raft, so a bad request gets
//! a clear error and changes nothing.

use crate::config::Limits;
use crate::error::{Error, Result};
use crate::pb;

fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(Error::InvalidArgument(msg.into()))
}

pub(crate) fn key(limits: &Limits, what: &str, key: &[u8]) -> Result<()> {
    if key.is_empty() {
        return invalid(format!("{what} is empty"));
    }
    bounded(limits, what, key)
}

/// A key-like field that may be empty (range bounds, prefixes).
fn bounded(limits: &Limits, what: &str, key: &[u8]) -> Result<()> {
    if key.len() > limits.max_key_bytes {
        return invalid(format!(
            "{what} is {} bytes; the limit is {} (--max-key-bytes)",
            key.len(),
            limits.max_key_bytes
        ));
    }
    Ok(())
}

pub(crate) fn put(limits: &Limits, p: &pb::PutRequest) -> Result<()> {
    key(limits, "key", &p.key)?;
    if p.value.len() > limits.max_value_bytes {
        return invalid(format!(
            "value is {} bytes; the limit is {} (--max-value-bytes)",
            p.value.len(),
            limits.max_value_bytes
        ));
    }
    Ok(())
}

pub(crate) fn consistency(level: i32) -> Result<pb::Consistency> {
    pb::Consistency::try_from(level).or_else(|_| {
        invalid(format!(
            "unknown consistency level {level}; use LINEARIZABLE (1) or SERIALIZABLE (2)"
        ))
    })
}

pub(crate) fn get(limits: &Limits, g: &pb::GetRequest) -> Result<pb::Consistency> {
    key(limits, "key", &g.key)?;
    consistency(g.consistency)
}

fn span(limits: &Limits, start: &[u8], end: &[u8], prefix: &[u8], start_name: &str) -> Result<()> {
    bounded(limits, start_name, start)?;
    bounded(limits, "end", end)?;
    bounded(limits, "prefix", prefix)?;
    if !prefix.is_empty() && !end.is_empty() {
        return invalid("give either a prefix or an end, not both");
    }
    if !end.is_empty() && end <= start {
        return invalid(format!("range end must be greater than its {start_name}"));
    }
    Ok(())
}

pub(crate) fn range(limits: &Limits, r: &pb::RangeRequest) -> Result<pb::Consistency> {
    span(limits, &r.start, &r.end, &r.prefix, "start")?;
    if r.keys_only && r.count_only {
        return invalid("keys_only and count_only exclude each other");
    }
    consistency(r.consistency)
}

pub(crate) fn delete(limits: &Limits, d: &pb::DeleteRequest) -> Result<()> {
    span(limits, &d.key, &d.end, &d.prefix, "key")?;
    if !d.key.is_empty() && !d.prefix.is_empty() {
        return invalid("delete a key or a prefix, not both");
    }
    if d.key.is_empty() && d.prefix.is_empty() {
        return invalid("delete needs a key, a key and an end, or a prefix");
    }
    Ok(())
}

pub(crate) fn txn(limits: &Limits, t: &pb::TxnRequest) -> Result<()> {
    let ops = t.compare.len() + t.success.len() + t.failure.len();
    if ops > limits.max_txn_ops {
        return invalid(format!(
            "txn has {ops} compares and ops; the limit is {} (--max-txn-ops)",
            limits.max_txn_ops
        ));
    }
    for c in &t.compare {
        key(limits, "compare key", &c.key)?;
        if pb::compare::Result::try_from(c.result).is_err() {
            return invalid(format!("unknown compare result {}", c.result));
        }
        match &c.target {
            None => {
                return invalid(
                    "a compare needs a target (version, create_revision, mod_revision or value)",
                );
            }
            Some(pb::compare::Target::Value(v)) if v.len() > limits.max_value_bytes => {
                return invalid("compare value is over the value size limit");
            }
            Some(_) => {}
        }
    }
    for op in t.success.iter().chain(&t.failure) {
        use pb::request_op::Request;
        match &op.request {
            Some(Request::Put(p)) => put(limits, p)?,
            Some(Request::Delete(d)) => delete(limits, d)?,
            Some(Request::Range(r)) => {
                range(limits, r)?;
            }
            None => return invalid("a txn op is empty"),
        }
    }
    Ok(())
}

pub(crate) fn watch(limits: &Limits, w: &pb::WatchRequest) -> Result<()> {
    bounded(limits, "key", &w.key)?;
    bounded(limits, "prefix", &w.prefix)?;
    if !w.key.is_empty() && !w.prefix.is_empty() {
        return invalid("watch a key or a prefix, not both");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn l() -> Limits {
        Limits::default()
    }

    #[test]
    fn keys_must_be_non_empty_and_bounded() {
        assert!(key(&l(), "key", b"").is_err());
        assert!(key(&l(), "key", &vec![b'k'; 4096]).is_ok());
        let err = key(&l(), "key", &vec![b'k'; 4097]).unwrap_err().to_string();
        assert!(err.contains("limit is 4096"), "{err}");
    }

    #[test]
    fn values_are_bounded() {
        let p = |n| pb::PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from(vec![0u8; n]),
            prev_kv: false,
            lease: 0,
        };
        assert!(put(&l(), &p(1 << 20)).is_ok());
        assert!(put(&l(), &p((1 << 20) + 1)).is_err());
    }

    #[test]
    fn unknown_enums_are_refused() {
        assert!(consistency(0).is_ok());
        assert!(consistency(2).is_ok());
        assert!(consistency(7).is_err());
    }

    #[test]
    fn ranges_must_be_ordered_and_unambiguous() {
        let r = |s: &'static [u8], e: &'static [u8], p: &'static [u8]| pb::RangeRequest {
            start: Bytes::from_static(s),
            end: Bytes::from_static(e),
            prefix: Bytes::from_static(p),
            ..Default::default()
        };
        assert!(range(&l(), &r(b"a", b"b", b"")).is_ok());
        assert!(range(&l(), &r(b"b", b"a", b"")).is_err());
        assert!(range(&l(), &r(b"a", b"a", b"")).is_err());
        assert!(range(&l(), &r(b"", b"b", b"p")).is_err());
        // A start inside a prefix continues a paginated scan.
        assert!(range(&l(), &r(b"p3", b"", b"p")).is_ok());
        assert!(range(&l(), &r(b"", b"", b"")).is_ok());
    }

    #[test]
    fn txns_are_bounded() {
        let op = pb::RequestOp {
            request: Some(pb::request_op::Request::Put(pb::PutRequest {
                key: Bytes::from_static(b"k"),
                ..Default::default()
            })),
        };
        let t = |n| pb::TxnRequest {
            success: vec![op.clone(); n],
            ..Default::default()
        };
        assert!(txn(&l(), &t(128)).is_ok());
        assert!(txn(&l(), &t(129)).is_err());
        let empty_op = pb::TxnRequest {
            success: vec![pb::RequestOp { request: None }],
            ..Default::default()
        };
        assert!(txn(&l(), &empty_op).is_err());
    }
}
