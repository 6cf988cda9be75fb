//! The peer gRPC service: Raft RPCs into openraft, plus cluster info, join, forwarded writes
//! and read index, leave.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{LinearizableReadError, RaftError};
use openraft::raft::AppendEntriesRequest;
use ordkv_store::{LogId, SnapshotData, SnapshotMeta, TypeConfig, Vote};
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status, Streaming};

use super::{NOT_A_MEMBER, NOT_LEADER, PeerError, PeerShared, decode, encode};
use crate::error::{Error, Result as NodeResult};
use crate::membership::Membership;
use crate::pb;
use crate::replica::Replica;
use crate::writes::Writer;

/// Implements `ordkv.v1.Peer`: Raft RPCs into this member's Raft node, forwarded writes,
/// read indexes, joins and leaves.
pub(crate) struct PeerService {
    pub(crate) replica: Replica,
    /// Proposes the writes followers forward to this (leading) member.
    pub(crate) writer: Writer,
    /// Admits joining members and removes leaving ones.
    pub(crate) membership: Membership,
    /// Where snapshots sent by the leader are received.
    pub(crate) snapshots_dir: PathBuf,
    /// Answers followers' lease keepalives (on the leader).
    pub(crate) leases: Arc<crate::lease::LeaseClock>,
    /// The node's stop: ends the streams peers hold open, so that the connections close and
    /// none keeps this member's store open after `Node::shutdown`.
    pub(crate) stop: tokio_util::sync::CancellationToken,
}

/// Listens for peers on `addr`; the returned task serves them until `stop`.
pub(crate) async fn serve(
    service: PeerService,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: tokio_util::sync::CancellationToken,
) -> NodeResult<impl Future<Output = ()> + Send + 'static> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::InvalidArgument(format!(
            "cannot listen on {addr} for peers: {e}; choose another peer listen address (`peer_listen_addr`, --peer-addr)"
        ))
    })?;
    let service = pb::peer_server::PeerServer::new(service)
        .max_decoding_message_size(super::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(super::MAX_MESSAGE_BYTES);
    // The listener sets TCP_NODELAY: without it, Nagle held append replies for the leader's
    // delayed ACK (~40 ms stalls, once every few hundred writes).
    let tls_on = tls.is_some();
    let incoming =
        crate::listen::incoming(listener, crate::listen::ListenConfig::grpc("peer", tls));
    tracing::info!(%addr, tls = tls_on, "serving peers");
    Ok(async move {
        let served = tonic::transport::Server::builder()
            // Pings keep idle connections from looking silent to the listener's watchdog
            // and find dead ones.
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
            .layer(tonic::service::InterceptorLayer::new(
                crate::listen::refuse_plaintext,
            ))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "peer server failed");
        }
    })
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

fn reply(payload: Vec<u8>) -> Result<Response<pb::PeerReply>, Status> {
    Ok(Response::new(pb::PeerReply {
        payload: payload.into(),
        format: super::PEER_FORMAT,
    }))
}

/// Refuses requests for another cluster or another incarnation of this member.
fn admit(peer: &PeerShared, req: &pb::PeerRequest) -> Result<(), Status> {
    super::check_format(&req.from_name, req.format).map_err(Status::failed_precondition)?;
    if peer.is_blocked(&req.from_name) {
        return Err(Status::unavailable(format!(
            "{} is cut off by fault injection",
            req.from_name
        )));
    }
    let cluster = peer.cluster_id();
    if cluster.is_empty() {
        return Err(Status::unavailable(format!(
            "{} has not joined a cluster yet",
            peer.name
        )));
    }
    if req.cluster_id != cluster {
        return Err(Status::failed_precondition(format!(
            "cluster id mismatch: {} belongs to cluster {cluster}, the request is for {}",
            peer.name, req.cluster_id
        )));
    }
    if req.to_node != peer.node_id {
        return Err(Status::failed_precondition(format!(
            "node id mismatch: {} is node {} now, not node {} (its volume was replaced); \
             it answers for the new id once re-admitted",
            peer.name, peer.node_id, req.to_node
        )));
    }
    Ok(())
}

