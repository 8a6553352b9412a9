//! Limits that more than one process must agree on.

/// Largest gRPC message any Tessera server or client sends or accepts (ingest
/// batches and shard snapshots travel in one message). Larger messages are
/// refused by tonic with `RESOURCE_EXHAUSTED`.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
