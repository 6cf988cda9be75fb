//! The `ordkv` client commands against a real node, checked byte for byte: the README flow,
//! binary-safe stdin, `cluster status -o json`, `watch`, `scan`, `del`, `txn`, `compact`;
//! and against three members: commands fail over past a stopped member, `watch` resumes on
//! another member without gaps or duplicates, `cluster status` shows what is unknown.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ordkv_proto::v1::{GetRequest, PutRequest, RequestOp, TxnRequest, request_op};
use ordkv_tests::cluster::{CONVERGE, Cluster};
use ordkv_tests::{COMMAND_DEADLINE, LineChild, NodeProcess, free_port, ordkv_command, run_async};
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
        lease: 0,
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
    // A compare that does not hold is an answer (exit 0) unless --fail-if-false (exit 3).
    let out = node
        .cli(&[
            "txn",
            "--if-absent",
            "freed",
            "--then-put",
            "freed=2",
            "--fail-if-false",
        ])
        .await;
    assert_eq!(out.status.code(), Some(3), "txn --fail-if-false\n{out}");
    assert_eq!(out.stdout_str(), "FAILED\n", "{out}");
    assert_stdout(
        &node.cli(&["get", "freed"]).await,
        b"1\n",
        "no branch op ran",
    );
    let out = node
        .cli(&[
            "txn",
            "--if-value",
            "freed=1",
            "--then-put",
            "freed=2",
            "--fail-if-false",
        ])
        .await;
    assert_stdout(&out, b"SUCCEEDED\n", "txn --fail-if-false that holds");

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
                    lease: 0,
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

/// Runs `ordkv <args> --endpoints <endpoints>` to completion.
async fn cli_at(endpoints: &[String], args: &[&str]) -> ordkv_tests::Output {
    let mut cmd = ordkv_command();
    cmd.args(args).args(["--endpoints", &endpoints.join(",")]);
    run_async(cmd, None, COMMAND_DEADLINE).await
}

