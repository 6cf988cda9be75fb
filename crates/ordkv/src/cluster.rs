//! Cluster lifecycle: how a member finds its cluster at start-up, how the leader admits and
//! removes members, and the leader's autopilot.
//!
//! Start-up is a small state machine over (local data) × (what peers answer):
//!
//! | local data                  | peers answer                           | decision            |
//! |-----------------------------|----------------------------------------|---------------------|
//! | Raft state present          | (not asked)                            | restart as is       |
//! | empty                       | some member reports a cluster          | join that cluster   |
//! | empty, ordinal 0            | every resolvable peer answered, none in a cluster | bootstrap |
//! | empty                       | otherwise                              | wait and ask again  |
//! | belongs to cluster A        | a member reports cluster B             | stop: wrong volume  |
//!
//! A joining member asks the leader to admit it: the leader removes any older incarnation
//! of the same name (a wiped volume comes back under a new node id), adds the member as a
//! learner, waits until it has caught up, and promotes it while voters < `max_voters`.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ChangeMembers;
use openraft::error::{ClientWriteError, RaftError};
use ordkv_store::MemberNode;

use crate::config::{Identity, Peers};
use crate::error::{Error, Result};
use crate::intent::ScaleIntent;
use crate::node::{Inner, fatal, initialize_alone};
use crate::pb;
use crate::peer::server::PeerService;
use crate::peer::{decode, from_status};

/// How long a member waits for a peer to answer a cluster-info or read-index call.
const PEER_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a join may take: the leader waits for the learner to catch up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the lifecycle loop looks around.
const TICK: Duration = Duration::from_millis(500);

/// This member as the cluster records it.
pub(crate) fn member_node(inner: &Inner) -> MemberNode {
    MemberNode {
        name: inner.identity.name.clone(),
        peer_addr: inner.config.advertise_peer_addr.clone(),
        client_addr: inner.config.advertise_client_addr.clone(),
    }
}

/// Starts the peer gRPC service on `addr` until the node stops.
pub(crate) async fn serve_peers(inner: Arc<Inner>, addr: SocketAddr) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::InvalidArgument(format!(
            "cannot listen on {addr} for peers: {e}; choose another address with --peer-addr"
        ))
    })?;
    let stop = inner.stop.clone();
    let service = pb::peer_server::PeerServer::new(PeerService {
        inner: inner.clone(),
    })
    .max_decoding_message_size(crate::peer::MAX_MESSAGE_BYTES)
    .max_encoding_message_size(crate::peer::MAX_MESSAGE_BYTES);
    // `Server::tcp_nodelay` only reaches listeners tonic binds itself; without TCP_NODELAY
    // on the accepted sockets, Nagle held append replies for the leader's delayed ACK
    // (~40 ms stalls, once every few hundred writes).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "peer server failed");
        }
    });
    tracing::info!(%addr, "serving peers");
    Ok(())
}

/// A member with no peers: bootstrap a cluster of one on first start, then wait to lead.
pub(crate) async fn bootstrap_alone(inner: &Inner) -> Result<()> {
    if !inner
        .raft
        .is_initialized()
        .await
        .map_err(|e| Error::Storage(e.to_string()))?
    {
        initialize_alone(inner).await?;
    } else {
        // A restarted member does not lead again without an election (see `raft_config`);
        // alone, it need not wait out an election timeout for one.
        inner.raft.trigger().elect(true).await.map_err(fatal)?;
    }
    inner
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.current_leader.is_some(), "a leader is elected")
        .await
        .map_err(|e| Error::Unavailable(format!("no leader after start: {e}")))?;
    Ok(())
}

/// What one peer said when asked for its cluster.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    /// Its name does not resolve (the pod does not exist).
    Unresolved,
    /// It resolves but did not answer.
    Silent,
    /// It answered.
    Info(pb::ClusterInfoReply),
}

/// The start-up decision for a member without Raft state.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    Bootstrap,
    Join { cluster_id: String },
    Wait(String),
    WrongCluster(String),
}

