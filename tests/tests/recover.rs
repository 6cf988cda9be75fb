//! Recovery from a permanent loss of quorum (`ordkv recover`): a 3-member cluster loses two
//! volumes for good; the third is made the only voter, leads, and the other ordinals rejoin
//! it empty. Every write acknowledged before the disaster at or below the survivor's revision
//! is served, in the same cluster.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ordkv_proto::v1::{Consistency, GetRequest, PutRequest};
use ordkv_tests::cluster::{CONVERGE, Cluster, member_name};
use ordkv_tests::{COMMAND_DEADLINE, Output, ordkv_command, run_async};

/// `ordkv recover` with member `i`'s own serve flags, plus `extra`.
async fn recover(c: &Cluster, i: usize, extra: &[&str]) -> Output {
    let mut cmd = ordkv_command();
    cmd.arg("recover")
        .args(extra)
        .args(c.node(i).serve_args().into_iter().skip(1));
    run_async(cmd, None, COMMAND_DEADLINE).await
}

fn put_req(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: Bytes::from(key.to_string()),
        value: Bytes::from(value.to_string()),
        prev_kv: false,
        lease: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_of_quorum_loss_is_recovered_and_the_others_rejoin_it() {
    let mut c = Cluster::start(3, &["--snapshot-every", "100"]).await;
    let cluster_id = c.member_record(0).cluster_id;
    let old_ids: Vec<u64> = (0..3).map(|i| c.member_record(i).node_id).collect();
    let leader = c.leader().await;
    let survivor = (leader + 1) % 3;
    let others: Vec<usize> = (0..3).filter(|i| *i != survivor).collect();

    // `cluster status --each` names every member's own revision.
    let endpoints: Vec<String> = (0..3).map(|i| c.node(i).client_addr()).collect();
    let each = run_async(
        {
            let mut cmd = ordkv_command();
            cmd.args([
                "cluster",
                "status",
                "--each",
                "--endpoints",
                &endpoints.join(","),
            ]);
            cmd
        },
        None,
        COMMAND_DEADLINE,
    )
    .await;
    each.assert_success("cluster status --each");
    for i in 0..3 {
        assert!(each.stdout_str().contains(&member_name(i)), "{each}");
    }

    // A writer through the leader, recording the revision of every acknowledged put.
    let acked: Arc<Mutex<Vec<(String, String, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, mut kv) = (acked.clone(), stop.clone(), c.kv(leader));
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let (key, value) = (format!("k{n:05}"), format!("v{n}"));
                match tokio::time::timeout(Duration::from_secs(2), kv.put(put_req(&key, &value)))
                    .await
                {
                    Ok(Ok(r)) => {
                        let revision = r.into_inner().header.expect("header").revision;
                        acked.lock().unwrap().push((key, value, revision));
                    }
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
                n += 1;
            }
        })
    };
    c.wait_until("300 writes acknowledged", CONVERGE, || async {
        let n = acked.lock().unwrap().len();
        if n >= 300 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    })
    .await;

    let applied = c
        .wait_until("the survivor applied 300 revisions", CONVERGE, || async {
            let revision = c.try_status(survivor).await?.revision;
            if revision >= 300 {
                Ok(revision)
            } else {
                Err(format!("at {revision}"))
            }
        })
        .await;

    // The survivor stops; while the others answer, recover refuses and changes nothing.
    c.kill_9(survivor);
    let refused = recover(&c, survivor, &[]).await;
    assert!(
        !refused.status.success(),
        "recover ran beside a live quorum\n{refused}"
    );
    assert!(refused.stderr.contains("still answer"), "{refused}");
    for i in &others {
        assert!(refused.stderr.contains(&member_name(*i)), "{refused}");
    }

    // The disaster: the others die under load and their volumes are gone.
    for i in &others {
        c.kill_9(*i);
    }
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    for i in &others {
        c.wipe_data(*i);
    }

    let started = Instant::now();
    let recovered = recover(&c, survivor, &["-o", "json"]).await;
    recovered.assert_success("recover");
    let took = started.elapsed();
    let report: serde_json::Value = serde_json::from_slice(&recovered.stdout).unwrap();
    assert_eq!(report["member"], member_name(survivor), "{recovered}");
    assert_eq!(report["cluster_id"], cluster_id.as_str(), "{recovered}");
    let removed: Vec<&str> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        removed,
        others.iter().map(|i| member_name(*i)).collect::<Vec<_>>()
    );
    // What the survivor's state machine holds on disk; entries in its log after it are
    // applied again when it starts (the apply path never syncs).
    let revision = report["revision"].as_u64().unwrap();

    // The survivor starts alone, elects itself and takes writes.
    let started = Instant::now();
    c.spawn(survivor);
    c.wait_until("the survivor takes a write", CONVERGE, || async {
        let put = c.kv(survivor).put(put_req("after", "recovery")).await;
        put.map(|_| ()).map_err(|e| format!("{e:?}"))
    })
    .await;
    let to_write = started.elapsed();
    println!(
        "recover took {took:?}; the survivor took its first write {to_write:?} after it started \
         (at revision {revision}; {} writes were acknowledged before the disaster)",
        acked.lock().unwrap().len()
    );

    // The lost ordinals come back empty and rejoin under new node ids.
    for i in &others {
        c.spawn(*i);
    }
    for i in 0..3 {
        c.wait_ready(i).await;
    }
    c.wait_voters(3).await;
    for (i, old_id) in old_ids.iter().enumerate() {
        let record = c.member_record(i);
        assert_eq!(
            record.cluster_id, cluster_id,
            "kv-{i} is in another cluster"
        );
        if i != survivor {
            assert_ne!(record.node_id, *old_id, "kv-{i} reused its node id");
        }
        assert_eq!(c.status(i).await.cluster_id, cluster_id);
    }

    // Every acknowledged write the survivor had applied is served, by every member.
    let acked = acked.lock().unwrap().clone();
    let kept: BTreeMap<String, String> = acked
        .iter()
        .filter(|(_, _, r)| *r <= applied)
        .map(|(k, v, _)| (k.clone(), v.clone()))
        .collect();
    assert!(
        kept.len() >= 300,
        "only {} writes at or below revision {applied}",
        kept.len()
    );
    let served = c.converged_at_least(&[0, 1, 2], applied + 1).await;
    let served = ordkv_tests::cluster::as_strings(&served);
    for (k, v) in &kept {
        assert_eq!(served.get(k), Some(v), "acknowledged write {k} was lost");
    }
    for i in 0..3 {
        let last = kept.keys().next_back().unwrap();
        let got = c
            .kv(i)
            .get(GetRequest {
                key: Bytes::from(last.clone()),
                consistency: Consistency::Linearizable as i32,
                min_revision: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            got.kv.map(|kv| kv.value),
            Some(Bytes::from(kept[last].clone()))
        );
    }
    println!(
        "{} of {} acknowledged writes were at or below the survivor's applied revision \
         {applied}; {} keys served in all",
        kept.len(),
        acked.len(),
        served.len()
    );
}

