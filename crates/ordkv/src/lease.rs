//! Lease time. Leases and their keys are replicated state (`ordkv-store`); how long a lease
//! has left is not: only the leader counts it, on its monotonic clock, and it ends a lease by
//! proposing a revoke through the log, so every replica deletes the same keys at the same
//! revision and no wall clock is involved.
//!
//! No lease expires early:
//! - a keepalive restarts the countdown from the full TTL, and is acknowledged only after a
//!   quorum confirmed this member still leads (a read index round that began after the
//!   countdown restarted). A leader elected later than that confirmation starts counting
//!   later still.
//! - a new leader starts every lease's countdown from its full TTL, once it has applied every
//!   entry committed before its term (so it knows every lease). A lease whose holder is gone
//!   thus lives up to one TTL more per leader change; there is no checkpoint of remaining time
//!   (etcd's "lease checkpoint"), which would bound that for leases of hours across repeated
//!   elections at the price of a log entry per lease now and then.
//! - an expiry decided by a leader that was deposed meanwhile (paused, cut off) is a proposal
//!   in its old term, which is never committed.
//! - a lease whose expiry is being proposed answers keepalives with TTL 0 (gone), so no
//!   keepalive is acknowledged for a lease that is about to be revoked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver;
use ordkv_store::LeaseChange;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::pb;
use crate::replica::Replica;
use crate::writes::Writer;

/// The shortest TTL granted, in seconds: twice the longest election timeout (1 s), so that a
/// lease outlives the election that a leader's crash costs (etcd uses 1.5 times).
pub const MIN_TTL_SECS: i64 = 2;
/// The longest TTL granted, in seconds (etcd's limit).
pub const MAX_TTL_SECS: i64 = 9_000_000_000;

/// Live leases in this member's state.
pub const LEASES_LIVE: &str = "ordkv_leases_live";
/// Leases the leader ended because their TTL ran out.
pub const LEASE_EXPIRIES: &str = "ordkv_lease_expiries_total";
/// Keepalives the leader acknowledged.
pub const LEASE_KEEPALIVES: &str = "ordkv_lease_keepalives_total";
/// From a lease's deadline to its revoke being applied on the leader.
pub const LEASE_REVOKE_DELAY: &str = "ordkv_lease_expiry_delay_seconds";

/// How often the leader looks for leases past their deadline.
const TICK: Duration = Duration::from_millis(100);
/// Leases one expiry entry revokes at most.
const REVOKE_BATCH: usize = 1000;
/// Expiry entries proposed at once.
const REVOKES_IN_FLIGHT: usize = 4;
/// A gap between ticks longer than this means the task did not run (a paused process).
const STALL: Duration = Duration::from_secs(1);

/// The leader's countdowns, and the task that ends expired leases.
pub(crate) struct LeaseClock {
    replica: Replica,
    writer: Writer,
    state: Mutex<Countdowns>,
    /// The term whose countdowns are loaded; 0 while this member does not lead.
    loaded: watch::Sender<u64>,
    /// How long a caller waits for a new leader's countdowns.
    request_wait: Duration,
}

/// Leases past their deadline, with their deadlines.
type Due = Vec<(u64, Instant)>;

#[derive(Default)]
struct Countdowns {
    term: u64,
    leases: HashMap<u64, Countdown>,
}

struct Countdown {
    deadline: Instant,
    /// A revoke for it is proposed.
    expiring: bool,
}

fn full_ttl(ttl: i64) -> Duration {
    Duration::from_secs(ttl.clamp(0, MAX_TTL_SECS) as u64)
}

fn deadline_after(ttl: i64) -> Instant {
    let now = Instant::now();
    // Should a TTL of centuries not fit an Instant, a century is as good.
    now.checked_add(full_ttl(ttl))
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

/// Seconds left before `deadline`, rounded up.
fn seconds_left(deadline: Instant) -> i64 {
    let left = deadline.saturating_duration_since(Instant::now());
    left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0)
}

impl LeaseClock {
    pub(crate) fn new(replica: Replica, writer: Writer, request_wait: Duration) -> LeaseClock {
        LeaseClock {
            replica,
            writer,
            state: Mutex::default(),
            loaded: watch::channel(0).0,
            request_wait,
        }
    }

    fn countdowns(&self) -> std::sync::MutexGuard<'_, Countdowns> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The term this member leads with its countdowns loaded, waiting for them a moment
    /// after an election; `NotLeader` when another member leads.
    async fn leading(&self) -> Result<u64> {
        let mut loaded = self.loaded.subscribe();
        let deadline = Instant::now() + self.request_wait;
        loop {
            let m = self.replica.metrics();
            if m.state != openraft::ServerState::Leader {
                return Err(Error::NotLeader {
                    leader_client_addr: None,
                });
            }
            if *loaded.borrow_and_update() == m.current_term {
                return Ok(m.current_term);
            }
            if tokio::time::timeout_at(deadline, loaded.changed())
                .await
                .is_err()
            {
                return Err(Error::Unavailable(
                    "this member was just elected and is still loading the leases".into(),
                ));
            }
        }
    }

