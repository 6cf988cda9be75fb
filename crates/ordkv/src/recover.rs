//! `ordkv recover`: after a permanent loss of quorum, makes one stopped member the only voter
//! of its cluster (same cluster id, its log and state as they are; see
//! `ordkv_store::make_sole_voter`). Started, it elects itself; the other ordinals rejoin it:
//! empty volumes under new node ids, as always.
//!
//! It refuses while another member of the cluster answers, unless forced: a quorum that is
//! only unreachable for a while comes back by itself, and recovering beside it would fork
//! the cluster. What the others answer (their revisions) is reported either way, so the
//! operator sees what a recovery from this member would lose.

use std::time::{Duration, Instant};

use crate::config::NodeConfig;
use crate::datadir::DataDir;
use crate::error::{Error, Result};
use crate::pb;
use crate::peer::{PEER_CALL_TIMEOUT, PeerShared};

/// What another member of the cluster answered when asked before a recovery.
#[derive(Debug, Clone)]
pub struct OtherMember {
    /// Its name in the membership.
    pub name: String,
    /// Its own progress, when it answered as a member of the same cluster.
    pub answer: Option<MemberProgress>,
}

/// A member's own progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberProgress {
    /// Its applied revision.
    pub revision: u64,
    /// Its applied log index.
    pub applied_index: u64,
}

/// What `recover` did.
#[derive(Debug, Clone)]
pub struct RecoverReport {
    /// The recovered member.
    pub member: String,
    /// Its cluster (unchanged).
    pub cluster_id: String,
    /// Its applied revision and log index.
    pub progress: MemberProgress,
    /// Its last log index before the recovery: entries up to it that it had not applied yet
    /// are applied once it leads.
    pub last_log_index: u64,
    /// The other members of its latest membership, now removed from the cluster, and what
    /// each answered.
    pub others: Vec<OtherMember>,
}

impl RecoverReport {
    /// The other members that answered having applied entries beyond this member's log:
    /// what they hold after it is lost.
    pub fn ahead(&self) -> impl Iterator<Item = (&str, MemberProgress)> {
        self.others.iter().filter_map(|o| {
            o.answer
                .filter(|a| a.applied_index > self.last_log_index)
                .map(|a| (o.name.as_str(), a))
        })
    }
}

/// Makes the member whose data dir `config` names the only voter of its cluster. The member
/// must be stopped. Refuses while another member of the cluster answers, unless `force`.
pub async fn recover(config: &NodeConfig, force: bool) -> Result<RecoverReport> {
    let identity = config.validate()?;
    let path = &config.data_dir;
    let dir_err = |reason: String| Error::DataDir {
        path: path.display().to_string(),
        reason,
    };
    if !path.join("sled").exists() {
        return Err(dir_err(
            "it holds no store, so there is nothing to recover; point --data-dir at the volume of the member that survived"
                .into(),
        ));
    }
    let data_dir = DataDir::open(path, &identity)?;
    let cluster_id = data_dir.record.cluster_id.clone();
    if cluster_id.is_empty() {
        return Err(dir_err(
            "this member never joined a cluster; there is nothing to recover".into(),
        ));
    }
    let tls = match &config.tls_dir {
        Some(dir) => Some(
            crate::tls::TlsMaterial::load(dir)
                .map_err(|e| Error::InvalidArgument(format!("TLS (`tls_dir`, --tls-dir): {e}")))?,
        ),
        None => None,
    };
    let node_id = data_dir.record.node_id;
    let storage = |e: std::io::Error| dir_err(format!("recovering: {e}"));
    let (mut log, mut sm) =
        ordkv_store::open(path, &crate::node::store_options(config)).map_err(storage)?;
    let membership = ordkv_store::latest_membership(&mut log, &mut sm)
        .await
        .map_err(storage)?;

    let peer = PeerShared::new(
        node_id,
        identity.name.clone(),
        Some(cluster_id.clone()),
        tls,
    );
    let mut others = Vec::new();
    for (id, node) in membership.nodes().filter(|(id, _)| **id != node_id) {
        let answer = match ask(&peer, &node.peer_addr).await {
            Some(i) if i.cluster_id == cluster_id && i.node_id == *id => Some(MemberProgress {
                revision: i.revision,
                applied_index: i.applied_index,
            }),
            _ => None,
        };
        others.push(OtherMember {
            name: node.name.clone(),
            answer,
        });
    }
    others.sort_by(|a, b| a.name.cmp(&b.name));
    let answering: Vec<String> = others
        .iter()
        .filter_map(|o| {
            o.answer
                .map(|a| format!("{} (revision {})", o.name, a.revision))
        })
        .collect();
    if !answering.is_empty() && !force {
        return Err(Error::Unavailable(format!(
            "other members of cluster {cluster_id} still answer: {}; this member is at revision {}. \
             Recovery is for a quorum lost for good: start the others, or stop them and pass \
             --force to make this member the only voter (what they hold beyond its revision is lost)",
            answering.join(", "),
            sm.revision()
        )));
    }

    let me = crate::cluster::member_record(&identity, config);
    let done = ordkv_store::make_sole_voter(&mut log, &mut sm, node_id, me)
        .await
        .map_err(storage)?;
    tracing::warn!(
        member = %identity.name,
        cluster_id,
        revision = done.revision,
        removed = ?others.iter().map(|o| &o.name).collect::<Vec<_>>(),
        "recovered: this member is now the only voter of its cluster"
    );
    drop((log, sm));
    wait_store_closed(path).await;
    Ok(RecoverReport {
        member: identity.name.clone(),
        cluster_id,
        progress: MemberProgress {
            revision: done.revision,
            applied_index: done.applied.map_or(0, |l| l.index),
        },
        last_log_index: done.last_log.map_or(0, |l| l.index),
        others,
    })
}

async fn ask(peer: &PeerShared, addr: &str) -> Option<pb::ClusterInfoReply> {
    if !crate::resolve::resolves(addr).await {
        return None;
    }
    let mut client = peer.client(addr).ok()?;
    let req = pb::ClusterInfoRequest {
        from_name: peer.name.clone(),
    };
    match tokio::time::timeout(PEER_CALL_TIMEOUT, client.cluster_info(req)).await {
        Ok(Ok(r)) => Some(r.into_inner()),
        _ => None,
    }
}

/// The store's flusher threads let go of sled's file lock shortly after the last handle is
/// dropped: wait for it, so that `serve --recover` can open the store right after.
async fn wait_store_closed(path: &std::path::Path) {
    use fs2::FileExt;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match std::fs::File::open(path.join("sled").join("db")) {
            Ok(f) if f.try_lock_exclusive().is_ok() => {
                let _ = f.unlock();
                return;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(_) => return,
        }
    }
}
