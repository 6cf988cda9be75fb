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

/// The `.rs` files under `dir`, recursively.
fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// What a client sees of a failed request (its gRPC code, the `ordkv-write-outcome` and
/// `ordkv-leader` metadata) is decided in one place, `ordkv_server::status_from_error`. No
/// other crate that runs in a member builds a status from an error or sets status metadata
/// in its library code. Exempt: the peer protocol's own mapping between members
/// (`ordkv/src/peer/`), which never reaches a client, and `ordkv-client`, which marks the
/// statuses it makes up for its caller.
#[test]
fn client_facing_statuses_are_mapped_only_in_ordkv_server() {
    const SCANNED: &[&str] = &[
        "ordkv-proto",
        "ordkv-store",
        "ordkv-recipes",
        "ordkv",
        "ordkv-cli",
    ];
    const EXEMPT: &str = "crates/ordkv/src/peer/";
    const MAPPINGS: &[&str] = &[
        "for tonic::Status",
        "for Status ",
        "-> tonic::Status",
        "-> Status ",
        // Setting `ordkv-write-outcome` or `ordkv-leader` on a status.
        "metadata_mut()",
    ];
    let root = ordkv_tests::workspace_root();
    let mut found = Vec::new();
    for krate in SCANNED {
        let mut files = Vec::new();
        rust_files(&root.join("crates").join(krate).join("src"), &mut files);
        assert!(!files.is_empty(), "no sources for {krate}");
        for file in files {
            let name = file.strip_prefix(&root).unwrap().display().to_string();
            if name.starts_with(EXEMPT) || name.contains("/tests") {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            // Library code only: unit tests make statuses to test against.
            let library = text.split("#[cfg(test)]\nmod ").next().unwrap_or_default();
            for (n, line) in library.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                if let Some(m) = MAPPINGS.iter().find(|m| format!("{code} ").contains(*m)) {
                    found.push(format!("{name}:{}: {m:?} in {:?}", n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "map errors to client statuses in ordkv-server's status.rs only:\n{}",
        found.join("\n")
    );
}
