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
mod catch_up;
mod cluster;
mod config;
mod datadir;
mod error;
mod intent;
mod kv;
pub mod listen;
mod membership;
mod node;
mod peer;
mod read_index;
mod replica;
mod resolve;
mod retention;
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
pub use config::{Identity, Limits, NodeConfig, Peers, pod_namespace};
pub use error::{Error, Result};
/// `next()` on a [`WatchStream`], and the rest of the stream combinators.
pub use futures::StreamExt;
pub use intent::{KubernetesApi, SERVICE_ACCOUNT_DIR, ScaleIntent};
pub use kv::{Kv, WatchStream};
pub use node::{Node, restore_snapshot};
pub use ordkv_proto::ops::{EventKind, Txn};
/// The request and response types shared with the gRPC API.
pub use ordkv_store::pb;
pub use ordkv_store::{SYNC_DURATION, SYNC_WAITERS, SnapshotSummary, verify_snapshot};
pub use peer::{PEER_APPEND_DURATION, PEER_ERRORS};
pub use replica::NodeStatus;
pub use space::NO_SPACE_ALARM;
