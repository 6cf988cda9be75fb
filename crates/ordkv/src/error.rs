//! The errors of the embedded node, told apart by what a caller should do about them.

/// What went wrong with a request or with the node. `ordkv-server` maps each case to a gRPC
/// status; embedded users match on it directly.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request is malformed or over a limit; nothing was changed. Fix the request.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// What the request names does not exist (a lease that expired, was revoked or never
    /// existed). Nothing was changed.
    #[error("not found: {0}")]
    NotFound(String),

    /// What the request would create exists already (a lease id). Nothing was changed.
    #[error("already exists: {0}")]
    AlreadyExists(String),

    /// A watch or read asked for history that compaction already discarded.
    #[error(
        "revision {requested} is compacted (the oldest revision still available is {oldest}); \
         restart the watch from revision {oldest} or later"
    )]
    Compacted {
        /// The revision that was asked for.
        requested: u64,
        /// The oldest revision still in history.
        oldest: u64,
    },

    /// This member is not the leader and forwarding is disabled (`--reject-follower-writes`).
    #[error("read-only replica; leader is {}", leader_client_addr.as_deref().unwrap_or("unknown"))]
    NotLeader {
        /// The leader's client address, when known.
        leader_client_addr: Option<String>,
    },

    /// The node cannot serve right now (no leader, shutting down); retry later or elsewhere.
    /// A write that fails this way was not proposed and never will be: it is safe to retry.
    #[error("unavailable: {0}")]
    Unavailable(String),

    /// A write was proposed but its outcome is unknown: it may have committed, or may still
    /// commit through another leader (the leader changed under it, or did not answer in
    /// time). Read before retrying a write that is not idempotent (a compare-and-swap, a put
    /// whose revision matters).
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),

    /// A write that would add data was refused, not applied: the store is over its quota or
    /// its disk is nearly full. Deletes and compactions still work; the message says what
    /// to do.
    #[error("no space: {0}")]
    NoSpace(String),

    /// The request's deadline passed (e.g. waiting for `min_revision`).
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),

    /// The data directory cannot be used as asked (wrong member, corrupt, locked by another
    /// process). Nothing was modified.
    #[error("data dir {path}: {reason}")]
    DataDir {
        /// The data directory.
        path: String,
        /// What is wrong and what to do.
        reason: String,
    },

    /// A storage failure. The node stops serving writes: storage errors are never retried.
    #[error("storage failure: {0}")]
    Storage(String),

    /// A bug or an unexpected state; the message says where.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The node stopped (openraft hit a fatal error, or it is shutting down) under a request.
pub(crate) fn node_stopped(e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("the node stopped: {e}"))
}
