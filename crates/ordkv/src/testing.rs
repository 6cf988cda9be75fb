//! In-process clusters for this crate's tests.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use crate::{Node, NodeConfig, Peers};

/// Opens `kv-0`, `kv-1` and `kv-2` on loopback under `dir` and waits until all are ready;
/// `kv-0` bootstraps the cluster and leads it.
pub(crate) async fn three_nodes(dir: &Path) -> Vec<Node> {
    let names = ["kv-0", "kv-1", "kv-2"];
    // Each port stays held until its member binds it, so no outgoing connection of an
    // earlier member is given it in between.
    let mut holders: Vec<TcpListener> = names
        .iter()
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<String> = holders
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let peers: BTreeMap<String, String> = names
        .iter()
        .zip(&addrs)
        .map(|(n, a)| (n.to_string(), a.clone()))
        .collect();
    let mut nodes = Vec::new();
    for (name, addr) in names.iter().zip(&addrs) {
        let mut config = NodeConfig::new(dir.join(name));
        config.name = name.to_string();
        config.peers = Peers::Static(peers.clone());
        config.peer_listen_addr = Some(addr.parse().unwrap());
        config.wal_segment_bytes = 4 << 20;
        drop(holders.remove(0));
        nodes.push(Node::open(config).await.unwrap());
    }
    for n in &nodes {
        n.wait_ready(Duration::from_secs(30)).await.unwrap();
    }
    nodes
}
