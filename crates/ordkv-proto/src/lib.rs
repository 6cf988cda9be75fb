//! Generated protobuf and gRPC code for ordkv: the client API (`KV`, `Cluster`) and the
//! internal Raft command encoding. Generated from `proto/ordkv/v1`; no hand-written logic.

#![allow(clippy::all, missing_docs)]

/// `ordkv.v1`: messages and services.
pub mod v1 {
    tonic::include_proto!("ordkv.v1");

    /// The encoded `FileDescriptorSet` of every ordkv proto, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/ordkv_descriptor.bin"));
}

pub use v1::*;
