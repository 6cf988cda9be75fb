//! A leader SIGKILLed and started again at once, on its own data dir, must not serve a
//! linearizable read older than a write acknowledged before the read began: not the first read
//! it answers, nor any after.
//!
//! Each round puts `k` = `r{round}-{0..PUTS}` through the leader, one acknowledged put after
//! the other, SIGKILLs the leader, starts it again at once, and sends it linearizable gets of
//! `k` from the moment its client port answers until one succeeds. Before the fix (openraft's
//! leader restore: the restarted member led again in its old term with the commit index it
//! had saved, which lags the real one) several rounds in fifteen read an older value.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ordkv_proto::v1::{Consistency, GetRequest, PutRequest};
use ordkv_tests::cluster::{CONVERGE, Cluster};
use tonic::transport::Endpoint;

const ROUNDS: usize = 15;
const PUTS: usize = 200;

/// One linearizable get of `k` on the member at `addr`, over a fresh connection.
async fn get_k(addr: &str) -> Result<(Option<Bytes>, String, u64), String> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid endpoint")
        .connect_timeout(Duration::from_millis(200))
        .timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let resp = ordkv_proto::v1::kv_client::KvClient::new(channel)
        .get(GetRequest {
            key: Bytes::from_static(b"k"),
            consistency: Consistency::Linearizable as i32,
            min_revision: 0,
        })
        .await
        .map_err(|e| format!("{:?}: {}", e.code(), e.message()))?
        .into_inner();
    let header = resp.header.unwrap_or_default();
    Ok((resp.kv.map(|kv| kv.value), header.member, header.raft_term))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_restarted_at_once_serves_no_stale_linearizable_read() {
    let mut c = Cluster::start(3, &[]).await;
    let mut stale = Vec::new();
    for round in 0..ROUNDS {
        let leader = c.leader().await;
        let mut kv = c.kv(leader);
        let mut last = String::new();
        for n in 0..PUTS {
            last = format!("r{round}-{n}");
            kv.put(PutRequest {
                key: Bytes::from_static(b"k"),
                value: Bytes::from(last.clone()),
                prev_kv: false,
                lease: 0,
            })
            .await
            .unwrap_or_else(|e| panic!("round {round}: put {last} via kv-{leader}: {e:?}"));
        }

        c.kill_9(leader);
        c.spawn(leader);
        let addr = c.node(leader).client_addr();
        let restarted = Instant::now();
        let (value, member, term) = loop {
            match get_k(&addr).await {
                Ok(read) => break read,
                Err(_) if restarted.elapsed() < CONVERGE => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => panic!(
                    "round {round}: no linearizable read on the restarted kv-{leader}: {e}\n{}",
                    c.logs()
                ),
            }
        };
        let got = value.map(|v| String::from_utf8_lossy(&v).into_owned());
        println!(
            "round {round}: kv-{leader} restarted; first read after {} ms served by {member} in \
             term {term}: {got:?}",
            restarted.elapsed().as_millis()
        );
        if got.as_deref() != Some(last.as_str()) {
            stale.push(format!(
                "round {round}: got {got:?}, last acknowledged {last:?} ({member}, term {term})"
            ));
        }
        c.wait_ready(leader).await;
    }
    assert!(
        stale.is_empty(),
        "stale linearizable reads in {} of {ROUNDS} rounds:\n{}",
        stale.len(),
        stale.join("\n")
    );
}
