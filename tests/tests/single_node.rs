//! One `ordkv serve` process through its real gRPC server: every KV operation with exact
//! results, response headers (revision, member, cluster id, term), one revision per write,
//! and watches (created message, live events, replay from a start revision).

use std::time::Duration;

use bytes::Bytes;
use ordkv_proto::v1::{
    Compare, Consistency, DeleteRequest, Event, GetRequest, KeyValue, PutRequest, RangeRequest,
    RangeResponse, RequestOp, ResponseHeader, TxnRequest, WatchRequest, WatchResponse, compare,
    event::EventType, kv_client::KvClient, request_op, response_op,
};
use ordkv_tests::NodeProcess;
use tonic::Streaming;
use tonic::transport::Channel;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn kv(key: &str, value: &str, create: u64, modified: u64, version: u64) -> KeyValue {
    KeyValue {
        key: b(key),
        value: b(value),
        create_revision: create,
        mod_revision: modified,
        version,
        lease: 0,
    }
}

/// Checks every field of a response header.
#[track_caller]
fn header(h: Option<&ResponseHeader>, revision: u64, cluster_id: &str, what: &str) {
    let h = h.unwrap_or_else(|| panic!("{what}: response has no header"));
    assert_eq!(h.revision, revision, "{what}: header revision ({h:?})");
    assert_eq!(h.member, "kv-0", "{what}: header member ({h:?})");
    assert_eq!(
        h.cluster_id, cluster_id,
        "{what}: header cluster_id ({h:?})"
    );
    assert!(h.raft_term >= 1, "{what}: header raft_term ({h:?})");
}

fn keys(r: &RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

async fn put(kv: &mut KvClient<Channel>, key: &str, value: &str) -> u64 {
    kv.put(PutRequest {
        key: b(key),
        value: b(value),
        prev_kv: false,
        lease: 0,
    })
    .await
    .unwrap_or_else(|e| panic!("put {key}: {e:?}"))
    .into_inner()
    .header
    .expect("header")
    .revision
}

async fn get(kv: &mut KvClient<Channel>, key: &str) -> Option<KeyValue> {
    kv.get(GetRequest {
        key: b(key),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("get {key}: {e:?}"))
    .into_inner()
    .kv
}

async fn range(kv: &mut KvClient<Channel>, req: RangeRequest) -> RangeResponse {
    kv.range(req.clone())
        .await
        .unwrap_or_else(|e| panic!("range {req:?}: {e:?}"))
        .into_inner()
}

fn put_op(key: &str, value: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::Put(PutRequest {
            key: b(key),
            value: b(value),
            prev_kv: false,
            lease: 0,
        })),
    }
}

fn del_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::Delete(DeleteRequest {
            key: b(key),
            ..Default::default()
        })),
    }
}

