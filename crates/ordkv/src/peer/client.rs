//! The Raft network over gRPC: one client per target node, plus the non-Raft peer calls.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::{FutureExt, Stream, StreamExt, stream};
use openraft::OptionalSend;
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory, stream_append_sequential};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use ordkv_store::{MemberNode, NodeId, SnapshotData, TypeConfig, Vote};
use tokio::io::AsyncReadExt;
use tonic::transport::Channel;

use super::{PeerError, PeerShared, decode_reply, encode};
use crate::pb;
use crate::pb::peer_client::PeerClient;

/// Snapshot bytes per streamed chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// Histogram: seconds from sending an append to a peer until its answer arrives, label
/// `peer`. A peer answers once the entries are on its disk, so this is the network round
/// trip plus the follower's log sync (heartbeats carry no entries): the part of a write's
/// latency that replication adds.
pub const PEER_APPEND_DURATION: &str = "ordkv_peer_append_duration_seconds";

/// Creates a [`RaftPeer`] per target.
#[derive(Clone)]
pub(crate) struct PeerNetwork {
    pub(crate) shared: Arc<PeerShared>,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = RaftPeer;

    async fn new_client(&mut self, target: NodeId, node: &MemberNode) -> RaftPeer {
        RaftPeer {
            target,
            target_name: node.name.clone(),
            grpc: self.shared.client(&node.peer_addr),
            shared: self.shared.clone(),
            append_stream_unsupported: false,
        }
    }
}

/// The Raft RPCs to one target node.
pub(crate) struct RaftPeer {
    target: NodeId,
    target_name: String,
    grpc: Result<PeerClient<Channel>, String>,
    shared: Arc<PeerShared>,
    /// Set when the target runs a version without `AppendStream` (during a rolling upgrade):
    /// appends then go one call at a time.
    append_stream_unsupported: bool,
}

type RpcErr = RPCError<TypeConfig>;

/// The least time an append (or an append stream's setup) gets before the target counts as
/// unreachable. openraft's deadline is the heartbeat interval (100 ms); an append of a few
/// MiB, or any append on a busy machine, takes longer, and an append cut off at the deadline
/// is sent again whole: a follower far behind then never caught up ("append stream not
/// opened within 100ms" once a second for over a minute, on a loaded machine).
const APPEND_DEADLINE_FLOOR: Duration = Duration::from_secs(1);

fn append_deadline(option: &RPCOption) -> Duration {
    option.hard_ttl().max(APPEND_DEADLINE_FLOOR)
}

fn unreachable(msg: impl ToString) -> Unreachable<TypeConfig> {
    Unreachable::from_string(msg)
}

impl RaftPeer {
    fn request(&self, payload: Vec<u8>) -> pb::PeerRequest {
        pb::PeerRequest {
            cluster_id: self.shared.cluster_id().to_string(),
            from_node: self.shared.node_id,
            to_node: self.target,
            payload: payload.into(),
            from_name: self.shared.name.clone(),
            format: super::PEER_FORMAT,
        }
    }

    fn grpc(&self) -> Result<PeerClient<Channel>, Unreachable<TypeConfig>> {
        if self.shared.is_blocked(&self.target_name) {
            return Err(unreachable(format!(
                "{} is cut off by fault injection",
                self.target_name
            )));
        }
        self.grpc.clone().map_err(unreachable)
    }

    fn status(&self, s: tonic::Status) -> RpcErr {
        status_error(&self.target_name, s)
    }

    /// Notes whether the target answered a call, for [`super::health`].
    fn observe<T, E: std::fmt::Display>(&self, result: Result<T, E>) -> Result<T, E> {
        if result.is_ok() {
            self.shared.health.answered(&self.target_name);
        }
        self.observe_failure(result)
    }

    /// Notes a call that failed before the target could answer.
    fn observe_failure<T, E: std::fmt::Display>(&self, result: Result<T, E>) -> Result<T, E> {
        if let Err(e) = &result {
            self.shared.health.failed(&self.target_name, &e.to_string());
        }
        result
    }

