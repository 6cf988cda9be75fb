//! Leader election among campaigners, each with its own session.

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::{
    Backend, Error, Result, Session, contender_key, contenders, create_or_get, store,
    wait_for_turn, watch_until,
};
use ordkv_proto::v1 as pb;

/// Pause before observing again after a store error.
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

/// An election named by a key prefix. The leader is the campaigner whose key is oldest; its
/// key carries the leader's value and lives on its session's lease.
pub struct Election<B: Backend> {
    backend: B,
    prefix: Bytes,
}

/// Being the leader: proclaim new values, resign.
#[derive(Debug, Clone)]
pub struct Leadership {
    key: Bytes,
    revision: u64,
    lease: u64,
}

impl Leadership {
    /// The leader's key.
    pub fn key(&self) -> &Bytes {
        &self.key
    }

    /// The create revision of the leader's key: a fencing token for this term of office.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    fn still_leader(&self) -> pb::Compare {
        pb::Compare {
            result: pb::compare::Result::Equal as i32,
            key: self.key.clone(),
            target: Some(pb::compare::Target::CreateRevision(self.revision)),
        }
    }
}

impl<B: Backend> Election<B> {
    /// The election `name` (a key prefix) on `backend`.
    pub fn new(backend: B, name: impl Into<Bytes>) -> Election<B> {
        Election {
            backend,
            prefix: name.into(),
        }
    }

    /// Campaigns with `value` and waits until `session` is the leader. Cancel by dropping
    /// the future, then [`Election::resign`] or close the session to withdraw.
    pub async fn campaign(
        &self,
        session: &Session<B>,
        value: impl Into<Bytes>,
    ) -> Result<Leadership, B::Error> {
        session.check()?;
        let lease = session.lease();
        let key = contender_key(&self.prefix, lease);
        let value = value.into();
        let (revision, created) = create_or_get(&self.backend, &key, value.clone(), lease).await?;
        let leadership = Leadership {
            key: key.clone(),
            revision,
            lease,
        };
        if !created {
            // Campaigning again with a key that exists: take the new value.
            self.proclaim(&leadership, value).await?;
        }
        tokio::select! {
            waited = wait_for_turn(&self.backend, &self.prefix, &key, revision, lease) => waited?,
            () = session.lost() => return Err(Error::SessionLost { lease }),
        }
        Ok(leadership)
    }

    /// Sets the leader's value; `NotLeader` if this leadership ended.
    pub async fn proclaim(
        &self,
        leadership: &Leadership,
        value: impl Into<Bytes>,
    ) -> Result<(), B::Error> {
        let resp = self
            .backend
            .txn(pb::TxnRequest {
                compare: vec![leadership.still_leader()],
                success: vec![pb::RequestOp {
                    request: Some(pb::request_op::Request::Put(pb::PutRequest {
                        key: leadership.key.clone(),
                        value: value.into(),
                        prev_kv: false,
                        lease: leadership.lease,
                    })),
                }],
                failure: vec![],
            })
            .await
            .map_err(store)?;
        if resp.succeeded {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    /// Gives up the leadership (or the candidacy); the next campaigner takes over.
    pub async fn resign(&self, leadership: Leadership) -> Result<(), B::Error> {
        self.backend
            .txn(pb::TxnRequest {
                compare: vec![leadership.still_leader()],
                success: vec![pb::RequestOp {
                    request: Some(pb::request_op::Request::Delete(
                        ordkv_proto::ops::delete_key(leadership.key.clone()),
                    )),
                }],
                failure: vec![],
            })
            .await
            .map_err(store)?;
        Ok(())
    }

    /// The current leader's key-value, if there is a leader.
    pub async fn leader(&self) -> Result<Option<pb::KeyValue>, B::Error> {
        Ok(contenders(&self.backend, &self.prefix)
            .await?
            .0
            .into_iter()
            .next())
    }

    /// Every change of leader or of its value, starting with the current one (`None`: no
    /// leader). Store errors (a member going away) are retried: the stream ends only when
    /// dropped.
    pub fn observe(&self) -> BoxStream<'static, Option<pb::KeyValue>> {
        let state = (
            self.backend.clone(),
            self.prefix.clone(),
            None::<pb::KeyValue>,
            true,
        );
        futures::stream::unfold(state, |(backend, prefix, last, first)| async move {
            loop {
                match next_leader(&backend, &prefix, &last, first).await {
                    Ok(leader) => return Some((leader.clone(), (backend, prefix, leader, false))),
                    Err(e) => {
                        tracing::debug!(error = %e, "observing an election: trying again");
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
            }
        })
        .boxed()
    }
}

/// The leader once it differs from `last` (at once when `first`).
async fn next_leader<B: Backend>(
    backend: &B,
    prefix: &Bytes,
    last: &Option<pb::KeyValue>,
    first: bool,
) -> Result<Option<pb::KeyValue>, B::Error> {
    let same = |a: &Option<pb::KeyValue>, b: &Option<pb::KeyValue>| {
        a.as_ref().map(|kv| (&kv.key, kv.mod_revision))
            == b.as_ref().map(|kv| (&kv.key, kv.mod_revision))
    };
    loop {
        let (all, revision) = contenders(backend, prefix).await?;
        let leader = all.into_iter().next();
        if first || !same(&leader, last) {
            return Ok(leader);
        }
        // Wait for any change under the prefix, then look again.
        let mut dir = prefix.to_vec();
        dir.push(b'/');
        let req = pb::WatchRequest {
            prefix: dir.into(),
            start_revision: revision + 1,
            ..Default::default()
        };
        watch_until(backend, req, |resp| !resp.events.is_empty()).await?;
    }
}
