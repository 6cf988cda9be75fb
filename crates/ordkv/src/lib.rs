//! ordkv as a library: open a replica in-process on a data dir and use it through [`Kv`],
//! the same operations and consistency levels as the gRPC API, with no network in the path.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ordkv::Error> {
//! let node = ordkv::Node::open(ordkv::NodeConfig::new("./my-data")).await?;
//! let kv = node.kv();
//! let revision = kv.put_value("greeting", "hello").await?;
//! assert_eq!(kv.get_value("greeting").await?.as_deref(), Some(&b"hello"[..]));
//! # let _ = revision;
//! node.shutdown().await?;
//! # Ok(())
//! # }
//! ```

mod autopilot;
mod backup;
mod catch_up;
mod cluster;
mod config;
mod datadir;
mod error;
mod intent;
mod kv;
mod leader_log;
mod lease;
pub mod listen;
mod membership;
mod node;
mod peer;
mod read_index;
mod recover;
mod replica;
mod resolve;
mod retention;
mod revocable;
mod space;
mod status;
#[cfg(test)]
mod testing;
pub mod tls;
mod validate;
mod writes;

/// The README's Rust snippets, compiled and run as doc-tests so that they cannot drift from
/// the API.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

pub use autopilot::REMOVED_BY_INTENT;
pub use backup::{
    BACKUP_LAST_SUCCESS, BACKUPS, BackupSchedule, backup_file_name, backup_part_name, prune_backups,
};
pub use config::{Identity, Limits, NodeConfig, Peers, pod_namespace};
pub use error::{Error, Result};
/// `next()` on a [`WatchStream`], and the rest of the stream combinators.
pub use futures::StreamExt;
pub use intent::{KubernetesApi, SERVICE_ACCOUNT_DIR, ScaleIntent};
pub use kv::{Kv, WatchStream};
/// A lease kept alive in the background (see [`ordkv_recipes::Session`]).
pub type Session = ordkv_recipes::Session<Kv>;
/// A lock with fencing tokens (see [`ordkv_recipes::Lock`]).
pub type Lock = ordkv_recipes::Lock<Kv>;
/// Leader election (see [`ordkv_recipes::Election`]).
pub type Election = ordkv_recipes::Election<Kv>;
/// Why a lock, an election or a session failed.
pub type RecipeError = ordkv_recipes::Error<Error>;
pub use leader_log::LeaderChange;
pub use lease::{
    LEASE_EXPIRIES, LEASE_KEEPALIVES, LEASE_REVOKE_DELAY, LEASES_LIVE,
    MAX_TTL_SECS as MAX_LEASE_TTL_SECS, MIN_TTL_SECS as MIN_LEASE_TTL_SECS,
};
pub use node::{Node, restore_snapshot};
pub use ordkv_proto::ops::{EventKind, Txn};
pub use ordkv_recipes::{Leadership, LockGuard};
/// The request and response types shared with the gRPC API.
pub use ordkv_store::pb;
pub use ordkv_store::{
    SYNC_DURATION, SYNC_WAITERS, SnapshotSummary, verify_snapshot, verify_snapshot_with,
};
pub use peer::{PEER_APPEND_DURATION, PEER_ERRORS};
pub use recover::{MemberProgress, OtherMember, RecoverReport, recover};
pub use replica::NodeStatus;
pub use space::NO_SPACE_ALARM;