    /// Streams appends to the target over one gRPC stream, without waiting for answers
    /// between them; the target answers each in order once it is on its disk.
    async fn open_append_stream(
        &mut self,
        requests: impl Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + 'static,
        option: RPCOption,
    ) -> Result<BoxStream<'static, Result<StreamAppendResult<TypeConfig>, RpcErr>>, RpcErr> {
        let mut grpc = self.grpc()?;
        let template = self.request(Vec::new());
        let in_flight = Arc::new(Mutex::new(VecDeque::new()));
        let sent = in_flight.clone();
        // An append that cannot be encoded ends the stream (openraft resends from there).
        let requests = requests.scan((), move |_, rpc| {
            let msg = match encode(&rpc) {
                Ok(payload) => Some(pb::PeerRequest {
                    payload: payload.into(),
                    ..template.clone()
                }),
                Err(e) => {
                    tracing::error!(error = %e, "append not sent");
                    None
                }
            };
            if msg.is_some() {
                lock(&sent).push_back(Instant::now());
            }
            std::future::ready(msg)
        });
        let ttl = append_deadline(&option);
        let answers = match tokio::time::timeout(ttl, grpc.append_stream(requests)).await {
            Err(_) => {
                return Err(RPCError::Unreachable(unreachable(format!(
                    "{}: append stream not opened within {ttl:?}",
                    self.target_name
                ))));
            }
            Ok(Err(s)) => {
                if s.code() == tonic::Code::Unimplemented {
                    self.append_stream_unsupported = true;
                }
                return Err(self.status(s));
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let stream = AnswerStream {
            answers,
            in_flight,
            round_trip: metrics::histogram!(PEER_APPEND_DURATION, "peer" => self.target_name.clone()),
            ttl,
            target_name: self.target_name.clone(),
            shared: self.shared.clone(),
        };
        Ok(Box::pin(stream::unfold(Some(stream), |st| async move {
            let mut st = st?;
            let item = st.next().await?;
            if let Err(e) = &item {
                st.shared.health.failed(&st.target_name, &e.to_string());
            }
            let go_on = item.as_ref().is_ok_and(|r| r.is_ok());
            Some((item, go_on.then_some(st)))
        })))
    }

    async fn unary<F, Fut>(
        &self,
        ttl: Duration,
        payload: Vec<u8>,
        call: F,
    ) -> Result<pb::PeerReply, RpcErr>
    where
        F: FnOnce(PeerClient<Channel>, pb::PeerRequest) -> Fut,
        Fut: Future<Output = Result<tonic::Response<pb::PeerReply>, tonic::Status>>,
    {
        let grpc = self.observe_failure(self.grpc())?;
        let req = self.request(payload);
        let result = match tokio::time::timeout(ttl, call(grpc, req)).await {
            Err(_) => Err(RPCError::Unreachable(unreachable(format!(
                "{}: no answer within {ttl:?}",
                self.target_name
            )))),
            Ok(Err(s)) => Err(self.status(s)),
            Ok(Ok(r)) => Ok(r.into_inner()),
        };
        self.observe(result)
    }
}

fn net(e: String) -> RpcErr {
    RPCError::Network(NetworkError::from_string(e))
}

/// Maps a failed call: transport trouble is "unreachable" (openraft backs off), a refusal by
/// the peer is a network error that names the reason.
fn status_error(target_name: &str, s: tonic::Status) -> RpcErr {
    match s.code() {
        // `Unknown` is how tonic reports a dropped connection.
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Cancelled
        | tonic::Code::Unknown => {
            RPCError::Unreachable(unreachable(format!("{target_name}: {}", s.message())))
        }
        _ => RPCError::Network(NetworkError::from_string(format!(
            "{target_name} refused: {}",
            s.message()
        ))),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The target's answers on an append stream, one per append sent, in order.
struct AnswerStream {
    answers: tonic::Streaming<pb::PeerReply>,
    /// When each append not answered yet was handed to the transport, oldest first.
    in_flight: Arc<Mutex<VecDeque<Instant>>>,
    round_trip: metrics::Histogram,
    ttl: Duration,
    target_name: String,
    shared: Arc<PeerShared>,
}

impl AnswerStream {
    /// The next answer; `None` when the stream ended cleanly (the leader stopped sending).
    async fn next(&mut self) -> Option<Result<StreamAppendResult<TypeConfig>, RpcErr>> {
        loop {
            // Appends already sent when the wait began must be answered within `ttl`, or the
            // target counts as unreachable (a stopped or cut-off process keeps its socket).
            let waiting = !lock(&self.in_flight).is_empty();
            let answer = match tokio::time::timeout(self.ttl, self.answers.message()).await {
                Err(_) if waiting => {
                    return Some(Err(RPCError::Unreachable(unreachable(format!(
                        "{}: no answer within {:?}",
                        self.target_name, self.ttl
                    )))));
                }
                Err(_) => continue,
                Ok(Err(s)) => return Some(Err(status_error(&self.target_name, s))),
                Ok(Ok(None)) => return None,
                Ok(Ok(Some(answer))) => answer,
            };
            if self.shared.is_blocked(&self.target_name) {
                return Some(Err(RPCError::Unreachable(unreachable(format!(
                    "{} is cut off by fault injection",
                    self.target_name
                )))));
            }
            if let Some(sent) = lock(&self.in_flight).pop_front() {
                self.round_trip.record(sent.elapsed().as_secs_f64());
            }
            return Some(decode_reply(&self.target_name, &answer).map_err(net));
        }
    }
}

impl RaftNetworkV2<TypeConfig> for RaftPeer {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcErr> {
        let sent = Instant::now();
        let reply = self
            .unary(
                append_deadline(&option),
                encode(&rpc).map_err(net)?,
                |mut c, r| async move { c.append(r).await },
            )
            .await?;
        metrics::histogram!(PEER_APPEND_DURATION, "peer" => self.target_name.clone())
            .record(sent.elapsed().as_secs_f64());
        decode_reply(&self.target_name, &reply).map_err(net)
    }

    fn stream_append<'s, S>(
        &'s mut self,
        mut input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RpcErr>>, RpcErr>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            let Some(first) = input.next().await else {
                return Ok(Box::pin(stream::empty()) as BoxStream<'s, _>);
            };
            if self.append_stream_unsupported {
                let requests = stream::iter([first]).chain(input);
                return stream_append_sequential(self, requests, option).await;
            }
            // A heartbeat is a stream of one request: a unary call costs less than a stream.
            let second = match input.next().now_or_never() {
                Some(None) => {
                    return stream_append_sequential(self, stream::iter([first]), option).await;
                }
                Some(Some(second)) => Some(second),
                None => None,
            };
            let requests = stream::iter(std::iter::once(first).chain(second)).chain(input);
            let opened = self.open_append_stream(requests, option).await;
            self.observe(opened)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        self.vote_or_pre_vote(false, rpc, option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        self.vote_or_pre_vote(true, rpc, option).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RpcErr> {
        let reply = self
            .unary(
                option.hard_ttl(),
                encode(&req).map_err(net)?,
                |mut c, r| async move { c.transfer_leader(r).await },
            )
            .await?;
        decode_reply(&self.target_name, &reply).map_err(net)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut grpc = self.observe_failure(self.grpc())?;
        let header = self.request(
            encode(&(vote, snapshot.meta.clone()))
                .map_err(|e| StreamingError::Network(NetworkError::from_string(e)))?,
        );
        let path = snapshot.snapshot.path.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::SnapshotChunk>(4);
        // Reads the file chunk by chunk: a multi-GB snapshot is never held in memory.
        let reader = tokio::spawn(async move {
            let mut file = tokio::fs::File::open(&path).await?;
            let mut crc = crc32fast::Hasher::new();
            let mut header = Some(header);
            loop {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
                let n = file.read(&mut buf).await?;
                buf.truncate(n);
                crc.update(&buf);
                let last = n == 0;
                let chunk = pb::SnapshotChunk {
                    header: header.take(),
                    data: buf.into(),
                    crc32: last.then(|| crc.clone().finalize()),
                };
                if tx.send(chunk).await.is_err() || last {
                    return Ok::<_, std::io::Error>(());
                }
            }
        });
        let call = grpc.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
        let reply = tokio::select! {
            closed = cancel => {
                reader.abort();
                return Err(StreamingError::Closed(closed));
            }
            r = call => r,
        };
        match reader.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StreamingError::Network(NetworkError::new(&e))),
            Err(e) => return Err(StreamingError::Network(NetworkError::from_string(e))),
        }
        let reply = reply.map_err(|s| match self.status(s) {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            other => StreamingError::Network(NetworkError::from_string(other)),
        })?;
        decode_reply(&self.target_name, &reply.into_inner())
            .map_err(|e| StreamingError::Network(NetworkError::from_string(e)))
    }
}

impl RaftPeer {
    async fn vote_or_pre_vote(
        &mut self,
        pre_vote: bool,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        let grpc = self.observe_failure(self.grpc())?;
        let req = self.request(encode(&(pre_vote, rpc)).map_err(net)?);
        let ttl = option.hard_ttl();
        let result = tokio::time::timeout(ttl, async move {
            let mut grpc = grpc;
            grpc.vote(req).await
        })
        .await;
        let result = match result {
            Err(_) => Err(RPCError::Unreachable(unreachable(format!(
                "{}: no answer within {ttl:?}",
                self.target_name
            )))),
            Ok(Err(s)) => {
                if PeerError::of(&s) == Some(PeerError::NotAMember) {
                    self.shared.mark_removed();
                }
                Err(self.status(s))
            }
            Ok(Ok(r)) => decode_reply(&self.target_name, &r.into_inner()).map_err(net),
        };
        self.observe(result)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    /// A leader replicates to a member without `AppendStream` (a member of the previous version
    /// during a rolling upgrade) one append call at a time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_fall_back_to_unary_calls_for_a_member_without_append_stream() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = crate::testing::three_nodes(dir.path()).await;

        // kv-2 turns into an older member. Cut off, it refuses the next append, which ends
        // the leader's stream to it, so the leader has to open a new one.
        nodes[2]
            .peer()
            .without_append_stream
            .store(true, Ordering::Relaxed);
        nodes[2].set_partitioned_from(&["kv-0".into(), "kv-1".into()]);
        nodes[0].kv().put_value("during", "cut off").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        nodes[2].set_partitioned_from(&[]);

        // Batches of several entries, which the leader sends as streams of appends.
        let kv = nodes[0].kv();
        let writes = (0..200).map(|i| kv.put_value(format!("k{i}"), format!("v{i}")));
        let revisions = futures::future::try_join_all(writes).await.unwrap();
        let last = *revisions.iter().max().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while nodes[2].status().revision < last {
            assert!(
                Instant::now() < deadline,
                "kv-2 stayed at revision {} < {last}",
                nodes[2].status().revision
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for n in nodes {
            n.shutdown().await.unwrap();
        }
    }
}
