//! Embeds an ordkv replica in this process: put, get, a compare-and-swap, a range and a
//! watch, all as async calls with no gRPC in the path. Then serves nothing and exits.
//!
//! `cargo run -p ordkv --example embedded`

use futures::StreamExt;
use ordkv::pb;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let node = ordkv::Node::open(ordkv::NodeConfig::new(dir.path())).await?;
    let kv = node.kv();

    // Watch everything under "user/" from now on.
    let mut events = kv
        .watch(pb::WatchRequest {
            prefix: "user/".into(),
            ..Default::default()
        })
        .await?;
    assert!(events.next().await.transpose()?.is_some_and(|r| r.created));

    let rev = kv.put_value("user/1", "ada").await?;
    println!("put user/1 at revision {rev}");
    assert_eq!(kv.get_value("user/1").await?.as_deref(), Some(&b"ada"[..]));

    // Compare-and-swap: only if user/1 is still at the revision we wrote.
    let cas = kv
        .txn(pb::TxnRequest {
            compare: vec![pb::Compare {
                key: "user/1".into(),
                result: pb::compare::Result::Equal as i32,
                target: Some(pb::compare::Target::ModRevision(rev)),
            }],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::Put(pb::PutRequest {
                    key: "user/1".into(),
                    value: "ada lovelace".into(),
                    prev_kv: false,
                    lease: 0,
                })),
            }],
            failure: vec![],
        })
        .await?;
    println!("compare-and-swap succeeded: {}", cas.succeeded);
    assert!(cas.succeeded);

    let listed = kv
        .range(pb::RangeRequest {
            prefix: "user/".into(),
            ..Default::default()
        })
        .await?;
    for item in &listed.kvs {
        println!(
            "{} = {} (version {})",
            String::from_utf8_lossy(&item.key),
            String::from_utf8_lossy(&item.value),
            item.version
        );
    }

    for _ in 0..2 {
        let batch = events.next().await.ok_or("watch ended")??;
        for e in batch.events {
            let kv = e.kv.unwrap_or_default();
            println!(
                "watch: {} at revision {}",
                String::from_utf8_lossy(&kv.key),
                kv.mod_revision
            );
        }
    }

    node.shutdown().await?;
    Ok(())
}
