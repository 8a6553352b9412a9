//! A Tessera node: the actors that do the work of the pipeline.
//!
//! A node hosts a loader pool (parse + split), an embedder (one candle BERT model
//! that batches concurrent requests) and one shard actor per hosted shard replica
//! (a sled tree as the source of truth plus a derived ANN and BM25 index). The
//! coordinator reaches all of them only through the internal `Node` gRPC service
//! in [`service`], also when both run in one process (`tessera up`).

pub mod convert;
pub mod embed;
pub mod index;
pub mod load;
pub mod membership;
pub mod memory;
pub mod model;
pub mod node;
pub mod replication;
pub mod service;
pub mod split;

pub use node::{Node, NodeConfig};
