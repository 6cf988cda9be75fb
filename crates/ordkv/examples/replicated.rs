//! Three replicated members in one process, on loopback: the way an application that runs as
//! a StatefulSet embeds ordkv, each pod one member, with no sidecar. Writes through kv-1 (a
//! follower forwards them to the leader), reads through kv-2.
//!
//! `cargo run -p ordkv --example replicated`

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use ordkv::pb;

/// A free loopback port (released before the member binds it).
fn free_addr() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let names = ["kv-0", "kv-1", "kv-2"];
    let addrs: Vec<SocketAddr> = names
        .iter()
        .map(|_| free_addr())
        .collect::<Result<_, _>>()?;
    // In a StatefulSet this would be `Peers::Dns { service, namespace, .. }`.
    let peers: BTreeMap<String, String> = names
        .iter()
        .zip(&addrs)
        .map(|(n, a)| (n.to_string(), a.to_string()))
        .collect();

    let mut members = Vec::new();
    for (name, addr) in names.iter().zip(&addrs) {
        let mut config = ordkv::NodeConfig::new(dir.path().join(name));
        config.name = name.to_string();
        config.peers = ordkv::Peers::Static(peers.clone());
        config.peer_listen_addr = Some(*addr);
        members.push(ordkv::Node::open(config).await?);
    }
    for m in &members {
        m.wait_ready(Duration::from_secs(30)).await?;
    }
    let status = members[0].cluster_status().await?;
    println!(
        "cluster {} with {} members, leader ordinal {:?}",
        status.cluster_id,
        status.members.len(),
        status.leader
    );

    let revision = members[1]
        .kv()
        .put_value("greeting", "hello from kv-1")
        .await?;
    println!("wrote through kv-1 at revision {revision}");

    // A linearizable read on another follower sees it at once.
    let value = members[2].kv().get_value("greeting").await?;
    println!(
        "read through kv-2: {:?}",
        value.as_deref().map(String::from_utf8_lossy)
    );
    assert_eq!(value.as_deref(), Some(&b"hello from kv-1"[..]));

    // A serializable read never leaves the member; `min_revision` makes it read-your-writes.
    let local = members[2]
        .kv()
        .get(pb::GetRequest {
            key: "greeting".into(),
            consistency: pb::Consistency::Serializable as i32,
            min_revision: revision,
        })
        .await?;
    assert!(local.kv.is_some());

    for m in &members {
        m.shutdown().await?;
    }
    Ok(())
}
