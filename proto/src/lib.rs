//! The gRPC contract of Tessera, generated from `proto/tessera/v1/tessera.proto`.
//!
//! Kept in its own crate so that nodes, coordinators and clients share one copy of
//! the generated types and the file descriptor set that server reflection serves.

/// Package `tessera.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::large_enum_variant, clippy::doc_lazy_continuation)]
    tonic::include_proto!("tessera.v1");
}

/// Encoded `FileDescriptorSet` of `tessera.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tessera_descriptor");