impl PeerService {
    /// An admitted Raft RPC: decode the openraft request, run it, encode the answer.
    async fn raft_call<Req, Resp, E, Fut>(
        &self,
        req: Request<pb::PeerRequest>,
        call: impl FnOnce(Req) -> Fut,
    ) -> Result<Response<pb::PeerReply>, Status>
    where
        Req: serde::de::DeserializeOwned,
        Resp: serde::Serialize,
        E: std::fmt::Display,
        Fut: Future<Output = Result<Resp, E>>,
    {
        let req = req.into_inner();
        admit(&self.replica.peer, &req)?;
        let rpc = decode(&req.payload).map_err(Status::invalid_argument)?;
        let resp = call(rpc)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        reply(encode(&resp).map_err(internal)?)
    }

    fn is_member(&self, node_id: u64) -> bool {
        let m = self
            .replica
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        m.membership().get_node(&node_id).is_some()
    }
}

type Answers = Pin<Box<dyn Stream<Item = Result<pb::PeerReply, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl pb::peer_server::Peer for PeerService {
    type AppendStreamStream = Answers;

    async fn append_stream(
        &self,
        req: Request<Streaming<pb::PeerRequest>>,
    ) -> Result<Response<Answers>, Status> {
        #[cfg(test)]
        if self
            .replica
            .peer
            .without_append_stream
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(Status::unimplemented(
                "AppendStream (emulating an older member)",
            ));
        }
        // Appends are taken until one is refused or unreadable; the answers to those before it
        // come first, then why the stream stopped.
        let refused = Arc::new(Mutex::new(None::<Status>));
        let (replica, why) = (self.replica.clone(), refused.clone());
        let stop = self.stop.clone().cancelled_owned();
        let appends = req.into_inner().take_until(stop).scan((), move |_, msg| {
            let rpc = msg.and_then(|m| {
                admit(&replica.peer, &m)?;
                let rpc = decode(&m.payload).map_err(Status::invalid_argument)?;
                refuse_divergence(&replica, &rpc)?;
                Ok(rpc)
            });
            std::future::ready(match rpc {
                Ok(rpc) => Some(rpc),
                Err(status) => {
                    *why.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
                    None
                }
            })
        });
        let answers = self.replica.raft.stream_append(appends).map(|r| match r {
            Ok(result) => Ok(pb::PeerReply {
                payload: encode(&result).map_err(internal)?.into(),
                format: super::PEER_FORMAT,
            }),
            Err(fatal) => Err(Status::unavailable(fatal.to_string())),
        });
        let why = futures::stream::once(async move {
            refused.lock().unwrap_or_else(|p| p.into_inner()).take()
        })
        .filter_map(|s| std::future::ready(s.map(Err)));
        let stop = self.stop.clone().cancelled_owned();
        Ok(Response::new(Box::pin(answers.chain(why).take_until(stop))))
    }

    async fn append(
        &self,
        req: Request<pb::PeerRequest>,
    ) -> Result<Response<pb::PeerReply>, Status> {
        self.raft_call(req, |rpc: AppendEntriesRequest<TypeConfig>| async move {
            refuse_divergence(&self.replica, &rpc).map_err(|s| s.message().to_string())?;
            self.replica
                .raft
                .append_entries(rpc)
                .await
                .map_err(|e| e.to_string())
        })
        .await
    }

    async fn vote(&self, req: Request<pb::PeerRequest>) -> Result<Response<pb::PeerReply>, Status> {
        let req = req.into_inner();
        admit(&self.replica.peer, &req)?;
        if !self.is_member(req.from_node) {
            // A removed member (scale-down, then back on its old volume) must not disturb the
            // cluster: refuse it, and tell it why so that it asks to rejoin as a learner.
            return Err(
                PeerError::NotAMember.tag(Status::failed_precondition(format!(
                    "{} (node {}) is {NOT_A_MEMBER} of cluster {}; it must rejoin",
                    req.from_name,
                    req.from_node,
                    self.replica.peer.cluster_id()
                ))),
            );
        }
        let (pre_vote, rpc): (bool, _) = decode(&req.payload).map_err(Status::invalid_argument)?;
        let raft = &self.replica.raft;
        let resp = if pre_vote {
            raft.pre_vote(rpc).await
        } else {
            raft.vote(rpc).await
        };
        let resp = resp.map_err(|e| Status::unavailable(e.to_string()))?;
        reply(encode(&resp).map_err(internal)?)
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::PeerReply>, Status> {
        let mut stream = req.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let header = first
            .header
            .clone()
            .ok_or_else(|| Status::invalid_argument("the first snapshot chunk has no header"))?;
        admit(&self.replica.peer, &header)?;
        let (vote, meta): (Vote, SnapshotMeta) =
            decode(&header.payload).map_err(Status::invalid_argument)?;

        let path = self
            .snapshots_dir
            .join(format!("incoming-{}.part", uuid::Uuid::new_v4()));
        let received = async {
            let mut file = tokio::fs::File::create(&path).await.map_err(internal)?;
            let mut crc = crc32fast::Hasher::new();
            let mut chunk = Some(first);
            loop {
                let c = match chunk.take() {
                    Some(c) => c,
                    None => tokio::select! {
                        c = stream.next() => {
                            c.ok_or_else(|| Status::aborted("snapshot stream ended early"))??
                        }
                        _ = self.stop.cancelled() => {
                            return Err(Status::unavailable("this member is stopping"));
                        }
                    },
                };
                crc.update(&c.data);
                file.write_all(&c.data).await.map_err(internal)?;
                if let Some(want) = c.crc32 {
                    if crc.finalize() != want {
                        return Err(Status::data_loss("snapshot stream fails its checksum"));
                    }
                    file.sync_all().await.map_err(internal)?;
                    return Ok(());
                }
            }
        }
        .await;
        if let Err(e) = received {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e);
        }
        let snapshot = openraft::type_config::alias::SnapshotOf::<TypeConfig, SnapshotData> {
            meta,
            snapshot: SnapshotData { path },
        };
        let resp = self
            .replica
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        reply(encode(&resp).map_err(internal)?)
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::PeerRequest>,
    ) -> Result<Response<pb::PeerReply>, Status> {
        self.raft_call(req, |rpc| self.replica.raft.handle_transfer_leader(rpc))
            .await
    }

    async fn forward(
        &self,
        req: Request<pb::ForwardRequest>,
    ) -> Result<Response<pb::CommandResponse>, Status> {
        let req = req.into_inner();
        if req.cluster_id != self.replica.peer.cluster_id() {
            return Err(Status::failed_precondition("cluster id mismatch"));
        }
        let cmd = req
            .command
            .ok_or_else(|| Status::invalid_argument("no command"))?;
        let resp = self
            .writer
            .write_here(cmd)
            .await
            .map_err(crate::peer::to_status)?;
        Ok(Response::new(resp))
    }

    async fn lease_forward(
        &self,
        req: Request<pb::LeaseForwardRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let req = req.into_inner();
        if req.cluster_id != self.replica.peer.cluster_id() {
            return Err(Status::failed_precondition("cluster id mismatch"));
        }
        let answer = self
            .leases
            .answer(&req)
            .await
            .map_err(crate::peer::to_status)?;
        Ok(Response::new(answer))
    }

    async fn read_index(
        &self,
        req: Request<pb::PeerRequest>,
    ) -> Result<Response<pb::PeerReply>, Status> {
        let mut req = req.into_inner();
        if req.to_node == 0 {
            // Members of earlier versions do not name the leader they ask.
            req.to_node = self.replica.peer.node_id;
        }
        admit(&self.replica.peer, &req)?;
        let linearizer = self
            .replica
            .raft
            .get_read_linearizer(ReadPolicy::ReadIndex)
            .await
            .map_err(|e| match e {
                // The asker retries these (a leader change, a quorum out of reach).
                RaftError::APIError(LinearizableReadError::ForwardToLeader(_)) => {
                    PeerError::NotLeader.tag(Status::failed_precondition(format!(
                        "{NOT_LEADER} any more"
                    )))
                }
                RaftError::APIError(LinearizableReadError::QuorumNotEnough(_)) => {
                    Status::unavailable("no read index here: the leader does not reach a quorum")
                }
                e => Status::unavailable(format!("no read index here: {e}")),
            })?;
        reply(encode(linearizer.read_log_id()).map_err(internal)?)
    }

    async fn cluster_info(
        &self,
        _req: Request<pb::ClusterInfoRequest>,
    ) -> Result<Response<pb::ClusterInfoReply>, Status> {
        Ok(Response::new(cluster_info(&self.replica)))
    }

    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::JoinReply>, Status> {
        let req = req.into_inner();
        if req.cluster_id != self.replica.peer.cluster_id() {
            return Err(Status::failed_precondition("cluster id mismatch"));
        }
        let member = req
            .member
            .ok_or_else(|| Status::invalid_argument("no member"))?;
        let outcome = self
            .membership
            .admit(member)
            .await
            .map_err(crate::peer::to_status)?;
        Ok(Response::new(pb::JoinReply { outcome }))
    }

    async fn leave(
        &self,
        req: Request<pb::LeaveRequest>,
    ) -> Result<Response<pb::LeaveReply>, Status> {
        let req = req.into_inner();
        if req.cluster_id != self.replica.peer.cluster_id() {
            return Err(Status::failed_precondition("cluster id mismatch"));
        }
        let outcome = self
            .membership
            .remove_leaving(req.node_id, &req.name)
            .await
            .map_err(crate::peer::to_status)?;
        Ok(Response::new(pb::LeaveReply { outcome }))
    }
}

