//! Backups with the real binary: scheduled backups (`--backup-dir`, `--backup-every 2s`,
//! `--backup-keep 2`) appear, verify and are pruned; `snapshot save` writes the same format
//! (to a file, or into a directory with the same names and pruning);
//! the latest backup restored into a new data dir serves the data; a damaged file is refused
//! by `snapshot verify` and by `snapshot restore`, which then leaves nothing behind.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use ordkv_proto::v1::{Consistency, GetRequest, PutRequest};
use ordkv_tests::{COMMAND_DEADLINE, NodeProcess, Output, Ports, ordkv_command, run_async};

async fn ordkv(args: &[&str]) -> Output {
    let mut cmd = ordkv_command();
    cmd.args(args);
    run_async(cmd, None, COMMAND_DEADLINE).await
}

/// The backups in `dir`, oldest first (temporary files excluded).
fn backups(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|x| x == "snap"));
    files.sort();
    files
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_backups_verify_prune_restore_and_refuse_damage() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("backups");
    let dir_arg = dir.display().to_string();
    let node = NodeProcess::start_with(
        "kv-0",
        &[
            "--backup-dir",
            &dir_arg,
            "--backup-every",
            "2s",
            "--backup-keep",
            "2",
        ],
    )
    .await;
    let mut kv = node.kv().await;
    for i in 0..50 {
        kv.put(PutRequest {
            key: Bytes::from(format!("b/{i:03}")),
            value: Bytes::from(format!("v{i}")),
            prev_kv: false,
            lease: 0,
        })
        .await
        .unwrap();
    }

    // Files appear every 2 s; only the newest two stay.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let logs = node.current_log();
        let written = logs.matches("backup written").count();
        let files = backups(&dir);
        let latest_has_all = files
            .last()
            .is_some_and(|f| f.to_string_lossy().ends_with("-r50.snap"));
        if written >= 3 && latest_has_all && logs.contains("old backup deleted") {
            assert_eq!(files.len(), 2, "{files:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{written} backups written, files {files:?}\n{}",
            node.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let latest = backups(&dir).pop().unwrap();
    let latest_arg = latest.display().to_string();

    let verified = ordkv(&["snapshot", "verify", &latest_arg, "-o", "json"]).await;
    verified.assert_success("snapshot verify");
    let v = json(&verified);
    assert_eq!(v["revision"], 50, "{v}");
    assert_eq!(v["keys"], 50, "{v}");

    // `snapshot save` writes the same format, with a summary.
    let saved_path = root.path().join("saved.snap");
    let saved = node
        .cli(&[
            "snapshot",
            "save",
            &saved_path.display().to_string(),
            "-o",
            "json",
        ])
        .await;
    saved.assert_success("snapshot save");
    assert_eq!(json(&saved)["keys"], 50, "{saved}");
    // `--dir` names them as the schedule does and keeps the newest `--keep`.
    let saves = root.path().join("saves");
    let saves_arg = saves.display().to_string();
    for _ in 0..2 {
        let out = node
            .cli(&["snapshot", "save", "--dir", &saves_arg, "--keep", "1"])
            .await;
        out.assert_success("snapshot save --dir");
        // Names have a one-second resolution.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let kept = backups(&saves);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        kept[0].to_string_lossy().ends_with("-kv-0-r50.snap"),
        "{kept:?}"
    );

    // Damage: one flipped byte in the middle, and a truncated copy.
    let bytes = std::fs::read(&latest).unwrap();
    let flipped = root.path().join("flipped.snap");
    let mut f = bytes.clone();
    let mid = f.len() / 2;
    f[mid] ^= 0x40;
    std::fs::write(&flipped, f).unwrap();
    let truncated = root.path().join("truncated.snap");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    for bad in [&flipped, &truncated] {
        let bad_arg = bad.display().to_string();
        let out = ordkv(&["snapshot", "verify", &bad_arg]).await;
        assert!(!out.status.success(), "verify accepted {bad_arg}\n{out}");
        assert!(out.stderr.contains("is damaged"), "{out}");
        let data = root.path().join("from-bad");
        let out = ordkv(&[
            "snapshot",
            "restore",
            &bad_arg,
            "--name",
            "kv-0",
            "--data-dir",
            &data.display().to_string(),
        ])
        .await;
        assert!(!out.status.success(), "restore accepted {bad_arg}\n{out}");
        assert!(out.stderr.contains("nothing was restored"), "{out}");
        assert!(!data.exists(), "a refused restore left {}", data.display());
    }

    // The latest backup restored into a new data dir serves the data.
    drop(node);
    let restored = NodeProcess::new("kv-0", Ports::free(), &[]);
    let data_arg = restored.data_dir().display().to_string();
    let out = ordkv(&[
        "snapshot",
        "restore",
        &latest_arg,
        "--name",
        "kv-0",
        "--data-dir",
        &data_arg,
        "-o",
        "json",
    ])
    .await;
    out.assert_success("snapshot restore");
    assert_eq!(json(&out)["keys"], 50, "{out}");
    let mut restored = restored;
    restored.spawn();
    restored.wait_ready().await;
    let mut kv = restored.kv().await;
    for i in [0, 25, 49] {
        let got = kv
            .get(GetRequest {
                key: Bytes::from(format!("b/{i:03}")),
                consistency: Consistency::Linearizable as i32,
                min_revision: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            got.kv.map(|kv| kv.value),
            Some(Bytes::from(format!("v{i}")))
        );
    }
}
