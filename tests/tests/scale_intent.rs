//! Scaling in one step by the StatefulSet's intent, with real `ordkv serve` processes and the
//! slice of the Kubernetes API a pod reads about itself ([`FakeKubeApi`]). The test plays the
//! StatefulSet controller and the kubelet: it changes `spec.replicas` first, then SIGTERMs
//! every pod above the count at the same time, waits up to the grace period, and keeps the
//! data dirs. A writer runs throughout; every acknowledged write must be there at the end.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ordkv_proto::v1::{Consistency, RangeRequest, Role, TransferLeaderRequest};
use ordkv_tests::cluster::{BackgroundWriter, CONVERGE, Cluster};
use ordkv_tests::kube_api::FakeKubeApi;

/// The pods' termination grace period (Kubernetes' default).
const GRACE: Duration = Duration::from_secs(30);

/// Ordinals of the voters (and whether any learner is left) as member `i` reports them.
async fn voters(c: &Cluster, i: usize) -> Result<(BTreeSet<u32>, usize), String> {
    let s = c.try_status(i).await?;
    let voters = s
        .members
        .iter()
        .filter(|m| m.role == Role::Voter as i32)
        .map(|m| m.ordinal)
        .collect();
    let learners = s
        .members
        .iter()
        .filter(|m| m.role == Role::Learner as i32)
        .count();
    Ok((voters, learners))
}