/// The pure start-up rule: see the module documentation.
pub(crate) fn decide(local_cluster: &str, ordinal: u32, answers: &[(String, Answer)]) -> Decision {
    let clusters: BTreeSet<&str> = answers
        .iter()
        .filter_map(|(_, a)| match a {
            Answer::Info(i) if !i.cluster_id.is_empty() => Some(i.cluster_id.as_str()),
            _ => None,
        })
        .collect();
    if !local_cluster.is_empty() && !clusters.is_empty() && !clusters.contains(local_cluster) {
        return Decision::WrongCluster(format!(
            "this data dir belongs to cluster {local_cluster}, but the peers are in {clusters:?}; \
             point --data-dir at this member's own volume, or wipe it so the member rejoins"
        ));
    }
    if let Some(c) = clusters.iter().next() {
        if clusters.len() > 1 {
            return Decision::Wait(format!("peers disagree on the cluster: {clusters:?}"));
        }
        return Decision::Join {
            cluster_id: c.to_string(),
        };
    }
    let silent: Vec<&str> = answers
        .iter()
        .filter(|(_, a)| matches!(a, Answer::Silent))
        .map(|(n, _)| n.as_str())
        .collect();
    if ordinal != 0 {
        return Decision::Wait("waiting for ordinal 0 to bootstrap the cluster".into());
    }
    if !silent.is_empty() {
        return Decision::Wait(format!("waiting for {} to answer", silent.join(", ")));
    }
    Decision::Bootstrap
}

/// The peers to ask, by name and peer address.
async fn candidates(inner: &Inner) -> Vec<(String, String)> {
    let me = &inner.identity;
    match &inner.config.peers {
        Peers::None => vec![],
        Peers::Static(map) => map
            .iter()
            .filter(|(n, _)| **n != me.name)
            .map(|(n, a)| (n.clone(), a.clone()))
            .collect(),
        dns @ Peers::Dns { .. } => {
            // Ordinals below ours, and above ours until two in a row do not resolve.
            let mut out = Vec::new();
            let mut misses = 0;
            for i in 0..64u32 {
                if i == me.ordinal {
                    continue;
                }
                let Some((name, addr)) = dns.address_of(me, i) else {
                    break;
                };
                if i > me.ordinal {
                    if resolves(&addr).await {
                        misses = 0;
                    } else {
                        misses += 1;
                        if misses == 2 {
                            break;
                        }
                        continue;
                    }
                }
                out.push((name, addr));
            }
            out
        }
    }
}

pub(crate) async fn resolves(addr: &str) -> bool {
    match crate::resolve::split_host_port(addr) {
        Ok((host, _)) => crate::resolve::lookup(host)
            .await
            .is_ok_and(|a| !a.is_empty()),
        Err(_) => false,
    }
}

async fn ask(inner: &Inner, addr: &str) -> Answer {
    if !resolves(addr).await {
        return Answer::Unresolved;
    }
    let Ok(mut client) = inner.peer.client(addr) else {
        return Answer::Unresolved;
    };
    let req = pb::ClusterInfoRequest {
        from_name: inner.identity.name.clone(),
    };
    match tokio::time::timeout(PEER_CALL_TIMEOUT, client.cluster_info(req)).await {
        Ok(Ok(r)) => Answer::Info(r.into_inner()),
        _ => Answer::Silent,
    }
}

async fn ask_all(inner: &Inner) -> Vec<(String, String, Answer)> {
    let mut out = Vec::new();
    for (name, addr) in candidates(inner).await {
        if inner.peer.is_blocked(&name) {
            out.push((name, addr, Answer::Silent));
            continue;
        }
        let a = ask(inner, &addr).await;
        out.push((name, addr, a));
    }
    out
}

/// The lifecycle of a member with peers: find the cluster, then keep the membership tidy.
pub(crate) async fn run(inner: Arc<Inner>) {
    let mut last_wait_log = Instant::now() - Duration::from_secs(60);
    let mut dead_since: HashMap<u64, Instant> = HashMap::new();
    loop {
        if inner.stop.is_cancelled() {
            return;
        }
        if let Err(e) = tick(&inner, &mut last_wait_log, &mut dead_since).await {
            match e {
                Error::DataDir { .. } => {
                    let msg = e.to_string();
                    tracing::error!(error = %msg, "stopping");
                    let _ = inner.fatal.set(msg);
                    return;
                }
                e => tracing::warn!(error = %e, "cluster lifecycle"),
            }
        }
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
            _ = inner.leave_requests.wake.notified() => {}
        }
    }
}

