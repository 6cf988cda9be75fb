//! A store that runs out of room: the data dir on a small filesystem of its own (a tmpfs of
//! fixed size, mounted for the test; needs root, as CI has) and a store over its quota.
//! Writes that add data are refused with RESOURCE_EXHAUSTED and a message that says what to
//! do, before the disk is full; reads, deletes and compactions go on; nothing acknowledged
//! is lost; writes are accepted again once space is back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ordkv_proto::v1::{
    CompactRequest, DeleteRequest, GetRequest, PutRequest, RequestOp, TxnRequest,
    kv_client::KvClient, request_op,
};
use ordkv_tests::{NodeProcess, Ports};
use tonic::Code;
use tonic::transport::Channel;

/// A tmpfs of `size_mb` at `dir`, unmounted (lazily: the node may still hold files) on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size_mb: u64) -> Result<SmallDisk, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(SmallDisk(dir.to_path_buf()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: Bytes) -> Result<u64, tonic::Status> {
    let r = kv
        .put(PutRequest {
            key: Bytes::from(key.to_string()),
            value,
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner().header.map_or(0, |h| h.revision))
}

async fn get(kv: &mut KvClient<Channel>, key: &str) -> Option<Bytes> {
    let r = kv
        .get(GetRequest {
            key: Bytes::from(key.to_string()),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e}"));
    r.into_inner().kv.map(|kv| kv.value)
}

fn assert_no_space(status: &tonic::Status, says: &str) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains(says),
        "the refusal should say {says:?}: {}",
        status.message()
    );
    let outcome = status
        .metadata()
        .get(ordkv_proto::WRITE_OUTCOME_METADATA_KEY);
    assert_eq!(
        outcome.and_then(|v| v.to_str().ok()),
        Some(ordkv_proto::NOT_APPLIED),
        "a refused write is not applied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filling_disk_refuses_writes_before_it_is_full_and_accepts_them_again_when_space_is_back()
{
    let mut node = NodeProcess::new(
        "kv-0",
        Ports::free(),
        &["--min-free-bytes".into(), (160u64 << 20).to_string()],
    );
    let disk = match SmallDisk::mount(node.data_dir(), 512) {
        Ok(d) => d,
        Err(e) => panic!("this test mounts a tmpfs and needs root (CI runs as root): {e}"),
    };
    node.spawn();
    node.wait_ready().await;
    let mut kv = node.kv().await;

    // Space that is not ordkv's, given back later.
    let filler = node.data_dir().join("filler");
    std::fs::write(&filler, vec![1u8; 160 << 20]).unwrap();

    let value = Bytes::from(vec![7u8; 1 << 20]);
    let mut acked = Vec::new();
    let refusal = loop {
        let key = format!("big/{:04}", acked.len());
        match put(&mut kv, &key, value.clone()).await {
            Ok(_) => acked.push(key),
            Err(status) => break status,
        }
        assert!(
            acked.len() < 384,
            "384 MiB written to a 384 MiB disk and never refused"
        );
    };
    println!(
        "refused after {} acknowledged 1 MiB puts: {}",
        acked.len(),
        refusal.message()
    );
    assert_no_space(&refusal, "bytes free");
    assert!(
        !acked.is_empty(),
        "refused before any write: the reserve is too large for the test"
    );

    // Reads, deletes and compactions go on; the node stays up and every acked write is there.
    for key in &acked {
        assert_eq!(get(&mut kv, key).await.as_ref(), Some(&value), "{key} lost");
    }
    let deleted = kv
        .delete(DeleteRequest {
            key: Bytes::from(acked[0].clone()),
            ..Default::default()
        })
        .await
        .expect("a delete frees space and is not refused")
        .into_inner();
    assert_eq!(deleted.deleted, 1);
    let revision = deleted.header.map_or(0, |h| h.revision);
    kv.compact(CompactRequest { revision })
        .await
        .expect("a compaction is not refused");
    let still = put(&mut kv, "small", Bytes::from_static(b"x")).await;
    assert_no_space(&still.expect_err("still short of space"), "bytes free");

    // Space comes back: writes are accepted again within a few seconds.
    std::fs::remove_file(&filler).unwrap();
    let back = Instant::now();
    let revision = loop {
        match put(&mut kv, "after", Bytes::from_static(b"space is back")).await {
            Ok(r) => break r,
            Err(s)
                if s.code() == Code::ResourceExhausted
                    && back.elapsed() < Duration::from_secs(10) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(s) => panic!(
                "writes not accepted {:?} after space came back: {s}",
                back.elapsed()
            ),
        }
    };
    println!(
        "writes accepted again {:?} after the filler was removed (revision {revision})",
        back.elapsed()
    );
    assert_eq!(
        get(&mut kv, "after").await.as_deref(),
        Some(&b"space is back"[..])
    );

    // And after a restart on the same small disk, everything acknowledged is still there.
    node.kill_9();
    node.spawn();
    node.wait_ready().await;
    let mut kv = node.kv().await;
    for key in &acked[1..] {
        assert_eq!(
            get(&mut kv, key).await.as_ref(),
            Some(&value),
            "{key} lost after restart"
        );
    }
    assert_eq!(
        get(&mut kv, "after").await.as_deref(),
        Some(&b"space is back"[..])
    );
    drop(node);
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_over_its_quota_refuses_puts_but_serves_reads_deletes_and_compactions() {
    // Any store on disk is larger than one byte.
    let node = NodeProcess::start_with("kv-0", &["--quota-bytes", "1"]).await;
    let mut kv = node.kv().await;
    let refused = put(&mut kv, "k", Bytes::from_static(b"v"))
        .await
        .expect_err("over quota");
    assert_no_space(&refused, "--quota-bytes");
    let put_op = RequestOp {
        request: Some(request_op::Request::Put(PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            ..Default::default()
        })),
    };
    let txn = kv
        .txn(TxnRequest {
            success: vec![put_op],
            ..Default::default()
        })
        .await
        .expect_err("a transaction with a put is refused too");
    assert_no_space(&txn, "--quota-bytes");
    assert_eq!(
        get(&mut kv, "k").await,
        None,
        "nothing of the refused writes applied"
    );
    // Deletes (alone or in a transaction) and compactions pass: they are the way out.
    let del_op = RequestOp {
        request: Some(request_op::Request::Delete(DeleteRequest {
            key: Bytes::from_static(b"k"),
            ..Default::default()
        })),
    };
    kv.txn(TxnRequest {
        success: vec![del_op],
        ..Default::default()
    })
    .await
    .expect("a delete-only transaction passes");
    let revision = kv
        .delete(DeleteRequest {
            key: Bytes::from_static(b"k"),
            ..Default::default()
        })
        .await
        .expect("a delete passes")
        .into_inner()
        .header
        .map_or(0, |h| h.revision);
    kv.compact(CompactRequest { revision })
        .await
        .expect("a compaction passes");
    let metrics = node.http_get("/metrics").await.unwrap().1;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ordkv_no_space_alarm") && l.ends_with(" 1")),
        "the alarm gauge is raised:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("space"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
