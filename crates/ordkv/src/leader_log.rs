//! The leader changes this member saw lately (the status page lists them): when, the term,
//! and who leads. A task follows openraft's metrics; nothing here is replicated.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use openraft::async_runtime::WatchReceiver;
use tokio_util::sync::CancellationToken;

use crate::replica::Replica;

/// How many changes are kept.
const KEPT: usize = 20;

/// A leader this member started to follow (or became).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderChange {
    /// When this member saw it (Unix milliseconds, this member's clock).
    pub at_unix_ms: u64,
    /// The term.
    pub term: u64,
    /// The leader's member name.
    pub leader: String,
}

/// The recent leader changes, newest last. Cloning shares them.
#[derive(Clone, Default)]
pub(crate) struct LeaderLog(Arc<Mutex<VecDeque<LeaderChange>>>);

impl LeaderLog {
    pub(crate) fn recent(&self) -> Vec<LeaderChange> {
        let log = self.0.lock().unwrap_or_else(|p| p.into_inner());
        log.iter().cloned().collect()
    }

    /// Records every new (term, leader) until `stop`.
    pub(crate) async fn follow(self, replica: Replica, stop: CancellationToken) {
        let mut metrics = replica.raft.metrics();
        let mut last = None;
        loop {
            let seen = {
                let m = metrics.borrow_and_update();
                m.current_leader.and_then(|id| {
                    let node = m.membership_config.membership().get_node(&id)?;
                    Some((m.current_term, node.name.clone()))
                })
            };
            if let Some((term, leader)) = seen.filter(|s| Some(s) != last.as_ref()) {
                last = Some((term, leader.clone()));
                let at_unix_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                let mut log = self.0.lock().unwrap_or_else(|p| p.into_inner());
                if log.len() == KEPT {
                    log.pop_front();
                }
                log.push_back(LeaderChange {
                    at_unix_ms,
                    term,
                    leader,
                });
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() { return },
            }
        }
    }
}