async fn tick(
    inner: &Arc<Inner>,
    last_wait_log: &mut Instant,
    dead_since: &mut HashMap<u64, Instant>,
) -> Result<()> {
    let initialized = inner
        .raft
        .is_initialized()
        .await
        .map_err(|e| Error::Storage(e.to_string()))?;
    if !initialized {
        let answers = ask_all(inner).await;
        let named: Vec<(String, Answer)> = answers
            .iter()
            .map(|(n, _, a)| (n.clone(), a.clone()))
            .collect();
        match decide(inner.peer.cluster_id(), inner.identity.ordinal, &named) {
            Decision::Bootstrap => initialize_alone(inner).await?,
            Decision::Join { cluster_id } => {
                adopt_cluster(inner, &cluster_id)?;
                join(inner, &answers).await?;
            }
            Decision::Wait(why) => {
                if last_wait_log.elapsed() > Duration::from_secs(10) {
                    tracing::info!(reason = %why, "not in a cluster yet");
                    *last_wait_log = Instant::now();
                }
            }
            Decision::WrongCluster(why) => {
                return Err(Error::DataDir {
                    path: inner.config.data_dir.display().to_string(),
                    reason: why,
                });
            }
        }
        return Ok(());
    }
    let status = inner.status();
    if !status.is_leader && !inner.peer.removed.load(std::sync::atomic::Ordering::SeqCst) {
        check_still_member(inner).await;
    }
    if inner.peer.removed.load(std::sync::atomic::Ordering::SeqCst) {
        if inner.intent.current().removes(inner.identity.ordinal) {
            // Scaled away: the StatefulSet is about to delete this pod.
            return Ok(());
        }
        // Removed while away (scale-down, then back on the retained volume): ask to be
        // admitted again, as a learner first.
        let answers = ask_all(inner).await;
        join(inner, &answers).await?;
        inner
            .peer
            .removed
            .store(false, std::sync::atomic::Ordering::SeqCst);
        return Ok(());
    }
    if status.is_leader {
        crate::autopilot::step(inner, dead_since).await?;
    }
    Ok(())
}

/// A member that was removed while it was away learns it from the leader's membership: a
/// voter would also learn it from refused votes, but a learner never asks for votes.
async fn check_still_member(inner: &Inner) {
    let answers: Vec<Answer> = match inner.leader() {
        Some((id, node)) if id != inner.node_id => vec![ask(inner, &node.peer_addr).await],
        _ => ask_all(inner)
            .await
            .into_iter()
            .map(|(_, _, a)| a)
            .collect(),
    };
    for a in answers {
        if let Answer::Info(i) = a
            && i.cluster_id == inner.peer.cluster_id()
            && i.leader_id != 0
            && i.leader_id == i.node_id
            && !i.members.iter().any(|m| m.node_id == inner.node_id)
        {
            inner.peer.mark_removed();
            return;
        }
    }
}

fn adopt_cluster(inner: &Inner, cluster_id: &str) -> Result<()> {
    if inner.peer.cluster_id() != cluster_id {
        inner.data_dir.set_cluster_id(cluster_id)?;
        let _ = inner.peer.cluster_id.set(cluster_id.to_string());
        tracing::info!(cluster_id, "joining an existing cluster");
    }
    Ok(())
}

