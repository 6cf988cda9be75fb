//! The crate boundaries ARCHITECTURE.md states, checked on `cargo metadata`: dependencies
//! between ordkv's crates point one way, only `ordkv-store` names sled, only `ordkv-store` and
//! `ordkv` name openraft, and only `ordkv-server` carries the server-side stack.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Each workspace crate and the ordkv crates it may depend on (normal or build).
const LAYERS: &[(&str, &[&str])] = &[
    ("ordkv-proto", &[]),
    ("ordkv-store", &["ordkv-proto"]),
    ("ordkv-recipes", &["ordkv-proto"]),
    ("ordkv", &["ordkv-store", "ordkv-proto", "ordkv-recipes"]),
    ("ordkv-server", &["ordkv", "ordkv-proto"]),
    ("ordkv-client", &["ordkv-proto", "ordkv-recipes"]),
    (
        "ordkv-cli",
        &["ordkv", "ordkv-server", "ordkv-client", "ordkv-proto"],
    ),
];

/// Third-party crates only some workspace crates may depend on (normal or build):
/// `(crate, the only ones allowed)`. Dev-dependencies are exempt (benches compare with sled).
const CONFINED: &[(&str, &[&str])] = &[
    ("sled", &["ordkv-store"]),
    ("openraft", &["ordkv-store", "ordkv"]),
    ("axum", &["ordkv-server"]),
    ("tonic-health", &["ordkv-server"]),
    ("tonic-reflection", &["ordkv-server"]),
    ("metrics-exporter-prometheus", &["ordkv-server"]),
];

/// Workspace package → its normal and build dependencies.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(ordkv_tests::workspace_root())
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let mut deps = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        let names = p["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter(|d| d["kind"].as_str() != Some("dev"))
            .map(|d| d["name"].as_str().expect("name").to_string())
            .collect();
        deps.insert(p["name"].as_str().expect("name").to_string(), names);
    }
    deps
}

#[test]
fn ordkv_crates_depend_downward_only() {
    let deps = dependencies();
    let layers: BTreeMap<_, _> = LAYERS.iter().copied().collect();
    let mut wrong = Vec::new();
    for (name, allowed) in &layers {
        let Some(has) = deps.get(*name) else {
            wrong.push(format!("{name} is not in the workspace"));
            continue;
        };
        for d in has.iter().filter(|d| layers.contains_key(d.as_str())) {
            if !allowed.contains(&d.as_str()) {
                wrong.push(format!("{name} depends on {d} (allowed: {allowed:?})"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn storage_consensus_and_server_crates_stay_where_they_belong() {
    let deps = dependencies();
    let mut wrong = Vec::new();
    for (krate, only) in CONFINED {
        let users: Vec<_> = deps
            .iter()
            .filter(|(_, has)| has.contains(*krate))
            .map(|(name, _)| name.as_str())
            .collect();
        assert!(
            !users.is_empty(),
            "no crate depends on {krate}: update CONFINED"
        );
        for user in users {
            if !only.contains(&user) {
                wrong.push(format!("{user} depends on {krate} (only {only:?} may)"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
