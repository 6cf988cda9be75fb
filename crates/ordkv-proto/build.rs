//! Compiles `proto/ordkv/v1/*.proto` with protox (pure Rust: no system `protoc` needed).

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Relative to this package (a build script runs in its package's directory), never an
    // absolute path baked into the script: checkouts at other paths that share a target
    // dir reuse this script and must read their own protos.
    let root = PathBuf::from("../../proto");
    let files = [
        "ordkv/v1/kv.proto",
        "ordkv/v1/lease.proto",
        "ordkv/v1/cluster.proto",
        "ordkv/v1/raft.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={}", root.join(f).display());
    }
    let fds = protox::compile(files.iter().map(|f| root.join(f)), [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("ordkv_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .bytes(".ordkv.v1")
        .compile_fds(fds)?;
    Ok(())
}