/// Asks the leader (found through the peers' answers) to admit this member.
async fn join(inner: &Inner, answers: &[(String, String, Answer)]) -> Result<()> {
    let mut targets: Vec<String> = answers
        .iter()
        .filter_map(|(_, _, a)| match a {
            Answer::Info(i) if !i.leader_peer_addr.is_empty() => Some(i.leader_peer_addr.clone()),
            _ => None,
        })
        .collect();
    targets.dedup();
    let Some(leader) = targets.first() else {
        return Err(Error::Unavailable("no peer knows a leader yet".into()));
    };
    let mut client = inner.peer.client(leader).map_err(Error::Unavailable)?;
    let req = pb::JoinRequest {
        cluster_id: inner.peer.cluster_id().to_string(),
        member: Some(peer_member(inner.node_id, &member_node(inner), false)),
    };
    tracing::info!(%leader, node_id = inner.node_id, "asking the leader to admit this member");
    let reply = tokio::time::timeout(JOIN_TIMEOUT, client.join(req))
        .await
        .map_err(|_| Error::Unavailable(format!("join through {leader} timed out")))?
        .map_err(from_status)?;
    tracing::info!(outcome = %reply.into_inner().outcome, "admitted");
    Ok(())
}

fn peer_member(node_id: u64, n: &MemberNode, voter: bool) -> pb::PeerMember {
    pb::PeerMember {
        node_id,
        name: n.name.clone(),
        peer_addr: n.peer_addr.clone(),
        client_addr: n.client_addr.clone(),
        voter,
    }
}

/// What this member knows of its cluster.
pub(crate) fn cluster_info(inner: &Inner) -> pb::ClusterInfoReply {
    let m = inner.metrics();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let leader = inner.leader();
    pb::ClusterInfoReply {
        cluster_id: inner.peer.cluster_id().to_string(),
        name: inner.identity.name.clone(),
        node_id: inner.node_id,
        leader_id: leader.as_ref().map_or(0, |(id, _)| *id),
        leader_peer_addr: leader.map(|(_, n)| n.peer_addr).unwrap_or_default(),
        members: membership
            .nodes()
            .map(|(id, n)| peer_member(*id, n, voters.contains(id)))
            .collect(),
    }
}

pub(crate) fn raft_write_err(
    e: RaftError<ordkv_store::TypeConfig, ClientWriteError<ordkv_store::TypeConfig>>,
) -> Error {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => Error::NotLeader {
            leader_client_addr: f.leader_node.map(|n| n.client_addr),
        },
        other => Error::Unavailable(other.to_string()),
    }
}

/// Leader side of a join.
pub(crate) async fn admit(inner: &Inner, member: pb::PeerMember) -> Result<String> {
    if !inner.status().is_leader {
        return Err(Error::NotLeader {
            leader_client_addr: inner.leader().map(|(_, n)| n.client_addr),
        });
    }
    let ordinal = Identity::parse(&member.name)?.ordinal;
    let intent = inner.intent.current();
    if intent.removes(ordinal) {
        return Err(Error::Unavailable(format!(
            "{} is scaled away ({intent}); it is not admitted",
            member.name
        )));
    }
    let node = MemberNode {
        name: member.name.clone(),
        peer_addr: member.peer_addr.clone(),
        client_addr: member.client_addr.clone(),
    };
    let m = inner.metrics();
    let membership = m.membership_config.membership().clone();
    // An older incarnation of the same member (its volume was wiped) goes first: its id
    // must never count toward a quorum again.
    let stale: BTreeSet<u64> = membership
        .nodes()
        .filter(|(id, n)| n.name == member.name && **id != member.node_id)
        .map(|(id, _)| *id)
        .collect();
    if !stale.is_empty() {
        tracing::warn!(member = %member.name, old = ?stale, new = member.node_id, "replacing an old incarnation");
        remove_ids(inner, &stale).await?;
    }
    let mut outcome = Vec::new();
    let present = inner
        .metrics()
        .membership_config
        .membership()
        .get_node(&member.node_id)
        .is_some();
    if !present {
        tracing::info!(member = %member.name, node_id = member.node_id, "adding a learner");
        inner
            .raft
            .add_learner(member.node_id, node, true)
            .await
            .map_err(raft_write_err)?;
        outcome.push("added as a learner");
    }
    let voters = inner
        .metrics()
        .membership_config
        .membership()
        .voter_ids()
        .count();
    let is_voter = inner
        .metrics()
        .membership_config
        .membership()
        .voter_ids()
        .any(|id| id == member.node_id);
    if !is_voter && voters < inner.config.max_voters {
        inner
            .raft
            .change_membership(
                ChangeMembers::AddVoterIds(BTreeSet::from([member.node_id])),
                false,
            )
            .await
            .map_err(raft_write_err)?;
        outcome.push("promoted to voter");
    }
    if outcome.is_empty() {
        outcome.push(if is_voter {
            "already a voter"
        } else {
            "a learner (voters are full)"
        });
    }
    Ok(outcome.join(", "))
}

