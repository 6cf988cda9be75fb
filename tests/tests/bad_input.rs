//! "Every bad input gets a clear error and changes nothing ... The node keeps serving
//! others." Each case goes through the real gRPC server of an `ordkv serve` process and
//! checks the status code, a fragment of the message, and that the store did not change.

use std::time::Duration;

use bytes::Bytes;
use ordkv_proto::v1::{
    CompactRequest, Compare, DeleteRequest, GetRequest, PutRequest, PutResponse, RangeRequest,
    RequestOp, TxnRequest, WatchRequest, compare, kv_client::KvClient, request_op,
};
use ordkv_tests::{
    COMMAND_DEADLINE, NodeProcess, SplitMix64, free_port, ordkv_command, raw_unary, run_async,
};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// `(revision, number of keys, every key-value)`: what must not change.
async fn state(node: &NodeProcess) -> (u64, Vec<(Bytes, Bytes, u64)>) {
    let revision = node.status().await.revision;
    let kvs = node
        .kv()
        .await
        .range(RangeRequest::default())
        .await
        .expect("range everything")
        .into_inner()
        .kvs
        .into_iter()
        .map(|kv| (kv.key, kv.value, kv.mod_revision))
        .collect();
    (revision, kvs)
}

/// Asserts `result` failed with `code` and a message containing `fragment`.
#[track_caller]
fn refused<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    fragment: &str,
    what: &str,
) {
    match result {
        Ok(r) => panic!("{what}: accepted: {:?}", r.into_inner()),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: wrong code: {s:?}");
            assert!(
                s.message().contains(fragment),
                "{what}: message {:?} does not contain {fragment:?}",
                s.message()
            );
        }
    }
}

fn put_req(key: Bytes, value: Bytes) -> PutRequest {
    PutRequest {
        key,
        value,
        prev_kv: false,
        lease: 0,
    }
}

