//! The gRPC contract of Tessera, generated from `proto/tessera/v1/tessera.proto`.
//!
//! Kept in its own crate so that nodes, coordinators and clients share one copy of
//! the generated types and the file descriptor set that server reflection serves.
//! Beside the generated code: [`convert`], the conversions between wire types and
//! the shared types of `tessera-types` (one place, so two sides cannot drift), and
//! [`client`], the one way to build a `Node` client (timeouts, message limits,
//! trace context), and [`shutdown`], the stop signal every background task of
//! a process (node or coordinator side) is spawned under.

/// Package `tessera.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::large_enum_variant, clippy::doc_lazy_continuation)]
    tonic::include_proto!("tessera.v1");
}

pub mod client;
pub mod convert;
pub mod shutdown;

/// Encoded `FileDescriptorSet` of `tessera.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tessera_descriptor");