/// Removes node ids (voters or learners) from the membership.
pub(crate) async fn remove_ids(inner: &Inner, ids: &BTreeSet<u64>) -> Result<()> {
    let membership = inner.metrics().membership_config.membership().clone();
    let voters: BTreeSet<u64> = membership
        .voter_ids()
        .filter(|id| ids.contains(id))
        .collect();
    if !voters.is_empty() {
        inner
            .raft
            .change_membership(ChangeMembers::RemoveVoters(voters), false)
            .await
            .map_err(raft_write_err)?;
    }
    let still: BTreeSet<u64> = ids
        .iter()
        .copied()
        .filter(|id| {
            inner
                .metrics()
                .membership_config
                .membership()
                .get_node(id)
                .is_some()
        })
        .collect();
    if !still.is_empty() {
        inner
            .raft
            .change_membership(ChangeMembers::RemoveNodes(still), false)
            .await
            .map_err(raft_write_err)?;
    }
    Ok(())
}

/// Node ids of members named `{set}-{ordinal}`.
fn ids_of_ordinal(inner: &Inner, ordinal: u32) -> BTreeSet<u64> {
    inner
        .metrics()
        .membership_config
        .membership()
        .nodes()
        .filter(|(_, n)| Identity::parse(&n.name).is_ok_and(|i| i.ordinal == ordinal))
        .map(|(id, _)| *id)
        .collect()
}

/// Whether removing `ids` leaves the remaining voters able to form a quorum among the
/// members the leader currently reaches.
fn keeps_quorum(inner: &Inner, ids: &BTreeSet<u64>) -> bool {
    let m = inner.metrics();
    let remaining: Vec<u64> = m
        .membership_config
        .membership()
        .voter_ids()
        .filter(|id| !ids.contains(id))
        .collect();
    let reached = crate::autopilot::recently_acked(&m);
    let alive = remaining
        .iter()
        .filter(|id| **id == inner.node_id || reached.contains(id))
        .count();
    !remaining.is_empty() && alive > remaining.len() / 2
}

/// `ordkv cluster remove <ordinal>`.
pub(crate) async fn remove_ordinal(inner: &Inner, ordinal: u32) -> Result<String> {
    if !inner.status().is_leader {
        return Err(Error::NotLeader {
            leader_client_addr: inner.leader().map(|(_, n)| n.client_addr),
        });
    }
    let ids = ids_of_ordinal(inner, ordinal);
    if ids.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no member has ordinal {ordinal}"
        )));
    }
    if ids.contains(&inner.node_id) {
        return Err(Error::InvalidArgument(
            "the leader cannot remove itself; transfer leadership first".into(),
        ));
    }
    if !keeps_quorum(inner, &ids) {
        return Err(Error::Unavailable(format!(
            "removing ordinal {ordinal} would leave the remaining voters without a reachable quorum"
        )));
    }
    remove_ids(inner, &ids).await?;
    Ok(format!("removed ordinal {ordinal} (node ids {ids:?})"))
}

/// `ordkv cluster transfer-leader <ordinal>`.
pub(crate) async fn transfer_to_ordinal(inner: &Inner, ordinal: u32) -> Result<String> {
    let m = inner.metrics();
    let membership = m.membership_config.membership();
    let Some(target) = membership
        .voter_ids()
        .find(|id| ids_of_ordinal(inner, ordinal).contains(id))
    else {
        return Err(Error::InvalidArgument(format!(
            "no voter has ordinal {ordinal}"
        )));
    };
    if m.current_leader == Some(target) {
        return Ok(format!("ordinal {ordinal} already leads"));
    }
    if !inner.status().is_leader {
        return Err(Error::NotLeader {
            leader_client_addr: inner.leader().map(|(_, n)| n.client_addr),
        });
    }
    inner
        .raft
        .trigger()
        .transfer_leader(target)
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))?;
    inner
        .raft
        .wait(Some(Duration::from_secs(5)))
        .metrics(|m| m.current_leader == Some(target), "leadership moved")
        .await
        .map_err(|e| Error::Unavailable(format!("leadership did not move: {e}")))?;
    Ok(format!("ordinal {ordinal} leads"))
}

