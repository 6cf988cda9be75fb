//! The lease operations of [`Kv`]: grants and revokes are writes; keepalives and
//! time-to-live questions are answered by the leader, which alone counts lease time
//! (`crate::lease`), so a follower forwards them.

use std::time::Duration;

use super::{Kv, KvCore, unexpected};
use crate::error::{Error, Result};
use crate::lease::ttl_to_grant;
use crate::pb;

impl Kv {
    /// Grants a lease of `req.ttl` seconds (raised to [`crate::MIN_LEASE_TTL_SECS`] when
    /// shorter, and `ttl_raised` says so). With `req.id = 0` the cluster picks the id; an id
    /// that exists fails with [`Error::AlreadyExists`].
    pub async fn lease_grant(&self, req: pb::LeaseGrantRequest) -> Result<pb::LeaseGrantResponse> {
        let (ttl, ttl_raised) = ttl_to_grant(req.ttl)?;
        let op = pb::command::Op::LeaseGrant(pb::LeaseGrantRequest { ttl, id: req.id });
        let (resp, header) = self.core()?.command(op).await?;
        match resp.result {
            Some(pb::command_response::Result::LeaseGrant(mut g)) => {
                g.header = Some(header);
                g.ttl_raised = ttl_raised;
                Ok(g)
            }
            other => Err(unexpected("lease grant", other)),
        }
    }

    /// Revokes lease `id` and deletes its keys in one revision ([`Error::NotFound`] when
    /// there is no such lease).
    pub async fn lease_revoke(&self, id: u64) -> Result<pb::LeaseRevokeResponse> {
        let op = pb::command::Op::LeaseRevoke(pb::LeaseRevokeCommand {
            id,
            ..Default::default()
        });
        let (resp, header) = self.core()?.command(op).await?;
        match resp.result {
            Some(pb::command_response::Result::LeaseRevoke(mut r)) => {
                r.header = Some(header);
                Ok(r)
            }
            other => Err(unexpected("lease revoke", other)),
        }
    }

    /// Restarts lease `id`'s countdown from its full TTL, which it returns (seconds).
    /// [`Error::NotFound`] when the lease is gone: it expired or was revoked, for good.
    pub async fn lease_keep_alive(&self, id: u64) -> Result<pb::LeaseKeepAliveResponse> {
        let answer = self
            .core()?
            .ask_leader(pb::LeaseForwardRequest {
                id,
                keep_alive: true,
                ..Default::default()
            })
            .await?;
        Ok(pb::LeaseKeepAliveResponse {
            header: answer.header,
            id,
            ttl: answer.ttl,
        })
    }

    /// Lease `req.id`'s granted TTL, the seconds it has left, and its keys when asked.
    pub async fn lease_time_to_live(
        &self,
        req: pb::LeaseTimeToLiveRequest,
    ) -> Result<pb::LeaseTimeToLiveResponse> {
        self.core()?
            .ask_leader(pb::LeaseForwardRequest {
                id: req.id,
                keys: req.keys,
                keep_alive: false,
                ..Default::default()
            })
            .await
    }

    /// Every lease, linearizably.
    pub async fn lease_leases(&self) -> Result<pb::LeaseLeasesResponse> {
        let core = self.core()?;
        core.before_read(pb::Consistency::Linearizable, 0).await?;
        let (leases, revision) = core.replica.sm.leases().map_err(super::storage)?;
        Ok(pb::LeaseLeasesResponse {
            header: Some(core.header(revision)),
            leases: leases
                .into_iter()
                .map(|(id, granted_ttl)| pb::LeaseStatus { id, granted_ttl })
                .collect(),
        })
    }
}