/// Waits until member `i` reports exactly the voters `0..n` and no learner; returns when.
async fn membership_is(c: &Cluster, i: usize, n: u32) -> Instant {
    let want: BTreeSet<u32> = (0..n).collect();
    c.wait_until(
        &format!("kv-{i} reports voters {want:?}"),
        CONVERGE,
        || async {
            match voters(c, i).await? {
                (v, 0) if v == want => Ok(Instant::now()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

/// Every write in `acked` is on member `i` (a linearizable range).
async fn all_there(c: &Cluster, i: usize, acked: &[(String, String)]) {
    let got = c
        .kv(i)
        .range(RangeRequest {
            prefix: Bytes::from_static(b"w/"),
            consistency: Consistency::Linearizable as i32,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("range on kv-{i}: {e:?}\n{}", c.logs()))
        .into_inner();
    let there: BTreeSet<(String, String)> = got
        .kvs
        .iter()
        .map(|kv| {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            (text(&kv.key), text(&kv.value))
        })
        .collect();
    let lost: Vec<_> = acked.iter().filter(|kv| !there.contains(*kv)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}

/// Lets the writer run a little past the change, stops it, reports the scenario's figures
/// and checks that the members that stay (kv-0, kv-1) hold every acknowledged write.
async fn finish(
    c: &Cluster,
    writer: BackgroundWriter,
    scaled: Instant,
    matched: Instant,
    scenario: &str,
) {
    let acked = writer.acked();
    writer.progresses(c, acked, 10, "after the change").await;
    let report = writer.stop().await;
    println!(
        "{scenario}: membership matched {} ms after spec.replicas changed; longest write gap \
         {} ms; {} writes acknowledged",
        matched.duration_since(scaled).as_millis(),
        report.longest_gap(scaled).as_millis(),
        report.acked.len()
    );
    all_there(c, 0, &report.acked).await;
    all_there(c, 1, &report.acked).await;
}

/// `kubectl scale --replicas n` with members `from..` SIGTERMed at once; checks each exits
/// cleanly within the grace period.
async fn scale_down(c: &mut Cluster, api: &FakeKubeApi, n: u32, from: usize) -> Instant {
    api.set_replicas(n);
    let scaled = Instant::now();
    let going: Vec<usize> = c.running().into_iter().filter(|i| *i >= from).collect();
    for &i in &going {
        c.node_mut(i).sigterm();
    }
    for &i in &going {
        let exit = c.node_mut(i).wait_exit(GRACE).await;
        assert!(
            exit.is_some_and(|s| s.success()),
            "kv-{i} did not exit cleanly within {GRACE:?}: {exit:?}\n{}",
            c.logs()
        );
        let log = c.node(i).current_log();
        assert!(
            log.contains(&format!("leaving: scaled to {n}, my ordinal is {i}")),
            "kv-{i} did not say it was leaving\n{log}"
        );
    }
    scaled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_to_two_in_one_step_with_the_leader_among_those_that_go() {
    let api = FakeKubeApi::start("default", "kv", 5).await;
    let mut c = Cluster::start_with_env(5, &[], &api.pod_env()).await;
    // The leader is one of the members that go.
    c.cluster_client(0)
        .transfer_leader(TransferLeaderRequest { ordinal: 4 })
        .await
        .unwrap_or_else(|e| panic!("transfer to kv-4: {e:?}\n{}", c.logs()));
    assert_eq!(c.leader().await, 4);
    let status = c.status(0).await;
    assert_eq!(status.statefulset_replicas, Some(5), "{status:?}");
    assert_eq!(status.scale_intent, "replicas 5 (statefulset kv)");

    let writer = BackgroundWriter::start(&c, &[0, 1], "w/");
    writer.progresses(&c, 0, 20, "before the change").await;
    let scaled = scale_down(&mut c, &api, 2, 2).await;
    let matched = membership_is(&c, 0, 2).await;
    membership_is(&c, 1, 2).await;
    finish(
        &c,
        writer,
        scaled,
        matched,
        "5 -> 2 (leader kv-4 among them)",
    )
    .await;
    let leader = c.leader().await;
    assert!(leader < 2, "kv-{leader} leads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_scaled_away_but_killed_is_removed_by_the_leader() {
    let api = FakeKubeApi::start("default", "kv", 4).await;
    let mut c = Cluster::start_with_env(4, &[], &api.pod_env()).await;
    let leader = c.leader().await;
    let writer = BackgroundWriter::start(&c, &[0, 1], "w/");
    // 4 -> 2: kv-3 is SIGKILLed (no chance to leave), kv-2 terminates normally.
    api.set_replicas(2);
    let scaled = Instant::now();
    let victim = if leader == 3 { 2 } else { 3 };
    c.kill_9(victim);
    let other = 5 - victim;
    c.node_mut(other).sigterm();
    let exit = c.node_mut(other).wait_exit(GRACE).await;
    assert!(
        exit.is_some_and(|s| s.success()),
        "kv-{other}: {exit:?}\n{}",
        c.logs()
    );
    let stays = if leader < 2 { leader } else { 0 };
    let matched = membership_is(&c, stays, 2).await;
    finish(
        &c,
        writer,
        scaled,
        matched,
        &format!("4 -> 2 with kv-{victim} killed"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_to_zero_removes_nobody_and_the_cluster_comes_back() {
    let api = FakeKubeApi::start("default", "kv", 3).await;
    let mut c = Cluster::start_with_env(3, &[], &api.pod_env()).await;
    let writer = BackgroundWriter::start(&c, &[0, 1, 2], "w/");
    writer.progresses(&c, 0, 20, "before the change").await;
    let acked = writer.stop().await.acked;
    let cluster_id = c.status(0).await.cluster_id;

    api.set_replicas(0);
    for i in 0..3 {
        c.node_mut(i).sigterm();
    }
    for i in 0..3 {
        let exit = c.node_mut(i).wait_exit(GRACE).await;
        assert!(
            exit.is_some_and(|s| s.success()),
            "kv-{i}: {exit:?}\n{}",
            c.logs()
        );
        assert!(
            !c.node(i).current_log().contains("leaving:"),
            "kv-{i} left on scale to zero"
        );
    }
    api.set_replicas(3);
    for i in 0..3 {
        c.spawn(i);
    }
    c.wait_ready_all().await;
    membership_is(&c, 0, 3).await;
    assert_eq!(c.status(0).await.cluster_id, cluster_id);
    all_there(&c, 0, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_api_access_the_status_says_why() {
    // A token the API does not accept: as a pod without RBAC for its StatefulSet.
    let api = FakeKubeApi::start("default", "kv", 3).await;
    std::fs::write(api.service_account_dir().join("token"), "wrong").unwrap();
    let c = Cluster::start_with_env(3, &[], &api.pod_env()).await;
    let status = c
        .wait_until(
            "the intent is known to be unavailable",
            CONVERGE,
            || async {
                let s = c.try_status(0).await?;
                s.scale_intent
                    .starts_with("unavailable")
                    .then_some(s.clone())
                    .ok_or(s.scale_intent)
            },
        )
        .await;
    assert!(
        status.scale_intent.contains("401"),
        "{}",
        status.scale_intent
    );
    assert_eq!(status.statefulset_replicas, None);
    assert!(
        c.node(0)
            .current_log()
            .contains("scale-down waits for the dead-member timeout"),
        "{}",
        c.node(0).current_log()
    );
    // Without Kubernetes at all.
    let plain = Cluster::start(1, &[]).await;
    let s = plain.status(0).await;
    assert!(
        s.scale_intent.contains("KUBERNETES_SERVICE_HOST"),
        "{}",
        s.scale_intent
    );
}
