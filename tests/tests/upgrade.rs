//! A rolling upgrade from an earlier build: three members run the binary of
//! [`FROM_COMMIT`] (built from this repository's history), then are replaced one at a time,
//! highest ordinal first, each gracefully and after the previous one is ready, as a
//! StatefulSet's RollingUpdate does, under a write load and a checked read/write/CAS load.
//! Every acknowledged write must be on every member and the history linearizable. Then one
//! member goes back to the earlier build: its data dir is in a data format that build does
//! not read, so it must refuse to start, naming the format, and leave the data as it was;
//! back on this build it serves again (ARCHITECTURE.md, "Formats and upgrades").

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ordkv_proto::v1::kv_client::KvClient;
use ordkv_tests::cluster::{BackgroundWriter, CONVERGE, Cluster, as_strings};
use ordkv_tests::history::HistoryLoad;
use ordkv_tests::linearizability::CheckResult;

/// The build the upgrade starts from: the last one that landed before the peer format field
/// (0.1.0, data format 1 (WAL segments without header), peer format 1 without the field).
const FROM_COMMIT: &str = "53ed69dc0d64182d70bcd708e34dbbd93d2f7ee9";
const OP_TIMEOUT: Duration = Duration::from_secs(2);
const CHECK_BUDGET: Duration = Duration::from_secs(60);
/// A member's graceful stop (the pod's terminationGracePeriodSeconds).
const GRACE: Duration = Duration::from_secs(30);