fn value_eq(key: &str, value: &str) -> Compare {
    Compare {
        result: compare::Result::Equal as i32,
        key: b(key),
        target: Some(compare::Target::Value(b(value))),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_delete_range_txn_with_headers_and_revisions() {
    let node = NodeProcess::start("kv-0").await;
    let status = node.status().await;
    assert_eq!(status.revision, 0, "a fresh store starts at revision 0");
    let cid = status.cluster_id.clone();
    assert!(!cid.is_empty(), "empty cluster id");
    header(status.header.as_ref(), 0, &cid, "Status");
    let mut c = node.kv().await;

    // Put: each creates exactly one revision; prev_kv when asked and present.
    let r = c
        .put(PutRequest {
            key: b("a"),
            value: b("1"),
            prev_kv: true,
            lease: 0,
        })
        .await
        .unwrap()
        .into_inner();
    header(r.header.as_ref(), 1, &cid, "put a=1");
    assert_eq!(r.prev_kv, None, "prev_kv of a new key");
    let r = c
        .put(PutRequest {
            key: b("a"),
            value: b("2"),
            prev_kv: true,
            lease: 0,
        })
        .await
        .unwrap()
        .into_inner();
    header(r.header.as_ref(), 2, &cid, "put a=2");
    assert_eq!(r.prev_kv, Some(kv("a", "1", 1, 1, 1)));
    let r = c
        .put(PutRequest {
            key: b("b"),
            value: b("x"),
            prev_kv: false,
            lease: 0,
        })
        .await
        .unwrap()
        .into_inner();
    header(r.header.as_ref(), 3, &cid, "put b");
    assert_eq!(r.prev_kv, None, "prev_kv not asked for");

    // Get: linearizable (default), explicit levels, missing keys, min_revision.
    for consistency in [
        Consistency::Unspecified,
        Consistency::Linearizable,
        Consistency::Serializable,
    ] {
        let r = c
            .get(GetRequest {
                key: b("a"),
                consistency: consistency as i32,
                min_revision: 0,
            })
            .await
            .unwrap()
            .into_inner();
        header(r.header.as_ref(), 3, &cid, "get a");
        assert_eq!(r.kv, Some(kv("a", "2", 1, 2, 2)), "{consistency:?}");
    }
    let r = c
        .get(GetRequest {
            key: b("b"),
            min_revision: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.kv, Some(kv("b", "x", 3, 3, 1)));
    let r = c
        .get(GetRequest {
            key: b("missing"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    header(r.header.as_ref(), 3, &cid, "get missing");
    assert_eq!(r.kv, None);

    // Range.
    let mut rev = 3;
    for key in ["app/1", "app/2", "app/3", "app", "aq"] {
        rev += 1;
        assert_eq!(
            put(&mut c, key, &format!("v-{key}")).await,
            rev,
            "put {key}"
        );
    }
    assert_eq!(rev, 8);
    let all = range(&mut c, RangeRequest::default()).await;
    header(all.header.as_ref(), 8, &cid, "range all");
    assert_eq!(
        keys(&all),
        ["a", "app", "app/1", "app/2", "app/3", "aq", "b"]
    );
    assert_eq!((all.count, all.more), (7, false));
    assert!(all.next_start.is_empty());

    let prefixed = range(
        &mut c,
        RangeRequest {
            prefix: b("app/"),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        prefixed.kvs,
        vec![
            kv("app/1", "v-app/1", 4, 4, 1),
            kv("app/2", "v-app/2", 5, 5, 1),
            kv("app/3", "v-app/3", 6, 6, 1),
        ]
    );
    assert_eq!((prefixed.count, prefixed.more), (3, false));

    let page = range(
        &mut c,
        RangeRequest {
            prefix: b("app/"),
            limit: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(keys(&page), ["app/1", "app/2"]);
    assert_eq!((page.count, page.more), (2, true));
    assert_eq!(page.next_start, b("app/3"));

    let bounded = range(
        &mut c,
        RangeRequest {
            start: b("app/2"),
            end: b("aq"),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(keys(&bounded), ["app/2", "app/3"], "[app/2, aq)");

    let from = range(
        &mut c,
        RangeRequest {
            start: b("app/3"),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(keys(&from), ["app/3", "aq", "b"], "[app/3, ..)");

    // start/end pagination: follow next_start.
    let first = range(
        &mut c,
        RangeRequest {
            start: b("app/"),
            end: b("app0"),
            limit: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(keys(&first), ["app/1", "app/2"]);
    assert!(first.more);
    let second = range(
        &mut c,
        RangeRequest {
            start: first.next_start.clone(),
            end: b("app0"),
            limit: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(keys(&second), ["app/3"]);
    assert!(!second.more);

    let keys_only = range(
        &mut c,
        RangeRequest {
            prefix: b("app/"),
            keys_only: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(keys(&keys_only), ["app/1", "app/2", "app/3"]);
    assert!(keys_only.kvs.iter().all(|kv| kv.value.is_empty()));
    let count_only = range(
        &mut c,
        RangeRequest {
            prefix: b("app/"),
            count_only: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(count_only.count, 3);
    assert!(count_only.kvs.is_empty());

    // Delete: one key, nothing, a range, a prefix; one revision per delete that deletes.
    let r = c
        .delete(DeleteRequest {
            key: b("b"),
            prev_kv: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    header(r.header.as_ref(), 9, &cid, "delete b");
    assert_eq!(r.deleted, 1);
    assert_eq!(r.prev_kvs, vec![kv("b", "x", 3, 3, 1)]);
    assert_eq!(get(&mut c, "b").await, None);

    let r = c
        .delete(DeleteRequest {
            key: b("nope"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.deleted, 0);
    header(
        r.header.as_ref(),
        9,
        &cid,
        "delete of a missing key changes nothing: the current revision",
    );
    assert_eq!(
        put(&mut c, "c", "3").await,
        10,
        "a no-op delete must not use up a revision"
    );

    let r = c
        .delete(DeleteRequest {
            key: b("app/1"),
            end: b("app/3"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    header(r.header.as_ref(), 11, &cid, "delete [app/1, app/3)");
    assert_eq!(r.deleted, 2);
    let r = c
        .delete(DeleteRequest {
            prefix: b("app"),
            prev_kv: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    header(r.header.as_ref(), 12, &cid, "delete prefix app");
    assert_eq!(r.deleted, 2);
    assert_eq!(
        r.prev_kvs,
        vec![kv("app", "v-app", 7, 7, 1), kv("app/3", "v-app/3", 6, 6, 1)]
    );
    assert_eq!(
        keys(&range(&mut c, RangeRequest::default()).await),
        ["a", "aq", "c"]
    );

    // Txn: compares hold -> success branch, all of it at one revision.
    let r = c
        .txn(TxnRequest {
            compare: vec![
                value_eq("a", "2"),
                Compare {
                    result: compare::Result::Equal as i32,
                    key: b("a"),
                    target: Some(compare::Target::Version(2)),
                },
                Compare {
                    result: compare::Result::Equal as i32,
                    key: b("never"),
                    target: Some(compare::Target::CreateRevision(0)),
                },
                Compare {
                    result: compare::Result::Less as i32,
                    key: b("c"),
                    target: Some(compare::Target::ModRevision(11)),
                },
            ],
            success: vec![put_op("a", "3"), put_op("t", "1"), del_op("aq")],
            failure: vec![put_op("f", "1")],
        })
        .await
        .unwrap()
        .into_inner();
    header(r.header.as_ref(), 13, &cid, "txn success");
    assert!(r.succeeded);
    assert_eq!(r.responses.len(), 3);
    match &r.responses[2].response {
        Some(response_op::Response::Delete(d)) => assert_eq!(d.deleted, 1),
        other => panic!("third response is not a delete: {other:?}"),
    }
    assert_eq!(get(&mut c, "a").await, Some(kv("a", "3", 1, 13, 3)));
    assert_eq!(get(&mut c, "t").await, Some(kv("t", "1", 13, 13, 1)));
    assert_eq!(get(&mut c, "aq").await, None);
    assert_eq!(get(&mut c, "f").await, None, "failure branch ran too");

    // Compare fails -> failure branch.
    let r = c
        .txn(TxnRequest {
            compare: vec![value_eq("a", "2")],
            success: vec![put_op("s", "1")],
            failure: vec![put_op("f", "1")],
        })
        .await
        .unwrap()
        .into_inner();
    header(r.header.as_ref(), 14, &cid, "txn failure");
    assert!(!r.succeeded);
    assert_eq!(get(&mut c, "f").await, Some(kv("f", "1", 14, 14, 1)));
    assert_eq!(get(&mut c, "s").await, None, "success branch ran");
    assert_eq!(get(&mut c, "a").await, Some(kv("a", "3", 1, 13, 3)));

    // A txn that writes nothing creates no revision.
    let r = c
        .txn(TxnRequest {
            compare: vec![value_eq("a", "nope")],
            success: vec![put_op("s", "1")],
            failure: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.succeeded);
    header(r.header.as_ref(), 14, &cid, "txn that wrote nothing");
    assert_eq!(put(&mut c, "z", "1").await, 15);
    assert_eq!(node.status().await.revision, 15);
}

/// `RangeResponse` says: "ask again with `start = next_start` (same end/prefix) to
/// continue". With a prefix, that is a request with both `prefix` and `start`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_pagination_with_a_prefix_follows_next_start() {
    let node = NodeProcess::start("kv-0").await;
    let mut c = node.kv().await;
    for key in ["p/1", "p/2", "p/3", "q"] {
        put(&mut c, key, "v").await;
    }
    let first = range(
        &mut c,
        RangeRequest {
            prefix: b("p/"),
            limit: 2,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(keys(&first), ["p/1", "p/2"]);
    assert!(first.more);
    assert_eq!(first.next_start, b("p/3"));
    let next = RangeRequest {
        prefix: b("p/"),
        start: first.next_start.clone(),
        limit: 2,
        ..Default::default()
    };
    let second = c.range(next.clone()).await.unwrap_or_else(|e| {
        panic!("the follow-up page request the proto documents ({next:?}) was refused: {e:?}")
    });
    let second = second.into_inner();
    assert_eq!(keys(&second), ["p/3"], "second page");
    assert!(!second.more);
}

/// The value of one sample line (`name{labels} value`) in a Prometheus text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `/metrics` counts requests and shows the Raft log's syncs: how long they take and how many
/// writes each made durable (group commit), which is what an operator graphs for disk health.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_and_storage_syncs() {
    let node = NodeProcess::start("kv-0").await;
    let mut c = node.kv().await;
    for i in 0..5 {
        put(&mut c, &format!("m/{i}"), "v").await;
    }
    let (code, text) = node.http_get("/metrics").await.unwrap();
    assert_eq!(code, 200, "{text}");
    assert_eq!(
        sample(&text, r#"ordkv_requests_total{rpc="Put",code="OK"}"#),
        Some(5.0),
        "{text}"
    );
    let syncs = sample(
        &text,
        r#"ordkv_storage_sync_duration_seconds_count{file="wal"}"#,
    )
    .unwrap_or_else(|| panic!("no WAL sync histogram in:\n{text}"));
    let waiters = sample(&text, r#"ordkv_storage_sync_waiters_total{file="wal"}"#)
        .unwrap_or_else(|| panic!("no WAL sync waiters in:\n{text}"));
    // Each acknowledged put waited for a sync of the log it is in; the syncs before the
    // puts (bootstrap, membership) count too, and one sync may serve several of them.
    assert!(
        syncs >= 1.0 && waiters >= 5.0 && waiters >= syncs,
        "syncs {syncs}, waiters {waiters}"
    );
    assert!(
        text.contains(r#"ordkv_storage_sync_duration_seconds_bucket{file="wal",le="0.00005"}"#),
        "the sync histogram has no sub-millisecond buckets:\n{text}"
    );
}

/// `--worker-threads` sizes the node's runtime (the start-up log reports the runtime's own
/// count) and the node serves as usual with a single thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_flag_sizes_the_runtime() {
    let node = NodeProcess::start_with("kv-0", &["--worker-threads", "1"]).await;
    let mut c = node.kv().await;
    let rev = put(&mut c, "one-thread", "v").await;
    assert_eq!(
        get(&mut c, "one-thread").await.map(|kv| kv.mod_revision),
        Some(rev)
    );
    let logs = node.current_log();
    assert!(
        logs.contains("workers=1"),
        "start-up log does not say workers=1:\n{logs}"
    );
}

async fn next_msg(stream: &mut Streaming<WatchResponse>, what: &str) -> WatchResponse {
    match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
        Ok(Ok(Some(m))) => m,
        Ok(Ok(None)) => panic!("{what}: the watch ended"),
        Ok(Err(e)) => panic!("{what}: the watch failed: {e:?}"),
        Err(_) => panic!("{what}: no watch message within 10 s"),
    }
}

/// Reads messages until `n` events arrived; checks revision order, that a message's header
/// carries its last event's revision, and that no revision is split across messages.
async fn events(stream: &mut Streaming<WatchResponse>, n: usize, what: &str) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    while out.len() < n {
        let m = next_msg(stream, what).await;
        assert!(!m.created, "{what}: a second created message");
        assert!(!m.events.is_empty(), "{what}: an empty event message");
        let revs: Vec<u64> = m
            .events
            .iter()
            .map(|e| e.kv.as_ref().expect("event kv").mod_revision)
            .collect();
        assert!(revs.is_sorted(), "{what}: out of order in {m:?}");
        let header = m.header.as_ref().expect("header").revision;
        assert_eq!(header, *revs.last().unwrap(), "{what}: header of {m:?}");
        if let Some(prev) = out.last() {
            assert!(
                prev.kv.as_ref().unwrap().mod_revision < revs[0],
                "{what}: revision split across messages or out of order: {m:?}"
            );
        }
        out.extend(m.events);
    }
    assert_eq!(out.len(), n, "{what}: more events than expected: {out:?}");
    out
}

fn ev(ty: EventType, kv: KeyValue, prev: Option<KeyValue>) -> Event {
    Event {
        r#type: ty as i32,
        kv: Some(kv),
        prev_kv: prev,
    }
}

fn deleted(key: &str, revision: u64) -> KeyValue {
    KeyValue {
        key: b(key),
        mod_revision: revision,
        ..Default::default()
    }
}

/// A DELETE event carries the key and the deleting revision; the rest of its kv is not
/// specified, so compare only those.
fn normalize(mut events: Vec<Event>) -> Vec<Event> {
    for e in &mut events {
        if e.r#type == EventType::Delete as i32
            && let Some(kv) = &mut e.kv
        {
            *kv = deleted(&String::from_utf8_lossy(&kv.key), kv.mod_revision);
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_from_now_gets_created_then_later_writes() {
    let node = NodeProcess::start("kv-0").await;
    let cid = node.status().await.cluster_id;
    let mut c = node.kv().await;
    assert_eq!(put(&mut c, "w/before", "old").await, 1);

    let mut stream = node
        .kv()
        .await
        .watch(WatchRequest {
            prefix: b("w/"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let created = next_msg(&mut stream, "created").await;
    assert!(
        created.created,
        "first message is not `created`: {created:?}"
    );
    assert!(created.events.is_empty(), "{created:?}");
    header(created.header.as_ref(), 1, &cid, "created");

    assert_eq!(put(&mut c, "x", "not watched").await, 2);
    assert_eq!(put(&mut c, "w/1", "a").await, 3);
    let m = next_msg(&mut stream, "put w/1").await;
    header(m.header.as_ref(), 3, &cid, "event w/1");
    assert!(!m.created);
    assert_eq!(
        m.events,
        vec![ev(EventType::Put, kv("w/1", "a", 3, 3, 1), None)],
        "the event of w/1 (and nothing for `x` or the earlier w/before)"
    );

    // One txn writing two watched keys: one message, one revision.
    let r = c
        .txn(TxnRequest {
            compare: vec![],
            success: vec![put_op("w/2", "b"), put_op("w/3", "c")],
            failure: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.succeeded);
    let m = next_msg(&mut stream, "txn").await;
    assert_eq!(
        m.events,
        vec![
            ev(EventType::Put, kv("w/2", "b", 4, 4, 1), None),
            ev(EventType::Put, kv("w/3", "c", 4, 4, 1), None),
        ]
    );

    c.delete(DeleteRequest {
        key: b("w/1"),
        ..Default::default()
    })
    .await
    .unwrap();
    let m = next_msg(&mut stream, "delete w/1").await;
    assert_eq!(
        normalize(m.events),
        vec![ev(EventType::Delete, deleted("w/1", 5), None)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_with_start_revision_replays_history() {
    let node = NodeProcess::start("kv-0").await;
    let mut c = node.kv().await;
    assert_eq!(put(&mut c, "h/a", "1").await, 1);
    assert_eq!(put(&mut c, "h/b", "2").await, 2);
    assert_eq!(put(&mut c, "other", "z").await, 3);
    assert_eq!(put(&mut c, "h/a", "3").await, 4);
    let r = c
        .delete(DeleteRequest {
            key: b("h/b"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.header.unwrap().revision, 5);

    // Prefix watch from revision 2 with prev_kv: history, then live.
    let mut stream = node
        .kv()
        .await
        .watch(WatchRequest {
            prefix: b("h/"),
            start_revision: 2,
            prev_kv: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let created = next_msg(&mut stream, "created").await;
    assert!(created.created, "{created:?}");
    assert!(created.events.is_empty(), "{created:?}");
    let replayed = events(&mut stream, 3, "replay from 2").await;
    assert_eq!(
        normalize(replayed),
        vec![
            ev(EventType::Put, kv("h/b", "2", 2, 2, 1), None),
            ev(
                EventType::Put,
                kv("h/a", "3", 1, 4, 2),
                Some(kv("h/a", "1", 1, 1, 1))
            ),
            ev(
                EventType::Delete,
                deleted("h/b", 5),
                Some(kv("h/b", "2", 2, 2, 1))
            ),
        ]
    );
    assert_eq!(put(&mut c, "h/c", "live").await, 6);
    let live = events(&mut stream, 1, "live after replay").await;
    assert_eq!(
        live,
        vec![ev(EventType::Put, kv("h/c", "live", 6, 6, 1), None)]
    );

    // A single-key watch from revision 1 sees that key only, without prev_kv.
    let mut stream = node
        .kv()
        .await
        .watch(WatchRequest {
            key: b("h/a"),
            start_revision: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(next_msg(&mut stream, "created").await.created);
    let replayed = events(&mut stream, 2, "replay h/a from 1").await;
    assert_eq!(
        replayed,
        vec![
            ev(EventType::Put, kv("h/a", "1", 1, 1, 1), None),
            ev(EventType::Put, kv("h/a", "3", 1, 4, 2), None),
        ]
    );
}

/// The typed calls of `ordkv-client` (the same names as the embedded `Kv`'s) against a real
/// server: compare-and-swap from nothing and from a value, a transaction builder, prefix
/// scans and deletes, and a prefix watch with its event kinds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typed_client_calls_match_the_embedded_ones() {
    use ordkv_client::{Client, EventKind, StreamExt, Txn};
    let node = NodeProcess::start("kv-0").await;
    let client = Client::connect(&[node.client_addr()]).await.unwrap();
    assert!(client.compare_and_swap("cfg/v", None, "1").await.unwrap());
    assert!(!client.compare_and_swap("cfg/v", None, "1").await.unwrap());
    assert!(
        !client
            .compare_and_swap("cfg/v", Some(Bytes::from_static(b"0")), "2")
            .await
            .unwrap()
    );
    assert!(
        client
            .compare_and_swap("cfg/v", Some(Bytes::from_static(b"1")), "2")
            .await
            .unwrap()
    );
    let txn = Txn::new()
        .if_value("cfg/v", "2")
        .then_put("cfg/mode", "fast")
        .else_delete("cfg/v");
    assert!(client.txn(txn).await.unwrap().succeeded);

    let mut watch = client.watch_prefix("cfg/").await.unwrap();
    let created = watch.next().await.unwrap().unwrap();
    assert!(created.created);
    assert_eq!(client.delete_key("cfg/mode").await.unwrap(), 1);
    let event = watch.next().await.unwrap().unwrap().events.remove(0);
    assert_eq!(event.kind(), EventKind::Delete);
    assert_eq!(event.kv.unwrap().key, "cfg/mode");

    client.put_value("cfg/a", "x").await.unwrap();
    let page = client.scan_prefix("cfg/", 1).await.unwrap();
    assert_eq!((page.kvs.len(), page.more), (1, true));
    assert_eq!(client.delete_prefix("cfg/").await.unwrap(), 2);
    assert!(client.scan_prefix("cfg/", 0).await.unwrap().kvs.is_empty());
}