/// How long the leader waits for a leaving member's removal before it answers "ask again".
const LEAVE_WAIT: Duration = Duration::from_secs(5);

/// Leader side of `Peer.Leave`: the autopilot removes the member (one change at a time,
/// never below a reachable quorum); answers once it is gone from the membership.
pub(crate) async fn remove_leaving(inner: &Inner, node_id: u64, name: &str) -> Result<String> {
    if !inner.status().is_leader {
        return Err(Error::NotLeader {
            leader_client_addr: inner.leader().map(|(_, n)| n.client_addr),
        });
    }
    let present = inner
        .metrics()
        .membership_config
        .membership()
        .get_node(&node_id)
        .is_some();
    if !present {
        return Ok("not a member".into());
    }
    if node_id == inner.node_id {
        return Err(Error::InvalidArgument(
            "the leader cannot remove itself; it hands off leadership first".into(),
        ));
    }
    tracing::info!(member = %name, node_id, "a member asks to leave (scaled down)");
    inner.leave_requests.ask(node_id);
    let removed = inner
        .raft
        .wait(Some(LEAVE_WAIT))
        .metrics(
            |m| {
                m.membership_config
                    .membership()
                    .get_node(&node_id)
                    .is_none()
            },
            "the member is removed",
        )
        .await;
    match removed {
        Ok(_) => Ok("removed".into()),
        Err(_) => Err(Error::Unavailable(format!(
            "{name} is not removed yet (members leave one at a time, and only while a quorum stays reachable); ask again"
        ))),
    }
}