    /// Confirms this member still led in `term` after the caller's change to a countdown.
    async fn confirm(&self, term: u64) -> Result<()> {
        let not_leader = || Error::NotLeader {
            leader_client_addr: None,
        };
        self.replica
            .raft
            .get_read_linearizer(ReadPolicy::ReadIndex)
            .await
            .map(drop)
            .map_err(|_| not_leader())?;
        if self.replica.metrics().current_term != term {
            return Err(not_leader());
        }
        Ok(())
    }

    /// Answers a keepalive or a time-to-live question on the leader: `NotFound` when the
    /// lease does not exist (or its expiry is being proposed).
    pub(crate) async fn answer(
        &self,
        req: &pb::LeaseForwardRequest,
    ) -> Result<pb::LeaseTimeToLiveResponse> {
        let term = self.leading().await?;
        let (granted, keys, _) = self
            .replica
            .sm
            .lease(req.id, req.keys)
            .map_err(|e| Error::Storage(e.to_string()))?;
        let not_found = || Error::NotFound(format!("lease {} not found", req.id));
        let Some(granted) = granted else {
            return Err(not_found());
        };
        let ttl = {
            let mut c = self.countdowns();
            if c.term != term {
                return Err(Error::NotLeader {
                    leader_client_addr: None,
                });
            }
            // Applied a moment ago and not yet seen by the clock's task: count from now.
            let countdown = c
                .leases
                .entry(req.id)
                .or_insert_with(|| new_countdown(granted));
            if countdown.expiring {
                return Err(not_found());
            }
            if req.keep_alive {
                countdown.deadline = deadline_after(granted);
                granted
            } else {
                seconds_left(countdown.deadline)
            }
        };
        if req.keep_alive {
            self.confirm(term).await?;
            metrics::counter!(LEASE_KEEPALIVES).increment(1);
        }
        Ok(pb::LeaseTimeToLiveResponse {
            header: None,
            id: req.id,
            ttl,
            granted_ttl: granted,
            keys,
        })
    }

