//! A distributed mutex with fencing tokens.

use std::time::Duration;

use bytes::Bytes;

use crate::{Backend, Error, Result, Session, contender_key, create_or_get, store, wait_for_turn};

/// A named lock. Holders are ordered by when they asked; a holder whose session is lost
/// loses the lock once its lease expires.
///
/// The lock alone cannot stop a holder that was paused past its lease from acting on what
/// the lock protects: pass [`LockGuard::fencing_token`] along with every write, and have the
/// protected resource refuse tokens older than the newest it saw (with ordkv itself: a Txn
/// comparing the token, see [`LockGuard::still_held`]).
pub struct Lock<B: Backend> {
    session: Session<B>,
    prefix: Bytes,
}

/// A held lock. Dropping it does not release it (that needs a call to the store): call
/// [`LockGuard::release`], or let the session end.
#[derive(Debug, Clone)]
pub struct LockGuard {
    key: Bytes,
    revision: u64,
}

impl LockGuard {
    /// The lock's key (`{name}/{lease id}`).
    pub fn key(&self) -> &Bytes {
        &self.key
    }

    /// The fencing token: the create revision of the holder's key. Each holder's is larger
    /// than every earlier holder's.
    pub fn fencing_token(&self) -> u64 {
        self.revision
    }

    /// A compare that holds only while this guard still holds the lock, to put in a Txn.
    pub fn still_held(&self) -> ordkv_proto::v1::Compare {
        ordkv_proto::v1::Compare {
            result: ordkv_proto::v1::compare::Result::Equal as i32,
            key: self.key.clone(),
            target: Some(ordkv_proto::v1::compare::Target::CreateRevision(
                self.revision,
            )),
        }
    }
}

impl<B: Backend> Lock<B> {
    /// The lock `name` (a key prefix) for `session`.
    pub fn new(session: &Session<B>, name: impl Into<Bytes>) -> Lock<B> {
        Lock {
            session: session.clone(),
            prefix: name.into(),
        }
    }

    /// Waits until the lock is held. Cancel by dropping the future (the request to hold it
    /// stays queued until [`Lock::lock_timeout`]'s cleanup or the session ends: prefer
    /// `lock_timeout`).
    pub async fn lock(&self) -> Result<LockGuard, B::Error> {
        self.session.check()?;
        let lease = self.session.lease();
        let key = contender_key(&self.prefix, lease);
        let backend = self.session.backend();
        let (revision, _) = create_or_get(backend, &key, Bytes::new(), lease).await?;
        tokio::select! {
            waited = wait_for_turn(backend, &self.prefix, &key, revision, lease) => waited?,
            () = self.session.lost() => return Err(Error::SessionLost { lease }),
        }
        Ok(LockGuard { key, revision })
    }

    /// [`Lock::lock`] with a deadline: on timeout the request to hold it is withdrawn.
    pub async fn lock_timeout(&self, timeout: Duration) -> Result<LockGuard, B::Error> {
        match tokio::time::timeout(timeout, self.lock()).await {
            Ok(held) => held,
            Err(_) => {
                let key = contender_key(&self.prefix, self.session.lease());
                self.withdraw(&key).await?;
                Err(Error::Timeout(timeout))
            }
        }
    }

    /// Releases the lock (a no-op if it was lost meanwhile).
    pub async fn unlock(&self, guard: LockGuard) -> Result<(), B::Error> {
        self.withdraw_if(&guard.key, Some(guard.revision)).await
    }

    async fn withdraw(&self, key: &Bytes) -> Result<(), B::Error> {
        self.withdraw_if(key, None).await
    }

    async fn withdraw_if(&self, key: &Bytes, revision: Option<u64>) -> Result<(), B::Error> {
        use ordkv_proto::v1 as pb;
        let compare = revision.map(|r| pb::Compare {
            result: pb::compare::Result::Equal as i32,
            key: key.clone(),
            target: Some(pb::compare::Target::CreateRevision(r)),
        });
        self.session
            .backend()
            .txn(pb::TxnRequest {
                compare: compare.into_iter().collect(),
                success: vec![pb::RequestOp {
                    request: Some(pb::request_op::Request::Delete(
                        ordkv_proto::ops::delete_key(key.clone()),
                    )),
                }],
                failure: vec![],
            })
            .await
            .map_err(store)?;
        Ok(())
    }
}
