//! Durability and data-dir ownership of the real process: acknowledged writes survive a
//! SIGKILL under load; a data dir is used by one process at a time, by its own member only,
//! and a corrupt one is refused untouched.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ordkv_proto::v1::{Consistency, GetRequest, PutRequest};
use ordkv_tests::{COMMAND_DEADLINE, NodeProcess, free_port, ordkv_command, run_async};
use tokio::sync::Mutex;

const WRITERS: usize = 8;
const MAX_WRITES: usize = 2000;
const LOAD_FOR: Duration = Duration::from_secs(2);

/// What one acknowledged write created.
#[derive(Debug, Clone)]
struct Acked {
    value: Bytes,
    revision: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill_under_load() {
    let mut node = NodeProcess::start("kv-0").await;
    let acked: Arc<Mutex<HashMap<Bytes, Acked>>> = Arc::default();
    let started = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        // One connection per writer, so the load really is concurrent.
        let mut client = node.kv().await;
        let (acked, started, failed, stop) =
            (acked.clone(), started.clone(), failed.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) && t0.elapsed() < LOAD_FOR {
                if started.fetch_add(1, Ordering::SeqCst) >= MAX_WRITES {
                    break;
                }
                let key = Bytes::from(format!("load/{w}/{i:05}"));
                let value = Bytes::from(format!("value-{w}-{i}-{}", "x".repeat(i as usize % 64)));
                let put = client.put(PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    prev_kv: false,
                    lease: 0,
                });
                match put.await {
                    Ok(resp) => {
                        let revision = resp.into_inner().header.expect("header").revision;
                        acked.lock().await.insert(key, Acked { value, revision });
                    }
                    Err(_) => {
                        // Not acknowledged: may or may not be there after the restart.
                        failed.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
                i += 1;
            }
        }));
    }

    // SIGKILL mid-load: once a good share of writes is acknowledged (or after half the load
    // period on a slow machine), while every writer still has a request in flight.
    let kill_deadline = Instant::now() + Duration::from_secs(1);
    while acked.lock().await.len() < MAX_WRITES / 4 && Instant::now() < kill_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let acked_before_kill = acked.lock().await.len();
    node.kill_9();
    for w in writers {
        w.await.expect("writer task");
    }
    stop.store(true, Ordering::SeqCst);
    let acked = std::mem::take(&mut *acked.lock().await);
    let failed = failed.load(Ordering::SeqCst);
    eprintln!(
        "acknowledged {} writes ({acked_before_kill} before SIGKILL), {failed} failed after it",
        acked.len()
    );
    assert!(
        acked.len() >= 20,
        "too few writes acknowledged before the kill to test anything: {}\n{}",
        acked.len(),
        node.logs()
    );
    assert!(
        acked.len() < MAX_WRITES,
        "the load finished before the SIGKILL: nothing was in flight"
    );
    assert!(
        failed > 0,
        "no write failed: the kill did not happen under load"
    );
    let max_revision = acked.values().map(|a| a.revision).max().unwrap();
    let mut revisions: Vec<u64> = acked.values().map(|a| a.revision).collect();
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(
        revisions.len(),
        acked.len(),
        "two acknowledged puts reported the same revision"
    );

    node.restart().await;
    let status = node.status().await;
    assert!(
        status.revision >= max_revision,
        "revision went back: {} after restart < {max_revision} acknowledged\n{}",
        status.revision,
        node.logs()
    );
    let mut client = node.kv().await;
    let mut lost = Vec::new();
    for (key, a) in &acked {
        let got = client
            .get(GetRequest {
                key: key.clone(),
                consistency: Consistency::Linearizable as i32,
                min_revision: 0,
            })
            .await
            .unwrap_or_else(|e| panic!("get {key:?} after restart: {e:?}\n{}", node.logs()))
            .into_inner()
            .kv;
        match got {
            Some(kv) if kv.value == a.value && kv.mod_revision == a.revision => {}
            other => lost.push(format!(
                "{key:?}: acknowledged {:?} at revision {}, found {other:?}",
                a.value, a.revision
            )),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost or changed after SIGKILL + restart:\n{}\n{}",
        lost.len(),
        acked.len(),
        lost.iter().take(20).cloned().collect::<Vec<_>>().join("\n"),
        node.logs()
    );

    // And it still takes writes, one revision after the last one.
    let r = client
        .put(PutRequest {
            key: Bytes::from_static(b"after-restart"),
            value: Bytes::from_static(b"1"),
            prev_kv: false,
            lease: 0,
        })
        .await
        .expect("put after restart")
        .into_inner();
    assert_eq!(r.header.unwrap().revision, status.revision + 1);
}