/// `ordkv serve --recover`: the same recovery at start-up, then the member serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_recover_starts_the_survivor_as_the_only_voter() {
    let mut c = Cluster::start(3, &[]).await;
    let cluster_id = c.member_record(0).cluster_id;
    let leader = c.leader().await;
    let mut kv = c.kv(leader);
    for i in 0..20 {
        kv.put(put_req(&format!("s{i:02}"), "v")).await.unwrap();
    }
    let survivor = (leader + 1) % 3;
    c.converged_at_least(&[survivor], 20).await;
    for i in 0..3 {
        c.kill_9(i);
    }
    for i in (0..3).filter(|i| *i != survivor) {
        c.wipe_data(i);
    }
    c.node_mut(survivor).add_args(&["--recover"]);
    c.spawn(survivor);
    c.wait_ready(survivor).await;
    let log = c.node(survivor).current_log();
    assert!(log.contains("is now the only voter"), "{log}");
    let s = c.status(survivor).await;
    assert_eq!(s.cluster_id, cluster_id);
    assert_eq!(s.members.len(), 1, "{s:?}");
    let kvs = c.range(survivor, Consistency::Linearizable).await;
    assert_eq!(kvs.len(), 20);
}

/// A member that comes back with data the recovered member's log lacks, and had applied it,
/// stops and says to wipe its volume rather than fork the data; the cluster goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_applied_entries_the_survivor_lacks_stops_instead_of_forking() {
    let mut c = Cluster::start(3, &[]).await;
    let leader = c.leader().await;
    let survivor = (leader + 1) % 3;
    let other = (0..3).find(|i| *i != leader && *i != survivor).unwrap();
    let mut kv = c.kv(leader);
    for i in 0..20 {
        kv.put(put_req(&format!("a{i:02}"), "v")).await.unwrap();
    }
    c.converged_at_least(&[survivor], 20).await;
    // The survivor stops first: the others go on without it.
    c.kill_9(survivor);
    for i in 0..30 {
        kv.put(put_req(&format!("b{i:02}"), "v")).await.unwrap();
    }
    // Stopped cleanly, so its state on disk holds the writes it applied (after a SIGKILL the
    // state is re-applied from the log at start, and entries the survivor lacks are then
    // simply replaced by the survivor's).
    c.node_mut(leader).sigterm();
    c.node_mut(leader).wait_exit(CONVERGE).await;
    c.kill_9(other);
    c.wipe_data(other);
    recover(&c, survivor, &[]).await.assert_success("recover");
    c.spawn(survivor);
    c.wait_ready(survivor).await;
    let mut kv = c.kv(survivor);
    kv.put(put_req("after", "recovery")).await.unwrap();

    // The old leader returns with the 30 writes the survivor never had.
    c.spawn(leader);
    let exited = c.node_mut(leader).wait_exit(CONVERGE).await;
    let log = c.node(leader).current_log();
    assert!(
        exited.is_some_and(|s| !s.success()),
        "kv-{leader} kept running: {exited:?}\n{log}"
    );
    assert!(log.contains("Wipe this member's data dir"), "{log}");
    // The recovered cluster is unharmed.
    kv.put(put_req("still", "writable")).await.unwrap();
    let kvs = c.range(survivor, Consistency::Linearizable).await;
    assert_eq!(
        kvs.len(),
        22,
        "the survivor's 20 keys and two writes after the recovery"
    );
}