/// A follower of a formed three-member cluster: `(cluster, leader, follower)`.
async fn three_members() -> (Cluster, usize, usize) {
    let c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let follower = (0..3).find(|&i| i != leader).expect("a follower");
    (c, leader, follower)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_fail_over_past_a_stopped_member_and_status_shows_unknowns() {
    let (mut c, leader, stopped) = three_members().await;
    let other = (0..3).find(|&i| i != leader && i != stopped).unwrap();
    c.node_mut(stopped).sigterm();
    let exit = c.node_mut(stopped).wait_exit(Duration::from_secs(20)).await;
    assert!(exit.is_some(), "kv-{stopped} did not stop on SIGTERM");
    // The stopped member first: every command goes on to the others.
    let endpoints: Vec<String> = [stopped, other, leader]
        .iter()
        .map(|&i| c.node(i).client_addr())
        .collect();

    assert_stdout(
        &cli_at(&endpoints, &["put", "f/a", "1"]).await,
        b"OK\n",
        "put",
    );
    assert_stdout(&cli_at(&endpoints, &["get", "f/a"]).await, b"1\n", "get");
    assert_stdout(
        &cli_at(
            &endpoints,
            &["txn", "--if-value", "f/a=1", "--then-put", "f/b=2"],
        )
        .await,
        b"SUCCEEDED\n",
        "txn",
    );
    assert_stdout(
        &cli_at(&endpoints, &["scan", "--prefix", "f/"]).await,
        b"f/a\t1\nf/b\t2\n",
        "scan",
    );
    assert_stdout(&cli_at(&endpoints, &["del", "f/b"]).await, b"1\n", "del");

    // cluster status asks the leader (the first answer is the follower's); the stopped
    // member is unreachable and its progress unknown: null, not 0.
    let stopped_name = format!("kv-{stopped}");
    let status = c
        .wait_until(
            "the leader reports the stopped member unreachable",
            CONVERGE,
            || async {
                let out = cli_at(&endpoints, &["cluster", "status", "-o", "json"]).await;
                if !out.status.success() {
                    return Err(format!("cluster status failed\n{out}"));
                }
                let v: Value = serde_json::from_slice(&out.stdout)
                    .map_err(|e| format!("not JSON: {e}\n{out}"))?;
                let m = v["members"]
                    .as_array()
                    .and_then(|ms| ms.iter().find(|m| m["name"] == stopped_name.as_str()))
                    .cloned()
                    .ok_or_else(|| format!("no {stopped_name}: {v}"))?;
                if m["reachable"] != false {
                    return Err(format!("still reachable: {m}"));
                }
                Ok(v)
            },
        )
        .await;
    assert_eq!(
        status["member"],
        format!("kv-{leader}"),
        "answered by the leader: {status}"
    );
    assert_eq!(status["leader"], leader, "{status}");
    for m in status["members"].as_array().unwrap() {
        if m["name"] == stopped_name.as_str() {
            assert_eq!(m["applied_index"], Value::Null, "{m}");
            assert_eq!(m["lag"], Value::Null, "{m}");
        } else {
            assert_eq!(m["reachable"], true, "{m}");
            assert!(m["applied_index"].as_u64().is_some(), "{m}");
            assert!(m["lag"].as_u64().is_some(), "{m}");
        }
    }
    let out = cli_at(&endpoints, &["cluster", "status"]).await;
    assert!(out.status.success(), "{out}");
    let text = out.stdout_str();
    let row: Vec<&str> = text
        .lines()
        .find(|l| l.split_whitespace().any(|w| w == stopped_name))
        .unwrap_or_else(|| panic!("no row for {stopped_name}:\n{text}"))
        .split_whitespace()
        .collect();
    assert_eq!(row[row.len() - 3..], ["-", "no", "-"], "{text}");

    // A membership command fails over too (and reaches the leader from a follower).
    let out = cli_at(
        &endpoints,
        &["cluster", "transfer-leader", &other.to_string()],
    )
    .await;
    assert!(
        out.status.success(),
        "cluster transfer-leader {other}\n{out}"
    );
    assert_eq!(c.leader_among(&[leader, other]).await, other);
}

/// Creates `key` = `v-<key>` exactly once through `client`, retrying across an election: a
/// create-if-absent cannot be applied twice, whatever the outcome of a failed attempt.
async fn create_once(client: &ordkv_client::Client, key: &str) {
    let req = TxnRequest {
        compare: vec![ordkv_proto::v1::Compare {
            result: ordkv_proto::v1::compare::Result::Equal as i32,
            key: Bytes::copy_from_slice(key.as_bytes()),
            target: Some(ordkv_proto::v1::compare::Target::CreateRevision(0)),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::Put(PutRequest {
                key: Bytes::copy_from_slice(key.as_bytes()),
                value: Bytes::from(format!("v-{key}")),
                prev_kv: false,
                lease: 0,
            })),
        }],
        failure: vec![],
    };
    let until = Instant::now() + CONVERGE;
    loop {
        match client.txn(req.clone()).await {
            Ok(_) => return,
            Err(e)
                if Instant::now() < until
                    && e.code() != Some(ordkv_client::Code::InvalidArgument) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("create {key}: {e}"),
        }
    }
}