/// Refuses, and stops this member, when the leader's entries differ from ones this member
/// has applied. Raft never lets that happen; `ordkv recover` can: the recovered member's log
/// lacks entries a member it dropped had applied. openraft takes committed entries as
/// matching (it would skip them and keep this member's state: a fork), so they are compared
/// here, before openraft sees them: the prev entry and any resent entry at or below the
/// applied index, read from the log unless it is the applied entry itself. Appends of a
/// deposed leader are left to openraft.
fn refuse_divergence(
    replica: &Replica,
    rpc: &AppendEntriesRequest<TypeConfig>,
) -> Result<(), Status> {
    let Some(applied) = replica.sm.applied_log_id() else {
        return Ok(());
    };
    let theirs = rpc
        .prev_log_id
        .iter()
        .chain(rpc.entries.iter().map(|e| &e.log_id))
        .filter(|id| id.index <= applied.index);
    for id in theirs {
        let mine = if id.index == applied.index {
            Some(applied)
        } else {
            replica.log.log_id_at(id.index).map_err(internal)?
        };
        // A leader of an older term than the entry applied here is a deposed one that does
        // not know it yet (a paused process thawing): its entries there were never
        // committed, and openraft refuses it by its vote. Only a leader at least as new can
        // conflict with an applied entry, and only after a recovery.
        let stale_leader = |mine: &LogId| rpc.vote.leader_id.term < mine.leader_id.term;
        if let Some(mine) = mine.filter(|mine| mine != id && !stale_leader(mine)) {
            let reason = format!(
                "the leader's log conflicts with entries this member has already applied \
                 (at index {}: the leader has {id}, this member applied {mine}, up to index {}): \
                 the cluster was recovered from another member (`ordkv recover`) while this one \
                 held newer data. Wipe this member's data dir so it rejoins with the cluster's \
                 data (what it applied after index {} is lost)",
                id.index,
                applied.index,
                id.index.saturating_sub(1)
            );
            tracing::error!(error = %reason, "stopping");
            replica.set_fatal(reason.clone());
            return Err(Status::failed_precondition(reason));
        }
    }
    Ok(())
}

/// What this member knows of its cluster.
fn cluster_info(replica: &Replica) -> pb::ClusterInfoReply {
    let m = replica.metrics();
    let membership = m.membership_config.membership();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let leader = replica.leader();
    pb::ClusterInfoReply {
        cluster_id: replica.peer.cluster_id().to_string(),
        name: replica.name().to_string(),
        node_id: replica.node_id(),
        leader_id: leader.as_ref().map_or(0, |(id, _)| *id),
        leader_peer_addr: leader.map(|(_, n)| n.peer_addr).unwrap_or_default(),
        members: membership
            .nodes()
            .map(|(id, n)| super::peer_member(*id, n, voters.contains(id)))
            .collect(),
        revision: replica.sm.revision(),
        applied_index: m.last_applied.as_ref().map_or(0, |l| l.index),
        last_log_index: m.last_log_index.unwrap_or(0),
        term: m.current_term,
    }
}
