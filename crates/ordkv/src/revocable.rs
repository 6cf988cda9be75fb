//! A part of a node that every handle shares and that `Node::shutdown` takes back from all of
//! them at once: the handles an application keeps after the shutdown (`Node`, `Kv` clones, a
//! session's keepalive loop) then refuse requests and no longer keep the store open.

use std::sync::{Arc, RwLock};

use crate::error::{Error, Result};

pub(crate) struct Revocable<T> {
    /// The member's name, for the refusal.
    member: String,
    slot: RwLock<Option<Arc<T>>>,
}

impl<T> Revocable<T> {
    pub(crate) fn new(member: &str, value: T) -> Revocable<T> {
        Revocable {
            member: member.to_string(),
            slot: RwLock::new(Some(Arc::new(value))),
        }
    }

    /// The part, for one request; refused once revoked.
    pub(crate) fn get(&self) -> Result<Arc<T>> {
        self.slot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| shut_down(&self.member))
    }

    /// Takes the part back; requests in flight keep theirs until they end.
    pub(crate) fn revoke(&self) {
        self.slot.write().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// What a request through a shut-down member's handle gets.
fn shut_down(member: &str) -> Error {
    Error::Unavailable(format!(
        "member {member} was shut down; send requests to a running member"
    ))
}