/// On shutdown of a member that its StatefulSet scaled away (ordinal >= `spec.replicas` >
/// 0): hands off leadership if it leads, asks the leader to remove it, and waits until it
/// is removed or `leave_timeout` ran out. A member below the count (a restart, a rolling
/// update, a drain) keeps its membership.
pub(crate) async fn leave_if_scaled_away(inner: &Inner) {
    let intent = inner.intent.fresh().await;
    let ordinal = inner.identity.ordinal;
    let Some(replicas) = intent.replicas().filter(|_| intent.removes(ordinal)) else {
        return;
    };
    tracing::info!(
        replicas,
        ordinal,
        "leaving: scaled to {replicas}, my ordinal is {ordinal}"
    );
    let deadline = tokio::time::Instant::now() + inner.config.leave_timeout;
    let mut last_error = String::new();
    while tokio::time::Instant::now() < deadline {
        match inner.leader() {
            Some((leader, _)) if leader == inner.node_id => {
                // The autopilot hands off to a member that stays; wait for it.
                inner.leave_requests.ask(inner.node_id);
                let _ = inner
                    .raft
                    .wait(Some(Duration::from_secs(2)))
                    .metrics(
                        |m| m.current_leader != Some(inner.node_id),
                        "leadership handed off",
                    )
                    .await;
                continue;
            }
            Some((_, leader)) => match ask_to_leave(inner, &leader).await {
                Ok(outcome) => {
                    tracing::info!(%outcome, leader = %leader.name, "left the cluster");
                    return;
                }
                Err(e) => last_error = e.to_string(),
            },
            None => last_error = "no leader known".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::warn!(
        timeout = ?inner.config.leave_timeout,
        error = %last_error,
        "not removed before stopping; the leader removes this member by scale intent once it is gone"
    );
}

async fn ask_to_leave(inner: &Inner, leader: &MemberNode) -> Result<String> {
    let mut client = inner
        .peer
        .client(&leader.peer_addr)
        .map_err(Error::Unavailable)?;
    let req = pb::LeaveRequest {
        cluster_id: inner.peer.cluster_id().to_string(),
        node_id: inner.node_id,
        name: inner.identity.name.clone(),
    };
    let reply = tokio::time::timeout(LEAVE_WAIT + PEER_CALL_TIMEOUT, client.leave(req))
        .await
        .map_err(|_| Error::Unavailable(format!("the leader {} did not answer", leader.name)))?
        .map_err(from_status)?;
    Ok(reply.into_inner().outcome)
}

/// On shutdown: if this node leads, hand leadership to the most caught-up voter.
pub(crate) async fn hand_off_leadership(inner: &Inner) {
    let m = inner.metrics();
    if m.current_leader != Some(inner.node_id) {
        return;
    }
    let matched = m.replication.clone().unwrap_or_default();
    let reached = crate::autopilot::recently_acked(&m);
    let best = m
        .membership_config
        .membership()
        .voter_ids()
        .filter(|id| *id != inner.node_id && reached.contains(id))
        .filter_map(|id| matched.get(&id).cloned().flatten().map(|l| (l.index, id)))
        .max();
    let Some((_, target)) = best else { return };
    if inner.raft.trigger().transfer_leader(target).await.is_ok() {
        let moved = inner
            .raft
            .wait(Some(Duration::from_secs(3)))
            .metrics(
                |m| m.current_leader != Some(inner.node_id),
                "leadership handed off",
            )
            .await;
        tracing::info!(to = target, ok = moved.is_ok(), "handed off leadership");
    }
}

/// Runs a write on the leader through its peer port.
pub(crate) async fn forward(
    inner: &Inner,
    leader: &MemberNode,
    cmd: pb::Command,
) -> Result<pb::CommandResponse> {
    let mut client = inner
        .peer
        .client(&leader.peer_addr)
        .map_err(Error::Unavailable)?;
    let req = pb::ForwardRequest {
        cluster_id: inner.peer.cluster_id().to_string(),
        command: Some(cmd),
    };
    let resp = tokio::time::timeout(inner.config.request_wait, client.forward(req))
        .await
        .map_err(|_| {
            Error::Unavailable(format!(
                "the leader {} did not answer in time; the write may or may not have happened",
                leader.name
            ))
        })?
        .map_err(from_status)?;
    Ok(resp.into_inner())
}

/// Asks the leader (`leader_id`) for a read index.
pub(crate) async fn read_index(inner: &Inner, leader_id: u64, leader: &MemberNode) -> Result<u64> {
    let mut client = inner
        .peer
        .client(&leader.peer_addr)
        .map_err(Error::Unavailable)?;
    let req = pb::PeerRequest {
        cluster_id: inner.peer.cluster_id().to_string(),
        from_node: inner.node_id,
        to_node: leader_id,
        payload: Default::default(),
        from_name: inner.identity.name.clone(),
    };
    let reply = tokio::time::timeout(PEER_CALL_TIMEOUT, client.read_index(req))
        .await
        .map_err(|_| Error::Unavailable(format!("the leader {} did not answer", leader.name)))?
        .map_err(from_status)?;
    let read: openraft::raft::linearizable_read::ReadLogId<ordkv_store::TypeConfig> =
        decode(&reply.into_inner().payload).map_err(Error::Internal)?;
    Ok(read.index())
}

/// The `Cluster.Status` answer, as this member sees the cluster.
pub(crate) fn status(inner: &Inner) -> pb::StatusResponse {
    let m = inner.metrics();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let last_index = m.last_log_index.unwrap_or(0);
    let matched = m.replication.clone().unwrap_or_default();
    let reached = crate::autopilot::recently_acked(&m);
    let mut members = Vec::new();
    let mut leader = None;
    for (id, node) in membership.nodes() {
        let ordinal = Identity::parse(&node.name).map_or(0, |i| i.ordinal);
        if m.current_leader == Some(*id) {
            leader = Some(ordinal);
        }
        let (applied, reachable) = if *id == inner.node_id {
            (m.last_applied.as_ref().map_or(0, |l| l.index), true)
        } else {
            match matched.get(id) {
                Some(Some(l)) => (l.index, reached.contains(id)),
                // Followers see the leader through its heartbeats.
                _ if m.current_leader == Some(*id) && m.state != openraft::ServerState::Leader => {
                    (0, true)
                }
                _ => (0, false),
            }
        };
        members.push(pb::Member {
            ordinal,
            name: node.name.clone(),
            role: if voters.contains(id) {
                pb::Role::Voter as i32
            } else {
                pb::Role::Learner as i32
            },
            peer_addr: node.peer_addr.clone(),
            client_addr: node.client_addr.clone(),
            applied_index: applied,
            reachable,
            node_id: *id,
            lag: if applied == 0 {
                0
            } else {
                last_index.saturating_sub(applied)
            },
        });
    }
    members.sort_by_key(|m| (m.ordinal, m.node_id));
    let limits = inner.config.limits;
    let revision = inner.sm.revision();
    let intent = inner.intent.current();
    pb::StatusResponse {
        header: Some(pb::ResponseHeader {
            revision,
            member: inner.identity.name.clone(),
            raft_term: m.current_term,
            cluster_id: inner.peer.cluster_id().to_string(),
        }),
        cluster_id: inner.peer.cluster_id().to_string(),
        leader,
        term: m.current_term,
        commit_index: m.local_committed.as_ref().map_or(0, |l| l.index),
        applied_index: m.last_applied.as_ref().map_or(0, |l| l.index),
        members,
        member: inner.identity.name.clone(),
        revision,
        compact_revision: inner.sm.compact_revision(),
        db_size_bytes: inner.sm.size_on_disk(),
        limits: Some(pb::Limits {
            max_key_bytes: limits.max_key_bytes as u64,
            max_value_bytes: limits.max_value_bytes as u64,
            max_txn_ops: limits.max_txn_ops as u64,
            max_range_limit: limits.max_range_limit as u64,
            watch_history_revisions: inner.config.watch_history_revisions,
        }),
        version: env!("CARGO_PKG_VERSION").to_string(),
        statefulset_replicas: intent.replicas(),
        scale_intent: match (&intent, &inner.config.kubernetes) {
            (ScaleIntent::Replicas(_), Ok(api)) => {
                format!("{intent} (statefulset {})", api.statefulset)
            }
            _ => intent.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(cluster: &str) -> Answer {
        Answer::Info(pb::ClusterInfoReply {
            cluster_id: cluster.into(),
            ..Default::default()
        })
    }

    fn answers(list: &[(&str, Answer)]) -> Vec<(String, Answer)> {
        list.iter()
            .map(|(n, a)| (n.to_string(), a.clone()))
            .collect()
    }

    #[test]
    fn ordinal_zero_bootstraps_only_when_every_resolvable_peer_answered_empty() {
        let all_empty = answers(&[("kv-1", info("")), ("kv-2", Answer::Unresolved)]);
        assert_eq!(decide("", 0, &all_empty), Decision::Bootstrap);
        let one_silent = answers(&[("kv-1", info("")), ("kv-2", Answer::Silent)]);
        assert!(matches!(decide("", 0, &one_silent), Decision::Wait(w) if w.contains("kv-2")));
    }

    #[test]
    fn other_ordinals_never_bootstrap() {
        let all_empty = answers(&[("kv-0", info("")), ("kv-2", info(""))]);
        assert!(matches!(decide("", 1, &all_empty), Decision::Wait(_)));
        assert!(matches!(decide("", 1, &[]), Decision::Wait(_)));
    }

    #[test]
    fn an_existing_cluster_is_joined_by_any_ordinal() {
        let found = answers(&[("kv-1", info("c1")), ("kv-2", Answer::Silent)]);
        let join = Decision::Join {
            cluster_id: "c1".into(),
        };
        assert_eq!(decide("", 0, &found), join);
        assert_eq!(decide("", 3, &found), join);
        // A member that recorded the cluster before it crashed mid-join joins it again.
        assert_eq!(decide("c1", 3, &found), join);
    }

    #[test]
    fn data_of_another_cluster_stops_the_member() {
        let found = answers(&[("kv-1", info("c2"))]);
        assert!(matches!(decide("c1", 0, &found), Decision::WrongCluster(_)));
    }

    #[test]
    fn disagreeing_peers_make_the_member_wait() {
        let split = answers(&[("kv-1", info("c1")), ("kv-2", info("c2"))]);
        assert!(matches!(decide("", 0, &split), Decision::Wait(_)));
    }
}
