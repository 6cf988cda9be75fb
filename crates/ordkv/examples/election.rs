//! Leader election among the members of an app that embeds ordkv: three replicated members in
//! one process (as `examples/replicated.rs`), each campaigning through its own member with a
//! session of 2 s. The elected one's member is then stopped without resigning, as a crashed
//! pod would be: its lease expires, and another campaigner takes over.
//!
//! `cargo run -p ordkv --example election`

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use ordkv::{Election, Session, StreamExt};

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

    // Every member's app campaigns; the first to win leads until its session ends.
    let (won_tx, mut won_rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, m) in members.iter().enumerate() {
        let kv = m.kv();
        let won = won_tx.clone();
        tokio::spawn(async move {
            let session = Session::new(kv.clone(), 2).await?;
            let election = Election::new(kv, "elections/app");
            election
                .campaign(&session, format!("app on kv-{i}"))
                .await?;
            let _ = won.send(i);
            // Lead until the session is lost (this member stops below).
            session.lost().await;
            Ok::<_, ordkv::RecipeError>(())
        });
    }

    let first = won_rx.recv().await.expect("someone wins");
    println!("kv-{first}'s app was elected; stopping kv-{first} without resigning");
    // An observer, on a member that stays, prints every change of leader.
    let observer = Election::new(members[(first + 1) % 3].kv(), "elections/app");
    let mut changes = observer.observe();
    tokio::spawn(async move {
        while let Some(leader) = changes.next().await {
            let value = leader.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            println!("observed leader: {}", value.as_deref().unwrap_or("(none)"));
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped_at = Instant::now();
    members[first].shutdown().await?;
    let next = won_rx.recv().await.expect("another app takes over");
    println!(
        "kv-{next}'s app took over {:.1} s after kv-{first} stopped (its lease had to expire)",
        stopped_at.elapsed().as_secs_f64()
    );
    assert_ne!(next, first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (i, m) in members.iter().enumerate() {
        if i != first {
            m.shutdown().await?;
        }
    }
    Ok(())
}