/// `ordkv serve` on `data_dir` with fresh ports; expected to exit on its own.
fn serve_command(data_dir: &std::path::Path, name: &str) -> std::process::Command {
    let mut cmd = ordkv_command();
    cmd.args(["serve", "--data-dir"])
        .arg(data_dir)
        .args(["--name", name])
        .args(["--client-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--peer-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-addr", &format!("127.0.0.1:{}", free_port())]);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_data_dir_is_refused() {
    let mut node = NodeProcess::start("kv-0").await;
    let mut client = node.kv().await;
    client
        .put(PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"before"),
            prev_kv: false,
            lease: 0,
        })
        .await
        .unwrap();

    let second = run_async(
        serve_command(node.data_dir(), "kv-0"),
        None,
        COMMAND_DEADLINE,
    )
    .await;
    assert!(
        !second.status.success(),
        "a second serve on a locked data dir started\n{second}"
    );
    assert!(
        second.stderr.contains("another ordkv process"),
        "the error does not mention the other process\n{second}"
    );

    // The first keeps serving, reads and writes.
    assert!(node.is_running(), "the first node died\n{}", node.logs());
    let r = client
        .put(PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"after"),
            prev_kv: true,
            lease: 0,
        })
        .await
        .unwrap_or_else(|e| panic!("first node stopped serving: {e:?}\n{}", node.logs()))
        .into_inner();
    assert_eq!(r.header.unwrap().revision, 2);
    assert_eq!(r.prev_kv.unwrap().value, Bytes::from_static(b"before"));
    node.wait_ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_another_member_is_refused_untouched() {
    let mut node = NodeProcess::start("kv-0").await;
    node.kv()
        .await
        .put(PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            prev_kv: false,
            lease: 0,
        })
        .await
        .unwrap();
    node.kill_9();
    let dir = node.data_dir().to_path_buf();
    let member_json = std::fs::read(dir.join("member.json")).expect("member.json exists");
    let before = ordkv_tests::tree_fingerprint(&dir);

    let out = run_async(serve_command(&dir, "kv-1"), None, COMMAND_DEADLINE).await;
    assert!(
        !out.status.success(),
        "kv-1 started on kv-0's data dir\n{out}"
    );
    assert!(
        out.stderr.contains("kv-0") && out.stderr.contains("belongs to"),
        "the error does not say the dir belongs to kv-0\n{out}"
    );
    assert_eq!(
        std::fs::read(dir.join("member.json")).unwrap(),
        member_json,
        "member.json changed"
    );
    assert_eq!(
        ordkv_tests::tree_fingerprint(&dir),
        before,
        "the data dir changed"
    );

    // Its own member still opens it, with the data.
    node.restart().await;
    let got = node
        .kv()
        .await
        .get(GetRequest {
            key: Bytes::from_static(b"k"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .kv
        .expect("k survived");
    assert_eq!(got.value, Bytes::from_static(b"v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_member_json_is_refused_untouched() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    let garbage = b"{\"format\": 1, \"cluster_id\": \x00\xff garbage";
    std::fs::write(dir.join("member.json"), garbage).unwrap();

    let out = run_async(serve_command(&dir, "kv-0"), None, COMMAND_DEADLINE).await;
    assert!(!out.status.success(), "started on a corrupt dir\n{out}");
    assert!(
        out.stderr.contains("corrupt"),
        "the error does not say corrupt\n{out}"
    );
    assert!(
        out.stderr.contains("member.json"),
        "the error does not name member.json\n{out}"
    );
    assert_eq!(std::fs::read(dir.join("member.json")).unwrap(), garbage);
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "LOCK")
        .collect();
    assert_eq!(names, ["member.json"], "something was created in the dir");
}
