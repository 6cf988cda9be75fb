//! The write path: a command proposed here when this member leads, otherwise forwarded to
//! the leader over the peer port, with the outcome told apart (not applied, or unknown).

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use ordkv_store::Command;

use crate::error::{Error, Result};
use crate::pb;
use crate::replica::Replica;
use crate::space::SpaceGuard;

/// Proposes commands for this member's clients (and, on the leader, for its followers').
#[derive(Clone)]
pub(crate) struct Writer {
    replica: Replica,
    /// How long a write may wait for a leader.
    request_wait: Duration,
    /// Refuse writes on a follower instead of forwarding them (`--reject-follower-writes`).
    reject_follower_writes: bool,
    /// Refuses writes that add data when space is short (checked where they are proposed).
    space: Arc<SpaceGuard>,
}

fn no_leader_accepted(waited: Duration) -> Error {
    Error::Unavailable(format!(
        "no leader accepted the write within {waited:?}; the cluster may be partitioned or electing"
    ))
}

impl Writer {
    pub(crate) fn new(
        replica: Replica,
        request_wait: Duration,
        reject_follower_writes: bool,
        space: Arc<SpaceGuard>,
    ) -> Writer {
        Writer {
            replica,
            request_wait,
            reject_follower_writes,
            space,
        }
    }

    /// Proposes a command on this node; fails with `NotLeader` (not applied) when another
    /// node leads, and with `OutcomeUnknown` when its entry may or may not commit.
    pub(crate) async fn write_here(&self, cmd: pb::Command) -> Result<pb::CommandResponse> {
        // The member that proposes checks its own space (a follower forwards to the leader).
        if self.replica.is_leader() {
            self.space.check(&cmd)?;
        }
        match self.replica.raft.client_write(Command(cmd)).await {
            Ok(r) => Ok(r.data.0),
            // Refused before its entry was appended.
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(Error::NotLeader {
                    leader_client_addr: f.leader_node.map(|n| n.client_addr),
                })
            }
            // Appended here, then this member lost the leadership: another leader may have
            // the entry and commit it.
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
                Err(Error::OutcomeUnknown(
                    "the leader changed while the write was in its log; it may or may not commit"
                        .into(),
                ))
            }
            Err(RaftError::APIError(e)) => Err(Error::Internal(e.to_string())),
            Err(RaftError::Fatal(f)) => Err(Error::OutcomeUnknown(format!(
                "the node stopped during the write ({f}); it may or may not commit"
            ))),
        }
    }

    /// Proposes a command: here when this node leads, otherwise forwarded to the leader (or
    /// refused with `NotLeader` under `--reject-follower-writes`).
    pub(crate) async fn write(&self, cmd: pb::Command) -> Result<pb::CommandResponse> {
        let wait = self.request_wait;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let resp = match self.write_here(cmd.clone()).await {
                Err(Error::NotLeader { .. }) => match self.replica.leader() {
                    None => {
                        self.replica.wait_for_leader(wait).await?;
                        if tokio::time::Instant::now() >= deadline {
                            return Err(no_leader_accepted(wait));
                        }
                        continue;
                    }
                    Some((_, leader)) if self.reject_follower_writes => {
                        return Err(Error::NotLeader {
                            leader_client_addr: Some(leader.client_addr),
                        });
                    }
                    // Metrics still name this node, but it no longer leads (it lost its
                    // quorum): wait for the cluster to settle instead of asking itself.
                    Some((id, _)) if id == self.replica.node_id() => {
                        if tokio::time::Instant::now() >= deadline {
                            return Err(no_leader_accepted(wait));
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Some((_, leader)) => {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        if left.is_zero() {
                            return Err(no_leader_accepted(wait));
                        }
                        match self.replica.peer.forward(&leader, cmd.clone(), left).await {
                            // Not applied (the leader changed, or could not be reached): wait
                            // for the next leader and try again within the deadline.
                            Err(e @ (Error::NotLeader { .. } | Error::Unavailable(_))) => {
                                if tokio::time::Instant::now() >= deadline {
                                    return Err(match e {
                                        Error::NotLeader { .. } => no_leader_accepted(wait),
                                        e => e,
                                    });
                                }
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                            other => other?,
                        }
                    }
                },
                other => other?,
            };
            if !resp.error.is_empty() {
                return Err(match pb::CommandError::try_from(resp.error_kind) {
                    Ok(pb::CommandError::LeaseNotFound) => Error::NotFound(resp.error),
                    Ok(pb::CommandError::LeaseExists) => Error::AlreadyExists(resp.error),
                    _ => Error::InvalidArgument(resp.error),
                });
            }
            return Ok(resp);
        }
    }
}