impl KvCore {
    /// Asks the leader (this member or another), retrying within the request deadline while
    /// the leadership moves: keepalives and questions are safe to repeat.
    async fn ask_leader(
        &self,
        mut req: pb::LeaseForwardRequest,
    ) -> Result<pb::LeaseTimeToLiveResponse> {
        req.cluster_id = self.replica.peer.cluster_id().to_string();
        let deadline = tokio::time::Instant::now() + self.request_wait;
        loop {
            let attempt = match self.replica.leader() {
                Some((id, _)) if id == self.replica.node_id() => self.leases.answer(&req).await,
                Some((_, leader)) => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    self.replica
                        .peer
                        .lease_forward(&leader, req.clone(), left)
                        .await
                }
                None => Err(Error::Unavailable("no leader is known".into())),
            };
            match attempt {
                Ok(mut answer) => {
                    answer.header = Some(self.header(self.replica.sm.revision()));
                    return Ok(answer);
                }
                Err(
                    e
                    @ (Error::NotLeader { .. } | Error::Unavailable(_) | Error::OutcomeUnknown(_)),
                ) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(match e {
                            Error::NotLeader { .. } => Error::Unavailable(format!(
                                "no leader answered for lease {} within {:?}",
                                req.id, self.request_wait
                            )),
                            e => e,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl ordkv_recipes::Backend for Kv {
    type Error = Error;

    async fn lease_grant(&self, ttl: i64) -> Result<(u64, i64)> {
        let granted = Kv::lease_grant(self, pb::LeaseGrantRequest { ttl, id: 0 }).await?;
        Ok((granted.id, granted.ttl))
    }

    async fn lease_keep_alive(&self, id: u64) -> Result<i64> {
        match Kv::lease_keep_alive(self, id).await {
            Ok(answer) => Ok(answer.ttl),
            Err(Error::NotFound(_)) => Ok(0),
            Err(e) => Err(e),
        }
    }

    async fn lease_revoke(&self, id: u64) -> Result<()> {
        match Kv::lease_revoke(self, id).await {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn txn(&self, req: pb::TxnRequest) -> Result<pb::TxnResponse> {
        Kv::txn(self, req).await
    }

    async fn range(&self, req: pb::RangeRequest) -> Result<pb::RangeResponse> {
        Kv::range(self, req).await
    }

    async fn watch(
        &self,
        req: pb::WatchRequest,
    ) -> Result<futures::stream::BoxStream<'static, Result<pb::WatchResponse>>> {
        Kv::watch(self, req).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use futures::StreamExt;

    use super::*;
    use crate::{Election, Lock, Node, NodeConfig, RecipeError, Session};

    async fn node() -> (Node, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(NodeConfig::new(dir.path().join("kv-0")))
            .await
            .unwrap();
        (node, dir)
    }

    fn leased(key: &str, lease: u64) -> pb::PutRequest {
        pb::PutRequest {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"v"),
            prev_kv: false,
            lease,
        }
    }

    /// A lease's keys live at least its TTL and are gone soon after; keepalives hold them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_outlive_their_ttl_only_while_kept_alive() {
        let (node, _dir) = node().await;
        let kv = node.kv();
        let granted_at = Instant::now();
        let short = kv
            .lease_grant(pb::LeaseGrantRequest { ttl: 1, id: 0 })
            .await
            .unwrap();
        assert_eq!(
            (short.ttl, short.ttl_raised),
            (crate::MIN_LEASE_TTL_SECS, true)
        );
        let kept = kv
            .lease_grant(pb::LeaseGrantRequest { ttl: 2, id: 0 })
            .await
            .unwrap();
        kv.put(leased("short", short.id)).await.unwrap();
        kv.put(leased("kept", kept.id)).await.unwrap();
        let ttl = Duration::from_secs(short.ttl as u64);
        let mut gone_after = None;
        while granted_at.elapsed() < ttl + Duration::from_secs(5) {
            assert_eq!(kv.lease_keep_alive(kept.id).await.unwrap().ttl, 2);
            let alive = kv.get_value("short").await.unwrap().is_some();
            let checked_at = granted_at.elapsed();
            if !alive {
                gone_after = Some(checked_at);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let gone_after = gone_after.expect("the short lease never expired");
        assert!(
            gone_after >= ttl,
            "expired after {gone_after:?}, before its TTL"
        );
        assert!(kv.get_value("kept").await.unwrap().is_some());
        let e = kv.lease_keep_alive(short.id).await.unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e}");
        let ttl = kv
            .lease_time_to_live(pb::LeaseTimeToLiveRequest {
                id: kept.id,
                keys: true,
            })
            .await
            .unwrap();
        assert_eq!((ttl.granted_ttl, ttl.keys.len()), (2, 1));
        assert!((1..=2).contains(&ttl.ttl), "{ttl:?}");
        let leases = kv.lease_leases().await.unwrap().leases;
        assert_eq!(leases.iter().map(|l| l.id).collect::<Vec<_>>(), [kept.id]);
        // Bad input: refused with a clear error, nothing granted.
        for bad in [0, -5, crate::MAX_LEASE_TTL_SECS + 1] {
            let e = kv
                .lease_grant(pb::LeaseGrantRequest { ttl: bad, id: 0 })
                .await
                .unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad}: {e}");
        }
        let e = kv
            .lease_grant(pb::LeaseGrantRequest {
                ttl: 5,
                id: kept.id,
            })
            .await
            .unwrap_err();
        assert!(matches!(e, Error::AlreadyExists(_)), "{e}");
        let e = kv.put(leased("x", short.id)).await.unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e}");
        assert_eq!(kv.lease_revoke(kept.id).await.unwrap().deleted, 1);
        node.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lock_passes_to_the_next_holder_when_a_session_ends() {
        let (node, _dir) = node().await;
        let first = Session::new(node.kv(), 10).await.unwrap();
        let second = Session::new(node.kv(), 10).await.unwrap();
        let held = Lock::new(&first, "locks/a").lock().await.unwrap();
        let waiting = Lock::new(&second, "locks/a");
        let e = waiting
            .lock_timeout(Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(e, RecipeError::Timeout(_)), "{e}");
        let next = tokio::spawn(async move { waiting.lock().await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!next.is_finished(), "two holders at once");
        first.close().await.unwrap();
        let taken = tokio::time::timeout(Duration::from_secs(5), next)
            .await
            .expect("the lock was not handed over")
            .unwrap()
            .unwrap();
        assert!(taken.fencing_token() > held.fencing_token());
        node.shutdown().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_election_has_one_leader_and_observers_see_each_change() {
        let (node, _dir) = node().await;
        let election = Election::new(node.kv(), "elect/x");
        let mut observed = election.observe();
        assert_eq!(observed.next().await.unwrap(), None);
        let a = Session::new(node.kv(), 10).await.unwrap();
        let b = Session::new(node.kv(), 10).await.unwrap();
        let lead_a = election.campaign(&a, "a").await.unwrap();
        let value = |kv: Option<pb::KeyValue>| kv.map(|kv| kv.value);
        assert_eq!(
            value(observed.next().await.unwrap()),
            Some(Bytes::from("a"))
        );
        let other = Election::new(node.kv(), "elect/x");
        let campaign_b = tokio::spawn(async move { other.campaign(&b, "b").await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!campaign_b.is_finished(), "two leaders at once");
        election.proclaim(&lead_a, "a2").await.unwrap();
        assert_eq!(
            value(observed.next().await.unwrap()),
            Some(Bytes::from("a2"))
        );
        election.resign(lead_a.clone()).await.unwrap();
        let lead_b = campaign_b.await.unwrap().unwrap();
        assert!(lead_b.revision() > lead_a.revision());
        assert_eq!(
            value(observed.next().await.unwrap()),
            Some(Bytes::from("b"))
        );
        let e = election.proclaim(&lead_a, "stale").await.unwrap_err();
        assert!(matches!(e, RecipeError::NotLeader), "{e}");
        node.shutdown().await.unwrap();
    }
}
