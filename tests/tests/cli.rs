//! The `ordkv` client commands against a real node, checked byte for byte: the README flow,
//! binary-safe stdin, `cluster status -o json`, `watch`, `scan`, `del`, `txn`, `compact`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ordkv_proto::v1::{GetRequest, PutRequest, RequestOp, TxnRequest, request_op};
use ordkv_tests::{LineChild, NodeProcess, free_port, ordkv_command, run_async};
use serde_json::Value;

#[track_caller]
fn assert_stdout(out: &ordkv_tests::Output, expected: &[u8], what: &str) {
    assert!(out.status.success(), "{what}: failed\n{out}");
    assert_eq!(
        out.stdout,
        expected,
        "{what}: stdout {:?} != {:?}\n{out}",
        out.stdout_str(),
        String::from_utf8_lossy(expected)
    );
}

#[track_caller]
fn assert_fails(out: &ordkv_tests::Output, code: i32, stderr_fragment: &str, what: &str) {
    assert_eq!(out.status.code(), Some(code), "{what}: exit code\n{out}");
    assert!(
        out.stderr.contains(stderr_fragment),
        "{what}: stderr lacks {stderr_fragment:?}\n{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_flow_put_get_and_not_found() {
    let node = NodeProcess::start("kv-0").await;
    let out = node.cli(&["put", "greeting", "hello"]).await;
    assert_stdout(&out, b"OK\n", "put greeting hello");
    let out = node.cli(&["get", "greeting"]).await;
    assert_stdout(&out, b"hello\n", "get greeting");
    let out = node
        .cli(&[
            "get",
            "greeting",
            "--consistency",
            "serializable",
            "--min-revision",
            "1",
        ])
        .await;
    assert_stdout(&out, b"hello\n", "get greeting --consistency serializable");

    let out = node.cli(&["get", "missing"]).await;
    assert_fails(&out, 1, "not found", "get missing");
    assert!(
        out.stdout.is_empty(),
        "get missing printed {:?}",
        out.stdout_str()
    );

    let out = node.cli(&["-o", "json", "get", "greeting"]).await;
    assert!(out.status.success(), "{out}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert_eq!(v["key"], "greeting");
    assert_eq!(v["value"], "hello");
    assert_eq!(v["create_revision"], 1);
    assert_eq!(v["mod_revision"], 1);
    assert_eq!(v["version"], 1);
    assert_eq!(v["revision"], 1);

    let out = node.cli(&["-o", "json", "put", "greeting", "again"]).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert_eq!(v["revision"], 2, "{out}");

    // Errors go to stderr with a non-zero exit: a bad request, and no server at all.
    let out = node.cli(&["put", "", "v"]).await;
    assert_fails(&out, 1, "INVALID_ARGUMENT", "put with an empty key");
    let out = node.cli(&["get", "greeting"]).await;
    assert_stdout(&out, b"again\n", "the refused put changed nothing");
    let mut cmd = ordkv_command();
    cmd.args([
        "get",
        "greeting",
        "--timeout",
        "2s",
        "--endpoints",
        &format!("127.0.0.1:{}", free_port()),
    ]);
    let out = run_async(cmd, None, Duration::from_secs(20)).await;
    assert!(!out.status.success(), "get with no server succeeded\n{out}");
    assert!(out.stderr.contains("error"), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_from_stdin_is_binary_safe() {
    let node = NodeProcess::start("kv-0").await;
    let all: Vec<u8> = (0..=255u8).collect();
    let out = node.cli_stdin(&["put", "bin", "-"], all.clone()).await;
    assert_stdout(&out, b"OK\n", "put bin - < 0..=255");

    let stored = node
        .kv()
        .await
        .get(GetRequest {
            key: Bytes::from_static(b"bin"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .kv
        .expect("bin stored");
    assert_eq!(stored.value.as_ref(), all.as_slice(), "stored value");

    let mut expected = all.clone();
    expected.push(b'\n');
    let out = node.cli(&["get", "bin"]).await;
    assert_stdout(&out, &expected, "get bin");

    // Big and empty values through stdin too.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let out = node.cli_stdin(&["put", "big", "-"], big.clone()).await;
    assert_stdout(&out, b"OK\n", "put big -");
    let mut expected = big;
    expected.push(b'\n');
    assert_stdout(&node.cli(&["get", "big"]).await, &expected, "get big");
    let out = node.cli_stdin(&["put", "empty", "-"], Vec::new()).await;
    assert_stdout(&out, b"OK\n", "put empty - < /dev/null");
    assert_stdout(&node.cli(&["get", "empty"]).await, b"\n", "get empty");

    // `-o json` shows a non-UTF-8 value as base64.
    let out = node.cli(&["-o", "json", "get", "bin"]).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert!(v.get("value").is_none(), "{v}");
    let b64 = v["value_base64"].as_str().expect("value_base64");
    assert_eq!(b64.len(), 344, "base64 of 256 bytes: {b64}");
    assert!(
        b64.starts_with("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g"),
        "{b64}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_json_describes_the_single_member() {
    let node = NodeProcess::start("kv-0").await;
    node.cli(&["put", "k", "v"]).await.assert_success("put");
    let out = node.cli(&["cluster", "status", "-o", "json"]).await;
    assert!(out.status.success(), "{out}");
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("cluster status -o json is not JSON: {e}\n{out}"));
    let grpc = node.status().await;

    assert_eq!(v["cluster_id"], grpc.cluster_id.as_str(), "{v}");
    assert!(!grpc.cluster_id.is_empty());
    assert_eq!(v["leader"], 0, "{v}");
    let term = v["term"].as_u64().expect("term is a number");
    assert!(term >= 1, "{v}");
    let members = v["members"].as_array().expect("members is a list");
    assert_eq!(members.len(), 1, "{v}");
    let m = &members[0];
    assert_eq!(m["ordinal"], 0, "{m}");
    assert_eq!(m["name"], "kv-0", "{m}");
    assert_eq!(m["role"], "voter", "{m}");
    assert_eq!(m["peer_addr"], node.peer_addr().as_str(), "{m}");
    assert_eq!(m["client_addr"], node.client_addr().as_str(), "{m}");
    let applied = m["applied_index"]
        .as_u64()
        .expect("applied_index is a number");
    assert!(applied >= 2, "bootstrap + one put are applied: {m}");
    assert_eq!(m["reachable"], true, "{m}");

    // The human table names the member and the leader.
    let out = node.cli(&["cluster", "status"]).await;
    assert!(out.status.success(), "{out}");
    let text = out.stdout_str();
    assert!(text.contains("leader: kv-0 (ordinal 0)"), "{text}");
    assert!(text.contains(&node.client_addr()), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prefix_shows_puts_made_after_it_started() {
    let node = NodeProcess::start("kv-0").await;
    node.cli(&["put", "g-before", "old"])
        .await
        .assert_success("put");
    let mut watch = LineChild::spawn(node.cli_command(&["watch", "--prefix", "g"]));

    // The CLI prints nothing when the watch is established, so keep writing (a key outside
    // the prefix, then one inside) until the first event shows up.
    let mut kv = node.kv().await;
    let put = |key: String, value: String| PutRequest {
        key: key.into(),
        value: value.into(),
        prev_kv: false,
    };
    let until = Instant::now() + Duration::from_secs(15);
    let mut i = 0u32;
    let first = loop {
        kv.put(put(format!("h{i}"), "no".into())).await.unwrap();
        kv.put(put(format!("g{i}"), format!("v{i}"))).await.unwrap();
        if let Some(line) = watch.next_line(Duration::from_millis(200)).await {
            break line;
        }
        assert!(
            Instant::now() < until,
            "ordkv watch printed nothing within 15 s\n{}\n{}",
            watch.kill(),
            node.logs()
        );
        i += 1;
    };
    let first = String::from_utf8(first).expect("UTF-8 line");
    let j: u32 = first
        .strip_prefix("PUT g")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first watch line {first:?}"));
    assert!(j <= i, "{first:?}");
    assert_eq!(first, format!("PUT g{j} v{j}\n"));

    // Then every later watched write, in order, nothing else.
    kv.put(put("g-last".into(), "done".into())).await.unwrap();
    kv.put(put("zzz".into(), "no".into())).await.unwrap();
    let mut expected: Vec<String> = ((j + 1)..=i).map(|n| format!("PUT g{n} v{n}\n")).collect();
    expected.push("PUT g-last done\n".into());
    for want in expected {
        let line = watch
            .next_line(Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("no watch line for {want:?}"));
        assert_eq!(String::from_utf8_lossy(&line), want);
    }
    node.cli(&["del", "g-last"]).await.assert_success("del");
    let line = watch.next_line(Duration::from_secs(10)).await;
    assert_eq!(
        line.as_deref().map(String::from_utf8_lossy).as_deref(),
        Some("DELETE g-last\n")
    );
    drop(watch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_del_txn_and_compact() {
    let node = NodeProcess::start("kv-0").await;
    for (k, v) in [("a1", "v1"), ("a2", "v2"), ("b1", "vb")] {
        node.cli(&["put", k, v]).await.assert_success("put");
    }

    let scan = |args: &'static [&'static str]| {
        let mut full = vec!["scan"];
        full.extend_from_slice(args);
        node.cli_command(&full)
    };
    let run = |cmd| run_async(cmd, None, Duration::from_secs(20));
    assert_stdout(
        &run(scan(&["--prefix", "a"])).await,
        b"a1\tv1\na2\tv2\n",
        "scan --prefix a",
    );
    assert_stdout(&run(scan(&[])).await, b"a1\tv1\na2\tv2\nb1\tvb\n", "scan");
    assert_stdout(
        &run(scan(&["--from", "a2", "--to", "b2"])).await,
        b"a2\tv2\nb1\tvb\n",
        "scan --from a2 --to b2",
    );
    assert_stdout(
        &run(scan(&["--prefix", "a", "--keys-only"])).await,
        b"a1\na2\n",
        "scan --keys-only",
    );
    assert_stdout(
        &run(scan(&["--count-only"])).await,
        b"3\n",
        "scan --count-only",
    );
    assert_stdout(
        &run(scan(&["--prefix", "a", "--limit", "1"])).await,
        b"a1\tv1\n",
        "scan --limit 1",
    );
    assert_stdout(
        &run(scan(&["--prefix", "zz"])).await,
        b"",
        "scan of nothing",
    );

    // del: one key, nothing, a prefix.
    assert_stdout(&node.cli(&["del", "a1"]).await, b"1\n", "del a1");
    assert_fails(&node.cli(&["get", "a1"]).await, 1, "not found", "get a1");
    assert_stdout(&node.cli(&["del", "nothing"]).await, b"0\n", "del nothing");
    assert_stdout(
        &node.cli(&["del", "a", "--prefix"]).await,
        b"1\n",
        "del a --prefix",
    );
    assert_stdout(&run(scan(&[])).await, b"b1\tvb\n", "scan after del");

    // txn: compare-and-swap, both branches.
    let cas = [
        "txn",
        "--if-value",
        "b1=vb",
        "--then-put",
        "b1=new",
        "--else-put",
        "lost=1",
    ];
    assert_stdout(&node.cli(&cas).await, b"SUCCEEDED\n", "CAS that holds");
    assert_stdout(&node.cli(&["get", "b1"]).await, b"new\n", "b1 swapped");
    assert_fails(
        &node.cli(&["get", "lost"]).await,
        1,
        "not found",
        "else ran",
    );
    assert_stdout(&node.cli(&cas).await, b"FAILED\n", "CAS that fails");
    assert_stdout(&node.cli(&["get", "b1"]).await, b"new\n", "b1 unchanged");
    assert_stdout(&node.cli(&["get", "lost"]).await, b"1\n", "else branch ran");

    let lock = ["txn", "--if-absent", "lock", "--then-put", "lock=me"];
    assert_stdout(&node.cli(&lock).await, b"SUCCEEDED\n", "take the lock");
    let out = node
        .cli(&[
            "-o",
            "json",
            "txn",
            "--if-absent",
            "lock",
            "--then-put",
            "lock=you",
        ])
        .await;
    assert!(out.status.success(), "{out}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert_eq!(v["succeeded"], false, "{v}");
    assert_stdout(&node.cli(&["get", "lock"]).await, b"me\n", "lock holder");
    let out = node
        .cli(&[
            "txn",
            "--if-version",
            "lock=1",
            "--then-del",
            "lock",
            "--then-put",
            "freed=1",
        ])
        .await;
    assert_stdout(&out, b"SUCCEEDED\n", "release the lock");
    assert_fails(
        &node.cli(&["get", "lock"]).await,
        1,
        "not found",
        "lock gone",
    );
    assert_stdout(&node.cli(&["get", "freed"]).await, b"1\n", "second op ran");
    let out = node.cli(&["txn", "--if-absent", "x"]).await;
    assert_fails(&out, 1, "at least one", "txn without ops");

    // compact, then a watch from before it fails.
    let revision = node.status().await.revision;
    assert!(revision >= 5, "{revision}");
    let out = node.cli(&["compact", "3"]).await;
    assert_stdout(&out, b"compacted revision 3\n", "compact 3");
    assert_eq!(node.status().await.compact_revision, 3);
    let out = node.cli(&["watch", "--from-revision", "2"]).await;
    assert_fails(&out, 1, "OUT_OF_RANGE", "watch from a compacted revision");
}

/// Scanning more keys than one Range returns (10,000) follows `next_start`, with start/end
/// and with a prefix alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_follows_pages_beyond_the_range_limit() {
    const N: usize = 10_001;
    let node = NodeProcess::start("kv-0").await;
    let mut kv = node.kv().await;
    let keys: Vec<String> = (0..N).map(|i| format!("p/{i:05}")).collect();
    for chunk in keys.chunks(128) {
        let success = chunk
            .iter()
            .map(|k| RequestOp {
                request: Some(request_op::Request::Put(PutRequest {
                    key: Bytes::copy_from_slice(k.as_bytes()),
                    value: Bytes::from_static(b"v"),
                    prev_kv: false,
                })),
            })
            .collect();
        let r = kv
            .txn(TxnRequest {
                compare: vec![],
                success,
                failure: vec![],
            })
            .await
            .expect("txn of 128 puts");
        assert!(r.into_inner().succeeded);
    }
    let expected: String = keys.iter().map(|k| format!("{k}\n")).collect();

    let out = node
        .cli(&["scan", "--keys-only", "--from", "p/", "--to", "p0"])
        .await;
    assert!(
        out.status.success(),
        "scan --from --to failed\n{}",
        out.stderr
    );
    assert_eq!(
        out.stdout.len(),
        expected.len(),
        "scan --from p/ --to p0: wrong output size"
    );
    assert!(
        out.stdout == expected.as_bytes(),
        "scan --from p/ --to p0: wrong keys"
    );

    let out = node.cli(&["scan", "--keys-only", "--prefix", "p/"]).await;
    assert!(
        out.status.success(),
        "scan --prefix over {N} keys failed: {}",
        out.stderr
    );
    assert!(
        out.stdout == expected.as_bytes(),
        "scan --prefix p/: wrong keys"
    );
    let out = node.cli(&["scan", "--count-only", "--prefix", "p/"]).await;
    assert_stdout(
        &out,
        format!("{N}\n").as_bytes(),
        "scan --count-only --prefix",
    );
}