/// The `ordkv` binary of [`FROM_COMMIT`], built once into the target dir (kept there, so a
/// warm target dir skips the build). The earlier sources come from `git archive`.
fn earlier_build() -> PathBuf {
    let target = ordkv_tests::target_dir();
    let out = target.join("upgrade-from").join(&FROM_COMMIT[..12]);
    let bin = out.join("ordkv");
    if bin.exists() {
        return bin;
    }
    let src = out.join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(&src).unwrap();
    let root = ordkv_tests::workspace_root();
    let archive = Command::new("git")
        .current_dir(&root)
        .args(["archive", "--format=tar", FROM_COMMIT])
        .output()
        .expect("run git archive");
    let mut tar = Command::new("tar")
        .current_dir(&src)
        .args(["-x", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("run tar");
    std::io::Write::write_all(&mut tar.stdin.take().expect("tar's stdin"), &archive.stdout)
        .expect("feed tar");
    let untar = tar.wait().expect("wait for tar");
    assert!(
        archive.status.success() && untar.success() && src.join("Cargo.toml").exists(),
        "cannot extract commit {FROM_COMMIT} from {}: the upgrade test needs it in this \
         clone's history (a shallow clone lacks it: git fetch --unshallow)",
        root.display()
    );
    // The same target dir, so the dependencies are built already. Cargo names a path crate's
    // build by its name, version and place in its workspace, all equal to this build's: the
    // two would share (and mix up) build-script outputs such as the generated protos. A
    // version of its own keeps the earlier build's crates apart.
    let manifest = src.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let ours = "[workspace.package]\nversion = \"0.1.0\"";
    assert!(text.contains(ours), "{}: no {ours:?}", manifest.display());
    let version = format!(
        "[workspace.package]\nversion = \"0.1.0-from.{}\"",
        &FROM_COMMIT[..12]
    );
    std::fs::write(&manifest, text.replace(ours, &version)).unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(&cargo)
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", &target)
        .args(["build", "--quiet", "-p", "ordkv-cli"])
        .status()
        .expect("run cargo build");
    assert!(built.success(), "building {FROM_COMMIT} failed: {built}");
    let tmp = out.join("ordkv.tmp");
    std::fs::copy(target.join("debug").join("ordkv"), &tmp).unwrap();
    std::fs::rename(&tmp, &bin).unwrap();
    // That build put its binary where this build's goes: put this one's back (cargo links
    // it again even when nothing changed), and check that it did.
    let this = ordkv_tests::rebuild_ordkv();
    assert_ne!(
        std::fs::read(&this).unwrap(),
        std::fs::read(&bin).unwrap(),
        "{} is still the earlier build",
        this.display()
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_upgrade_from_the_earlier_build_loses_no_acknowledged_write() {
    let earlier = earlier_build();
    // This build's binary is built now, not inside the first member's replacement window.
    ordkv_tests::ordkv_bin();
    let mut c = Cluster::start_on(&earlier, 3, &[]).await;
    let writer = BackgroundWriter::start(&c, &[0, 1, 2], "w/");
    let endpoints = c
        .ordinals()
        .into_iter()
        .map(|i| c.node(i).client_socket_addr())
        .collect();
    let load = HistoryLoad::start(endpoints, "h", OP_TIMEOUT);
    writer.progresses(&c, 0, 20, "on the earlier build").await;

    // The RollingUpdate: highest ordinal first, each once the previous one is ready.
    let mut windows = Vec::new();
    for i in [2, 1, 0] {
        let from = Instant::now();
        c.node_mut(i).sigterm();
        let status = c.node_mut(i).wait_exit(GRACE).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "kv-{i} (earlier build) did not stop cleanly: {status:?}\n{}",
            c.node(i).logs()
        );
        c.node_mut(i).set_bin(None);
        c.spawn(i);
        c.wait_ready(i).await;
        let acked = writer.acked();
        writer
            .progresses(&c, acked, 20, &format!("after kv-{i} upgraded"))
            .await;
        windows.push((i, from, Instant::now(), from.elapsed()));
    }

    // And back: one member returns to the earlier build, which reads data format 1 only.
    let from = Instant::now();
    c.node_mut(2).sigterm();
    assert!(c.node_mut(2).wait_exit(GRACE).await.is_some());
    let member_json = std::fs::read(c.node(2).data_dir().join("member.json")).unwrap();
    c.node_mut(2).set_bin(Some(earlier.clone()));
    c.spawn(2);
    let refused = c.node_mut(2).wait_exit(GRACE).await;
    let logs = c.node(2).logs();
    assert!(
        refused.is_some_and(|s| !s.success()) && logs.contains("data format 2"),
        "the earlier build must refuse kv-2's data dir naming its format: {refused:?}\n{logs}"
    );
    assert_eq!(
        std::fs::read(c.node(2).data_dir().join("member.json")).unwrap(),
        member_json,
        "the refusal changed the data dir"
    );
    c.node_mut(2).set_bin(None);
    c.spawn(2);
    c.wait_ready(2).await;
    let acked = writer.acked();
    writer
        .progresses(&c, acked, 20, "after kv-2 came back on this build")
        .await;
    let downgrade = (from, Instant::now());

    let report = writer.stop().await;
    let history = tokio::task::spawn_blocking(move || load.finish(CONVERGE))
        .await
        .expect("history load")
        .unwrap_or_else(|e| panic!("{e}"));
    let data = c.converged_at_least(&[0, 1, 2], 0).await;
    let lost = report.missing_from(&as_strings(&data));
    let (verdict, took) = history.check(CHECK_BUDGET);
    for (i, from, to, took) in &windows {
        println!(
            "[upgrade] kv-{i}: replaced in {:.2}s; longest write gap {:.2}s",
            took.as_secs_f64(),
            report.longest_gap_within(*from, *to).as_secs_f64()
        );
    }
    println!(
        "[upgrade] FIGURES from {} | acknowledged writes {} ({} failed or unknown), lost {} | \
         checked ops {} linearizable {} ({:.2}s) | leader changes {} | kv-2 refused by the \
         earlier build, back on this one: longest write gap {:.2}s",
        &FROM_COMMIT[..12],
        report.acked.len() + history.writes.len(),
        report.failed,
        lost.len(),
        history.events.len(),
        verdict == CheckResult::Ok,
        took.as_secs_f64(),
        history.leader_changes(),
        report
            .longest_gap_within(downgrade.0, downgrade.1)
            .as_secs_f64()
    );
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, first {:?}",
        lost.len(),
        lost.first()
    );
    assert_eq!(verdict, CheckResult::Ok, "{}", history.summary());
    // The member the earlier build refused serves the last acknowledged write.
    let (key, value) = report.acked.last().expect("writes were acknowledged");
    let got = KvClient::new(c.channel(2, Duration::from_secs(5)))
        .get(ordkv_proto::v1::GetRequest {
            key: Bytes::from(key.clone()),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("kv-2 does not serve after the refused downgrade: {e}"))
        .into_inner();
    assert_eq!(got.kv.map(|kv| kv.value), Some(Bytes::from(value.clone())));
}