/// `ordkv watch` over three endpoints, reading from kv-`first`; `first` stops (SIGTERM)
/// while writes go on: every event is printed once, in order.
async fn watch_survives_the_stop_of_its_member(stop_leader: bool) {
    let (mut c, leader, follower) = three_members().await;
    let first = if stop_leader { leader } else { follower };
    let endpoints: Vec<String> = std::iter::once(first)
        .chain((0..3).filter(|&i| i != first))
        .map(|i| c.node(i).client_addr())
        .collect();
    // The writer tries the member that stops last.
    let mut writer_endpoints = endpoints.clone();
    writer_endpoints.rotate_left(1);
    let writer = ordkv_client::Client::connect(&writer_endpoints)
        .await
        .unwrap()
        .with_timeout(Some(Duration::from_secs(5)));
    let line = |key: &str| format!("PUT {key} v-{key}\n");

    // Watched from the first write on, so that every event is expected.
    create_once(&writer, "w/00").await;
    let start = writer
        .get(GetRequest {
            key: Bytes::from_static(b"w/00"),
            ..Default::default()
        })
        .await
        .unwrap()
        .kv
        .expect("w/00")
        .mod_revision;
    let mut cmd = ordkv_command();
    cmd.args([
        "watch",
        "--prefix",
        "w/",
        "--from-revision",
        &start.to_string(),
    ])
    .args(["--endpoints", &endpoints.join(",")]);
    let mut watch = LineChild::spawn(cmd);
    let mut expected = vec![line("w/00")];
    for i in 1..5 {
        create_once(&writer, &format!("w/{i:02}")).await;
        expected.push(line(&format!("w/{i:02}")));
    }
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        let got = watch.next_line(Duration::from_secs(20)).await;
        seen.push(
            String::from_utf8_lossy(&got.expect("a watch line before the stop")).into_owned(),
        );
    }
    assert_eq!(seen, expected, "before the stop");

    // The member the watch reads from stops (as in a rolling update); writes go on.
    c.node_mut(first).sigterm();
    assert!(
        c.node_mut(first)
            .wait_exit(Duration::from_secs(20))
            .await
            .is_some(),
        "kv-{first} did not stop on SIGTERM"
    );
    for i in 5..15 {
        create_once(&writer, &format!("w/{i:02}")).await;
        expected.push(line(&format!("w/{i:02}")));
    }
    create_once(&writer, "w/zz-last").await;
    expected.push(line("w/zz-last"));
    while seen.len() < expected.len() {
        match watch.next_line(Duration::from_secs(30)).await {
            Some(l) => seen.push(String::from_utf8_lossy(&l).into_owned()),
            None => panic!(
                "the watch printed {} of {} lines; stderr:\n{}\n{}",
                seen.len(),
                expected.len(),
                watch.kill(),
                c.logs()
            ),
        }
    }
    // Every event once, in order: the last line is the last write, nothing repeated before.
    assert_eq!(seen, expected, "after the stop");
    let stderr = watch.kill();
    assert!(
        stderr.contains("resum"),
        "the watch did not say it resumed: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_on_another_member_when_its_follower_stops() {
    watch_survives_the_stop_of_its_member(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_on_another_member_when_the_leader_it_reads_stops() {
    watch_survives_the_stop_of_its_member(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_endpoint_and_what_to_do() {
    let node = NodeProcess::start("kv-0").await;
    node.cli(&["put", "k", "v"]).await.assert_success("put");

    // The HTTP port given as the client endpoint.
    let http = node.http_addr().to_string();
    let out = cli_at(std::slice::from_ref(&http), &["get", "k"]).await;
    assert_fails(
        &out,
        1,
        &format!("{http} answered as an HTTP server"),
        "HTTP port",
    );
    assert!(out.stderr.contains("client port is 7379"), "{out}");
    // An endpoint without a port.
    let out = cli_at(&["127.0.0.1".into()], &["get", "k"]).await;
    assert_fails(&out, 1, "\"127.0.0.1\": no port", "no port");
    assert!(out.stderr.contains("127.0.0.1:7379"), "{out}");
    // A revision this member has not applied: what it applied and how long it waited.
    let out = node
        .cli(&["get", "k", "--min-revision", "1000", "--timeout", "1s"])
        .await;
    assert_fails(
        &out,
        1,
        "this member applied revision 1; waited 1s for 1000",
        "--min-revision",
    );
    assert!(out.stderr.contains(&node.client_addr()), "{out}");
    // The code is said once.
    let out = node.cli(&["put", "", "v"]).await;
    assert_fails(&out, 1, "INVALID_ARGUMENT: ", "empty key");
    assert!(
        !out.stderr
            .to_lowercase()
            .contains("invalid_argument: invalid argument"),
        "{out}"
    );
    // Client flags are not serve flags.
    let mut cmd = ordkv_command();
    cmd.args(["serve", "--help"]);
    let out = run_async(cmd, None, COMMAND_DEADLINE).await;
    assert!(out.status.success(), "{out}");
    assert!(!out.stdout_str().contains("--endpoints"), "{out}");
}
