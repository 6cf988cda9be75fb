//! A lease kept alive in the background.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::{Backend, Error, Result, store};

/// A lease that a background task keeps alive (every third of its TTL) until the session is
/// closed or dropped. Locks and leaderships taken with a session end with its lease.
///
/// The session counts itself lost when the lease is gone (a keepalive answered TTL 0), or
/// when no keepalive succeeded for a whole TTL since the last one that did was *sent*: past
/// that point the cluster may have expired the lease, so whatever the session held must be
/// treated as lost.
pub struct Session<B: Backend> {
    backend: B,
    lease: u64,
    ttl: i64,
    lost: watch::Receiver<bool>,
    keeper: Arc<tokio::task::JoinHandle<()>>,
}

impl<B: Backend> Clone for Session<B> {
    fn clone(&self) -> Self {
        Session {
            backend: self.backend.clone(),
            lease: self.lease,
            ttl: self.ttl,
            lost: self.lost.clone(),
            keeper: self.keeper.clone(),
        }
    }
}

impl<B: Backend> Drop for Session<B> {
    fn drop(&mut self) {
        // The last handle stops the keepalives; the lease then expires after its TTL.
        if Arc::strong_count(&self.keeper) == 1 {
            self.keeper.abort();
        }
    }
}

impl<B: Backend> Session<B> {
    /// Grants a lease of `ttl` seconds and starts keeping it alive. Must run inside a Tokio
    /// runtime.
    pub async fn new(backend: B, ttl: i64) -> Result<Session<B>, B::Error> {
        let (lease, ttl) = backend.lease_grant(ttl).await.map_err(store)?;
        Ok(Session::keep(backend, lease, ttl))
    }

    /// Keeps an existing lease of `ttl` seconds alive.
    pub fn keep(backend: B, lease: u64, ttl: i64) -> Session<B> {
        let (tx, lost) = watch::channel(false);
        let keeper = tokio::spawn(keep_alive(backend.clone(), lease, ttl, tx));
        Session {
            backend,
            lease,
            ttl,
            lost,
            keeper: Arc::new(keeper),
        }
    }

    /// The lease id.
    pub fn lease(&self) -> u64 {
        self.lease
    }

    /// The lease's TTL, in seconds.
    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    /// The store this session uses.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Whether the session is lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves once the session is lost (never, while it is kept alive).
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        let _ = lost.wait_for(|lost| *lost).await;
    }

    /// `SessionLost` if the session is lost.
    pub(crate) fn check(&self) -> Result<(), B::Error> {
        if self.is_lost() {
            return Err(Error::SessionLost { lease: self.lease });
        }
        Ok(())
    }

    /// Stops the keepalives and revokes the lease: everything held with it is released now.
    pub async fn close(self) -> Result<(), B::Error> {
        self.keeper.abort();
        self.backend.lease_revoke(self.lease).await.map_err(store)
    }
}

async fn keep_alive<B: Backend>(backend: B, lease: u64, ttl: i64, lost: watch::Sender<bool>) {
    let ttl = Duration::from_secs(ttl.max(1) as u64);
    let every = ttl / 3;
    // The lease is safe until a TTL after the last keepalive that succeeded was sent.
    let mut safe_until = Instant::now() + ttl;
    loop {
        let sent = Instant::now();
        match tokio::time::timeout_at(safe_until, backend.lease_keep_alive(lease)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(granted)) => {
                safe_until = sent + Duration::from_secs(granted.max(1) as u64);
                tokio::time::sleep(every).await;
            }
            Ok(Err(e)) => {
                tracing::debug!(lease, error = %e, "lease keepalive failed; trying again");
                tokio::time::sleep(Duration::from_millis(200).min(every)).await;
            }
            Err(_) => {}
        }
        if Instant::now() >= safe_until {
            break;
        }
    }
    tracing::warn!(
        lease,
        "session lost: its lease is gone or could not be kept alive"
    );
    lost.send_replace(true);
}