    /// Counts lease time while this member leads, until `stop`.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut metrics = self.replica.raft.metrics();
        loop {
            metrics::gauge!(LEASES_LIVE).set(self.replica.sm.lease_count() as f64);
            let m = metrics.borrow_watched().clone();
            if m.state == openraft::ServerState::Leader {
                let term = m.current_term;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    () = self.lead(term) => {}
                }
                *self.countdowns() = Countdowns::default();
                self.loaded.send_replace(0);
                // Still leading in this term means the leases could not be read: not in a
                // tight loop.
                let m = self.replica.metrics();
                if m.state == openraft::ServerState::Leader && m.current_term == term {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Leads lease time in `term`; returns once this member no longer leads in it.
    async fn lead(&self, term: u64) {
        let still_leads = |m: &openraft::RaftMetrics<ordkv_store::TypeConfig>| {
            m.state == openraft::ServerState::Leader && m.current_term == term
        };
        // Everything committed before this term must be applied first: the leases it granted.
        loop {
            let raft = &self.replica.raft;
            let applied = match raft.get_read_linearizer(ReadPolicy::ReadIndex).await {
                Ok(l) => l.try_await_ready(raft, None).await.is_ok_and(|r| r.is_ok()),
                Err(_) => false,
            };
            if applied {
                break;
            }
            if !still_leads(&self.replica.metrics()) {
                return;
            }
            tokio::time::sleep(TICK).await;
        }
        let ordkv_store::LeaseSubscription {
            mut changes,
            leases,
        } = match self.replica.sm.subscribe_leases() {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the leases; lease expiry stops");
                return;
            }
        };
        {
            let mut c = self.countdowns();
            c.term = term;
            c.leases = leases
                .into_iter()
                .map(|(id, ttl)| (id, new_countdown(ttl)))
                .collect();
            tracing::info!(
                term,
                leases = c.leases.len(),
                "counting lease time as the leader"
            );
        }
        self.loaded.send_replace(term);
        let mut metrics = self.replica.raft.metrics();
        let mut revokes: JoinSet<(Due, Result<pb::CommandResponse>)> = JoinSet::new();
        let mut tick = tokio::time::interval(TICK);
        let mut last_tick = Instant::now();
        loop {
            tokio::select! {
                changed = metrics.changed() => {
                    if changed.is_err() || !still_leads(&metrics.borrow_watched()) {
                        return;
                    }
                }
                change = changes.recv() => match change {
                    Ok(Some(batch)) => self.note(&batch),
                    Ok(None) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        match self.replica.sm.subscribe_leases() {
                            Ok(again) => {
                                changes = again.changes;
                                self.resync(again.leases);
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "cannot read the leases; lease expiry stops");
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                Some(done) = revokes.join_next() => {
                    if let Ok((batch, result)) = done {
                        self.revoked(batch, result);
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    if now - last_tick > STALL {
                        // If another member was elected meanwhile, the expiries proposed now
                        // are in a stale term and never commit.
                        tracing::warn!(stalled = ?(now - last_tick), "the lease clock did not run for a while (a paused or starved process)");
                    }
                    last_tick = now;
                    metrics::gauge!(LEASES_LIVE).set(self.replica.sm.lease_count() as f64);
                    while revokes.len() < REVOKES_IN_FLIGHT {
                        let batch = self.due(REVOKE_BATCH);
                        if batch.is_empty() {
                            break;
                        }
                        let writer = self.writer.clone();
                        revokes.spawn(async move {
                            let cmd = pb::Command {
                                op: Some(pb::command::Op::LeaseRevoke(pb::LeaseRevokeCommand {
                                    id: 0,
                                    expired: true,
                                    expired_ids: batch.iter().map(|(id, _)| *id).collect(),
                                })),
                            };
                            // Here only: an expiry is this leader's decision, never forwarded.
                            let result = writer.write_here(cmd).await;
                            (batch, result)
                        });
                    }
                }
            }
        }
    }

    /// Up to `room` leases past their deadline, now marked as expiring.
    fn due(&self, room: usize) -> Due {
        let now = Instant::now();
        let mut c = self.countdowns();
        c.leases
            .iter_mut()
            .filter(|(_, countdown)| !countdown.expiring && countdown.deadline <= now)
            .take(room)
            .map(|(id, countdown)| {
                countdown.expiring = true;
                (*id, countdown.deadline)
            })
            .collect()
    }

    fn revoked(&self, batch: Due, result: Result<pb::CommandResponse>) {
        let mut c = self.countdowns();
        match result {
            Ok(_) => {
                metrics::counter!(LEASE_EXPIRIES).increment(batch.len() as u64);
                let delay = metrics::histogram!(LEASE_REVOKE_DELAY);
                for (id, deadline) in &batch {
                    delay.record(deadline.elapsed().as_secs_f64());
                    // Ended now, or before (revoked meanwhile: the entry skipped it).
                    c.leases.remove(id);
                }
                tracing::debug!(leases = batch.len(), "leases expired");
            }
            Err(e) => {
                // Try again at the next tick, if this member still leads then.
                for (id, _) in &batch {
                    if let Some(countdown) = c.leases.get_mut(id) {
                        countdown.expiring = false;
                    }
                }
                if !matches!(e, Error::NotLeader { .. }) {
                    tracing::warn!(leases = batch.len(), error = %e, "proposing leases' expiry failed; trying again");
                }
            }
        }
    }

    fn note(&self, changes: &[LeaseChange]) {
        let mut c = self.countdowns();
        for change in changes {
            match *change {
                LeaseChange::Granted { id, ttl } => {
                    c.leases.entry(id).or_insert_with(|| new_countdown(ttl));
                }
                LeaseChange::Ended { id } => {
                    c.leases.remove(&id);
                }
            }
        }
    }

    /// After a snapshot install or a lag: keeps the countdowns of leases that still exist.
    fn resync(&self, leases: Vec<(u64, i64)>) {
        let mut c = self.countdowns();
        let mut old = std::mem::take(&mut c.leases);
        c.leases = leases
            .into_iter()
            .map(|(id, ttl)| (id, old.remove(&id).unwrap_or_else(|| new_countdown(ttl))))
            .collect();
    }
}

fn new_countdown(ttl: i64) -> Countdown {
    Countdown {
        deadline: deadline_after(ttl),
        expiring: false,
    }
}

/// The TTL to grant for `asked`, and whether it was raised to the minimum.
pub(crate) fn ttl_to_grant(asked: i64) -> Result<(i64, bool)> {
    if asked <= 0 {
        return Err(Error::InvalidArgument(format!(
            "lease TTL {asked} is not positive; give a TTL in seconds (at least {MIN_TTL_SECS})"
        )));
    }
    if asked > MAX_TTL_SECS {
        return Err(Error::InvalidArgument(format!(
            "lease TTL {asked} is over the maximum of {MAX_TTL_SECS} seconds"
        )));
    }
    Ok((asked.max(MIN_TTL_SECS), asked < MIN_TTL_SECS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ttls_are_raised_and_bad_ones_refused() {
        assert_eq!(ttl_to_grant(1).unwrap(), (MIN_TTL_SECS, true));
        assert_eq!(ttl_to_grant(MIN_TTL_SECS).unwrap(), (MIN_TTL_SECS, false));
        assert_eq!(ttl_to_grant(60).unwrap(), (60, false));
        assert_eq!(ttl_to_grant(MAX_TTL_SECS).unwrap(), (MAX_TTL_SECS, false));
        for bad in [0, -1, i64::MIN, MAX_TTL_SECS + 1, i64::MAX] {
            let e = ttl_to_grant(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn seconds_left_round_up() {
        let now = Instant::now();
        assert_eq!(seconds_left(now + Duration::from_millis(1500)), 2);
        assert_eq!(seconds_left(now - Duration::from_secs(1)), 0);
        // A TTL too long for an Instant still gives a deadline.
        assert!(deadline_after(MAX_TTL_SECS) > now);
    }
}
