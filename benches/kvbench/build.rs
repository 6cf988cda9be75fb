//! Compiles the etcd v3 API subset with protox (pure Rust: no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/etcd_v3_subset.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .bytes(".etcdserverpb")
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
