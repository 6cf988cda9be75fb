//! Generated protobuf and gRPC code for ordkv: the client API (`KV`, `Cluster`) and the
//! internal Raft command encoding, generated from `proto/ordkv/v1`; and [`ops`], the
//! requests of the common operations, shared by the embedded `ordkv::Kv` and `ordkv-client`.

/// `ordkv.v1`: messages and services.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("ordkv.v1");

    /// The encoded `FileDescriptorSet` of every ordkv proto, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/ordkv_descriptor.bin"));
}

pub use v1::*;

pub mod ops;

/// The trailing metadata key that says whether a failed write happened (see `kv.proto`).
pub const WRITE_OUTCOME_METADATA_KEY: &str = "ordkv-write-outcome";
/// [`WRITE_OUTCOME_METADATA_KEY`]: the write entered no log; safe to retry.
pub const NOT_APPLIED: &str = "not-applied";
/// [`WRITE_OUTCOME_METADATA_KEY`]: the write may or may not commit.
pub const OUTCOME_UNKNOWN: &str = "unknown";
