//! Refuses writes that add data before the disk fills: once the store is over its quota
//! (`NodeConfig::quota_bytes`, etcd's `--quota-backend-bytes`) or the data dir's filesystem
//! has less than `NodeConfig::min_free_bytes` left. Deletes and compactions still pass, so
//! the way out is a write away; reads are never refused. The leader checks before it
//! proposes; a member whose own disk fills while it follows stops (see ARCHITECTURE.md).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ordkv_store::StateMachine;

use crate::error::{Error, Result};
use crate::pb;

/// Gauge: 1 while this member refuses writes for lack of space, else 0.
pub const NO_SPACE_ALARM: &str = "ordkv_no_space_alarm";

/// Sizes are read at most this often while far from the limits (sled's size and `statvfs`
/// are system calls), and on every write that adds data near them.
const CHECK_EVERY: Duration = Duration::from_millis(500);

pub(crate) struct SpaceGuard {
    sm: StateMachine,
    data_dir: PathBuf,
    quota_bytes: u64,
    min_free_bytes: u64,
    /// The last reading.
    last: Mutex<Option<Measured>>,
}

/// Whether `cmd` may add data (a put, or a transaction with a put in either branch).
fn adds_data(cmd: &pb::Command) -> bool {
    use pb::command::Op;
    use pb::request_op::Request;
    let has_put = |ops: &[pb::RequestOp]| {
        ops.iter()
            .any(|o| matches!(o.request, Some(Request::Put(_))))
    };
    match &cmd.op {
        Some(Op::Put(_) | Op::LeaseGrant(_)) => true,
        Some(Op::Txn(t)) => has_put(&t.success) || has_put(&t.failure),
        _ => false,
    }
}

impl SpaceGuard {
    pub(crate) fn new(
        sm: StateMachine,
        data_dir: PathBuf,
        quota_bytes: u64,
        min_free_bytes: u64,
    ) -> SpaceGuard {
        SpaceGuard {
            sm,
            data_dir,
            quota_bytes,
            min_free_bytes,
            last: Mutex::new(None),
        }
    }

    /// Refuses `cmd` (not applied) when it adds data and space is short.
    pub(crate) fn check(&self, cmd: &pb::Command) -> Result<()> {
        if !adds_data(cmd) {
            return Ok(());
        }
        match self.refusal() {
            Some(why) => Err(Error::NoSpace(why)),
            None => Ok(()),
        }
    }

    fn refusal(&self) -> Option<String> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = &*last
            && !m.near
            && m.at.elapsed() < CHECK_EVERY
        {
            return m.refusal.clone();
        }
        let now = self.measure();
        let was = last.as_ref().and_then(|m| m.refusal.clone());
        match (&was, &now.refusal) {
            (None, Some(why)) => tracing::warn!(reason = %why, "refusing writes that add data"),
            (Some(_), None) => tracing::info!("space available again; writes accepted"),
            _ => {}
        }
        metrics::gauge!(NO_SPACE_ALARM).set(if now.refusal.is_some() { 1.0 } else { 0.0 });
        let refusal = now.refusal.clone();
        *last = Some(now);
        refusal
    }

    fn measure(&self) -> Measured {
        let at = Instant::now();
        let size = if self.quota_bytes > 0 {
            self.sm.size_on_disk()
        } else {
            0
        };
        if self.quota_bytes > 0 && size >= self.quota_bytes {
            return Measured {
                at,
                near: true,
                refusal: Some(format!(
                    "the store is {size} bytes, over its quota of {} bytes; delete keys and \
                     compact, or raise the quota (`quota_bytes`, --quota-bytes)",
                    self.quota_bytes
                )),
            };
        }
        let near_quota = self.quota_bytes > 0 && size >= self.quota_bytes / 10 * 9;
        match fs2::available_space(&self.data_dir) {
            Ok(free) => Measured {
                at,
                near: near_quota || free < self.min_free_bytes.saturating_mul(2),
                refusal: (free < self.min_free_bytes).then(|| {
                    format!(
                        "the disk holding {} has {free} bytes free, under the {} bytes kept in \
                         reserve; delete keys and compact, or give the volume more space",
                        self.data_dir.display(),
                        self.min_free_bytes
                    )
                }),
            },
            // An unreadable filesystem size is not a reason to refuse writes.
            Err(_) => Measured {
                at,
                near: near_quota,
                refusal: None,
            },
        }
    }
}

/// One reading of the sizes.
struct Measured {
    at: Instant,
    /// Close to a limit: read again on the next write rather than after [`CHECK_EVERY`],
    /// so that a burst of large writes does not run past it.
    near: bool,
    refusal: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put() -> pb::Command {
        pb::Command {
            op: Some(pb::command::Op::Put(pb::PutRequest::default())),
        }
    }

    fn txn(success: Vec<pb::RequestOp>) -> pb::Command {
        pb::Command {
            op: Some(pb::command::Op::Txn(pb::TxnRequest {
                success,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn only_commands_that_can_add_data_are_checked() {
        use pb::request_op::Request;
        let op = |r| pb::RequestOp { request: Some(r) };
        assert!(adds_data(&put()));
        assert!(adds_data(&txn(vec![
            op(Request::Delete(Default::default())),
            op(Request::Put(Default::default()))
        ])));
        assert!(!adds_data(&txn(vec![op(Request::Delete(
            Default::default()
        ))])));
        let delete = pb::Command {
            op: Some(pb::command::Op::Delete(Default::default())),
        };
        let compact = pb::Command {
            op: Some(pb::command::Op::Compact(Default::default())),
        };
        assert!(!adds_data(&delete));
        assert!(!adds_data(&compact));
    }
}