fn put_op(key: String) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::Put(put_req(key.into(), b("v")))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_refused_and_change_nothing() {
    let node = NodeProcess::start("kv-0").await;
    let mut c = node.kv().await;
    c.put(put_req(b("seed"), b("1"))).await.unwrap();
    let before = state(&node).await;
    assert_eq!(before.0, 1);

    // Empty keys.
    refused(
        c.put(put_req(Bytes::new(), b("v"))).await,
        Code::InvalidArgument,
        "key is empty",
        "put with an empty key",
    );
    refused(
        c.get(GetRequest::default()).await,
        Code::InvalidArgument,
        "key is empty",
        "get with an empty key",
    );
    refused(
        c.delete(DeleteRequest::default()).await,
        Code::InvalidArgument,
        "delete needs a key",
        "delete with no key",
    );

    // Oversized keys (default limit 4096).
    let long = Bytes::from(vec![b'k'; 4097]);
    refused(
        c.put(put_req(long.clone(), b("v"))).await,
        Code::InvalidArgument,
        "key is 4097 bytes; the limit is 4096",
        "put with a 4097-byte key",
    );
    refused(
        c.get(GetRequest {
            key: long.clone(),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "the limit is 4096",
        "get with a 4097-byte key",
    );

    // Unknown consistency levels (raw enum values).
    refused(
        c.get(GetRequest {
            key: b("seed"),
            consistency: 7,
            min_revision: 0,
        })
        .await,
        Code::InvalidArgument,
        "unknown consistency level 7",
        "get with consistency 7",
    );
    refused(
        c.range(RangeRequest {
            consistency: 7,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "unknown consistency level 7",
        "range with consistency 7",
    );

    // Inverted and ambiguous ranges.
    refused(
        c.range(RangeRequest {
            start: b("b"),
            end: b("a"),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "range end must be greater",
        "range with end < start",
    );
    refused(
        c.delete(DeleteRequest {
            key: b("seed"),
            end: b("a"),
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "range end must be greater",
        "delete [seed, a)",
    );
    refused(
        c.range(RangeRequest {
            keys_only: true,
            count_only: true,
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "exclude each other",
        "range keys_only + count_only",
    );

    // Txns over the limit of 128 compares + ops, and malformed ones.
    let ops = |n: usize| (0..n).map(|i| put_op(format!("txn/{i:03}"))).collect();
    refused(
        c.txn(TxnRequest {
            compare: vec![],
            success: ops(129),
            failure: vec![],
        })
        .await,
        Code::InvalidArgument,
        "txn has 129 compares and ops; the limit is 128",
        "txn with 129 ops",
    );
    let absent = Compare {
        result: compare::Result::Equal as i32,
        key: b("nothing"),
        target: Some(compare::Target::Version(0)),
    };
    refused(
        c.txn(TxnRequest {
            compare: vec![absent.clone()],
            success: ops(64),
            failure: ops(64),
        })
        .await,
        Code::InvalidArgument,
        "txn has 129 compares and ops",
        "txn with 1 compare + 128 ops",
    );
    refused(
        c.txn(TxnRequest {
            compare: vec![Compare {
                result: 9,
                ..absent.clone()
            }],
            success: ops(1),
            failure: vec![],
        })
        .await,
        Code::InvalidArgument,
        "unknown compare result 9",
        "txn with compare result 9",
    );
    refused(
        c.txn(TxnRequest {
            compare: vec![],
            success: vec![put_op("ok".into()), RequestOp { request: None }],
            failure: vec![],
        })
        .await,
        Code::InvalidArgument,
        "a txn op is empty",
        "txn with an empty op",
    );
    refused(
        c.txn(TxnRequest {
            compare: vec![],
            success: vec![
                put_op("ok".into()),
                RequestOp {
                    request: Some(request_op::Request::Put(put_req(Bytes::new(), b("v")))),
                },
            ],
            failure: vec![],
        })
        .await,
        Code::InvalidArgument,
        "key is empty",
        "txn with a valid put and an empty-key put",
    );

    // Compacting the future.
    refused(
        c.compact(CompactRequest { revision: 1000 }).await,
        Code::InvalidArgument,
        "in the future",
        "compact revision 1000",
    );

    assert_eq!(
        state(&node).await,
        before,
        "a refused request changed the store"
    );
    let txn_keys = c
        .range(RangeRequest {
            prefix: b("txn/"),
            count_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(txn_keys, 0, "part of a refused txn was applied");

    // The limits themselves are inclusive.
    let max_key = Bytes::from(vec![b'k'; 4096]);
    let r = c.put(put_req(max_key.clone(), b("v"))).await.unwrap();
    assert_eq!(r.into_inner().header.unwrap().revision, 2);
    let got = c
        .get(GetRequest {
            key: max_key,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .kv
        .expect("the 4096-byte key");
    assert_eq!(got.value, b("v"));
    let r = c
        .txn(TxnRequest {
            compare: vec![],
            success: ops(128),
            failure: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.succeeded);
    assert_eq!(r.header.unwrap().revision, 3, "a txn is one revision");
    let txn_keys = c
        .range(RangeRequest {
            prefix: b("txn/"),
            count_only: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(txn_keys, 128);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_value_limit_is_configurable_and_reported() {
    let node = NodeProcess::start_with("kv-0", &["--max-value-bytes", "1000"]).await;
    let limits = node.status().await.limits.expect("Status has limits");
    assert_eq!(limits.max_value_bytes, 1000);
    assert_eq!(limits.max_key_bytes, 4096);
    assert_eq!(limits.max_txn_ops, 128);

    let mut c = node.kv().await;
    let before = state(&node).await;
    refused(
        c.put(put_req(b("big"), Bytes::from(vec![7u8; 1001]))).await,
        Code::InvalidArgument,
        "value is 1001 bytes; the limit is 1000",
        "put of 1001 bytes",
    );
    refused(
        c.txn(TxnRequest {
            compare: vec![],
            success: vec![RequestOp {
                request: Some(request_op::Request::Put(put_req(
                    b("big"),
                    Bytes::from(vec![7u8; 1001]),
                ))),
            }],
            failure: vec![],
        })
        .await,
        Code::InvalidArgument,
        "the limit is 1000",
        "txn put of 1001 bytes",
    );
    assert_eq!(
        state(&node).await,
        before,
        "a refused put changed the store"
    );

    let r = c
        .put(put_req(b("big"), Bytes::from(vec![7u8; 1000])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.header.unwrap().revision, 1);
    let got = c
        .get(GetRequest {
            key: b("big"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .kv
        .expect("the 1000-byte value");
    assert_eq!(got.value, Bytes::from(vec![7u8; 1000]));
}

/// A message beyond the server's decoding limit (with `--max-value-bytes 1000`:
/// 128 × (4096 + 1000 + 64 KiB) = 9,040,896 bytes) is refused before it is parsed, as
/// `ordkv_server::ServerConfig::max_decoding_message_bytes` documents, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_is_refused_and_changes_nothing() {
    let node = NodeProcess::start_with("kv-0", &["--max-value-bytes", "1000"]).await;
    let before = state(&node).await;
    let huge = PutRequest {
        key: b("huge"),
        value: Bytes::from(vec![1u8; 10 * 1024 * 1024]),
        prev_kv: false,
        lease: 0,
    }
    .encode_to_vec();
    let result = raw_unary(node.channel().await, "/ordkv.v1.KV/Put", huge.into()).await;
    assert_eq!(
        state(&node).await,
        before,
        "a refused put changed the store"
    );
    let mut c = node.kv().await;
    put_works(&node, &mut c, "after-huge", "after a 10 MiB message").await;
    match result {
        Ok(_) => panic!("a 10 MiB put was accepted"),
        // tonic's code for an over-limit message; the message tells it from "compacted".
        Err(s) => {
            assert_eq!(s.code(), Code::OutOfRange, "10 MiB put: {s:?}");
            assert!(s.message().contains("too large"), "10 MiB put: {s:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_compacted_revision_is_out_of_range() {
    let node = NodeProcess::start("kv-0").await;
    let mut c = node.kv().await;
    for i in 1..=5u64 {
        let r = c
            .put(put_req(b("c"), Bytes::from(i.to_string())))
            .await
            .unwrap();
        assert_eq!(r.into_inner().header.unwrap().revision, i);
    }
    let r = c.compact(CompactRequest { revision: 4 }).await.unwrap();
    assert_eq!(r.into_inner().header.unwrap().revision, 5, "compact wrote");
    let status = node.status().await;
    assert_eq!((status.revision, status.compact_revision), (5, 4));

    for start in [1, 2, 3] {
        let watch = c
            .watch(WatchRequest {
                key: b("c"),
                start_revision: start,
                ..Default::default()
            })
            .await;
        let status = match watch {
            Err(s) => s,
            Ok(stream) => {
                let mut stream = stream.into_inner();
                let first = tokio::time::timeout(Duration::from_secs(10), stream.message()).await;
                match first {
                    Ok(Err(s)) => s,
                    other => panic!("watch from compacted revision {start}: got {other:?}"),
                }
            }
        };
        assert_eq!(status.code(), Code::OutOfRange, "start {start}: {status:?}");
        assert!(
            status.message().contains("compacted") && status.message().contains('4'),
            "start {start}: the message should say it is compacted and name 4: {status:?}"
        );
    }

    // From the compaction point on, history is still there.
    let mut stream = c
        .watch(WatchRequest {
            key: b("c"),
            start_revision: 4,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut revisions = Vec::new();
    while revisions.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("watch message within 10 s")
            .expect("watch from 4 works")
            .expect("stream open");
        revisions.extend(m.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision));
    }
    assert_eq!(revisions, [4, 5]);
    assert_eq!(node.status().await.revision, 5, "nothing changed");
}

async fn put_works(node: &NodeProcess, c: &mut KvClient<Channel>, key: &str, what: &str) -> u64 {
    let r = c
        .put(put_req(b(key), b("fine")))
        .await
        .unwrap_or_else(|e| panic!("{what}: a valid put failed: {e:?}\n{}", node.logs()))
        .into_inner();
    let got = c
        .get(GetRequest {
            key: b(key),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{what}: a valid get failed: {e:?}\n{}", node.logs()))
        .into_inner()
        .kv
        .expect("the key just put");
    assert_eq!(got.value, b("fine"));
    r.header.unwrap().revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_protobuf_and_unknown_rpcs_are_refused() {
    let node = NodeProcess::start("kv-0").await;
    let channel = node.channel().await;

    // The raw path itself works: a well-formed PutRequest through the raw codec.
    let good = put_req(b("raw"), b("ok")).encode_to_vec();
    let resp = raw_unary(channel.clone(), "/ordkv.v1.KV/Put", good.into())
        .await
        .expect("a valid raw put");
    let resp = PutResponse::decode(resp).expect("a PutResponse");
    assert_eq!(resp.header.unwrap().revision, 1);
    let before = state(&node).await;

    let malformed: [(&str, &[u8]); 5] = [
        (
            "length beyond the message",
            &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
        ),
        ("truncated varint", &[0x18, 0xff, 0xff, 0xff]),
        ("wrong wire type for bytes", &[0x08, 0x01]),
        ("field number 0", &[0x00, 0x01]),
        ("all ones", &[0xff; 32]),
    ];
    for (what, bytes) in malformed {
        let result = raw_unary(
            channel.clone(),
            "/ordkv.v1.KV/Put",
            Bytes::copy_from_slice(bytes),
        )
        .await;
        match result {
            Ok(body) => panic!("malformed PutRequest ({what}) answered OK: {body:?}"),
            Err(s) => {
                // A refusal of the message (tonic answers parse errors with INTERNAL, as the
                // gRPC status code guide says), not a dropped connection or a crash.
                assert!(
                    matches!(s.code(), Code::Internal | Code::InvalidArgument),
                    "malformed PutRequest ({what}): {s:?}"
                );
                assert!(!s.message().is_empty(), "{what}: no message: {s:?}");
            }
        }
    }
    // Garbage for every other method too.
    for method in ["Get", "Delete", "Range", "Txn", "Compact"] {
        let path = format!("/ordkv.v1.KV/{method}");
        let result = raw_unary(channel.clone(), &path, Bytes::from_static(&[0xff; 8])).await;
        assert!(result.is_err(), "{path} accepted garbage: {result:?}");
    }

    // Unknown RPCs.
    for path in [
        "/ordkv.v1.KV/Nope",
        "/ordkv.v1.Cluster/Explode",
        "/no.such.Service/Method",
    ] {
        let result = raw_unary(channel.clone(), path, Bytes::new()).await;
        match result {
            Ok(body) => panic!("{path} answered OK: {body:?}"),
            Err(s) => assert_eq!(s.code(), Code::Unimplemented, "{path}: {s:?}"),
        }
    }
    assert_eq!(state(&node).await, before, "bad requests changed the store");

    // A valid request on a new connection, and on the same one, still works.
    let mut fresh = node.kv().await;
    assert_eq!(
        put_works(&node, &mut fresh, "after", "new connection").await,
        2
    );
    let mut same = KvClient::new(channel);
    assert_eq!(
        put_works(&node, &mut same, "same", "same connection").await,
        3
    );
}

/// Writes `bytes` on a new TCP connection to `addr`, then reads until the server closes
/// it (or 3 s pass).
async fn send_garbage(addr: std::net::SocketAddr, bytes: &[u8]) {
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect for garbage");
    // The server may close as soon as it sees junk: a failed write is fine.
    let _ = conn.write_all(bytes).await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), conn.read_to_end(&mut sink)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes_on_the_ports_do_not_hurt_the_node() {
    let mut node = NodeProcess::start("kv-0").await;
    let seed = SplitMix64::seed_from_env_or_clock();
    println!("garbage seed: {seed} (rerun with ORDKV_TEST_SEED={seed})");
    let mut rng = SplitMix64::new(seed);
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    // A connection that stays open (and idle) while others send junk.
    let mut bystander = node.kv().await;
    put_works(&node, &mut bystander, "bystander", "before garbage").await;
    let before = state(&node).await;

    let mut junk: Vec<Vec<u8>> = vec![
        rng.bytes(64 * 1024),
        rng.bytes(7),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    ];
    let mut after_preface = preface.to_vec();
    after_preface.extend(rng.bytes(4096));
    junk.push(after_preface);
    // A valid preface, then a frame header announcing a 16 MiB frame of garbage.
    let mut big_frame = preface.to_vec();
    big_frame.extend([0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01]);
    big_frame.extend(rng.bytes(1024));
    junk.push(big_frame);

    for bytes in &junk {
        send_garbage(node.client_socket_addr(), bytes).await;
        send_garbage(node.http_addr(), bytes).await;
    }
    assert!(
        node.is_running(),
        "the node died on garbage (seed {seed})\n{}",
        node.logs()
    );
    assert_eq!(
        state(&node).await,
        before,
        "garbage changed the store (seed {seed})"
    );

    let mut fresh = node.kv().await;
    put_works(
        &node,
        &mut fresh,
        "after-garbage",
        "new connection after garbage",
    )
    .await;
    put_works(
        &node,
        &mut bystander,
        "bystander-2",
        "open connection after garbage",
    )
    .await;
    let (code, body) = node
        .http_get("/readyz")
        .await
        .expect("/readyz after garbage");
    assert_eq!((code, body.trim()), (200, "ok"), "seed {seed}");
    let (code, _) = node.http_get("/livez").await.expect("/livez after garbage");
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_serve_flags_exit_non_zero_naming_the_flag() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("never-created");
    let ports = [free_port(), free_port(), free_port()];
    let good = vec![
        "--data-dir".to_string(),
        data.display().to_string(),
        "--name".into(),
        "kv-0".into(),
        "--client-addr".into(),
        format!("127.0.0.1:{}", ports[0]),
        "--peer-addr".into(),
        format!("127.0.0.1:{}", ports[1]),
        "--http-addr".into(),
        format!("127.0.0.1:{}", ports[2]),
    ];
    let cases: [(&str, &str); 7] = [
        ("--max-voters", "0"),
        ("--worker-threads", "0"),
        ("--peers", "garbage"),
        ("--client-addr", "notanaddr"),
        ("--peer-addr", "127.0.0.1:99999"),
        ("--max-key-bytes", "0"),
        ("--name", "Not_A_DNS_Label"),
    ];
    for (flag, value) in cases {
        let mut cmd = ordkv_command();
        cmd.arg("serve").args(&good).args([flag, value]);
        let out = run_async(cmd, None, COMMAND_DEADLINE).await;
        assert!(
            !out.status.success(),
            "serve {flag} {value} did not fail\n{out}"
        );
        let named = out.stderr.contains(flag)
            || (flag == "--name" && out.stderr.contains("Not_A_DNS_Label"));
        assert!(
            named,
            "serve {flag} {value}: the error does not name it\n{out}"
        );
        assert!(
            !data.exists(),
            "serve {flag} {value} created the data dir before failing"
        );
    }
}
