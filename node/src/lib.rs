//! A Tessera node: the actors that do the work of the pipeline.
//!
//! A node serves any of five roles: `loader` (a pool that parses files and
//! splits them into chunks: [`load`], [`chunking`]), `embedder` (one candle BERT
//! model that batches concurrent requests: [`embed`]), `shard` (one actor per
//! hosted shard replica, a sled tree as the source of truth plus derived ANN and
//! BM25 indexes, replicated to followers: [`shard`]), `model` (a tensor-parallel
//! group of GGUF decoder ranks with continuous batching: [`model`]) and
//! `session` (one actor per live conversation, durable in sled: [`session`]).
//! The coordinator reaches all of them only through the internal `Node` gRPC
//! service in [`service`], also when both run in one process (`tessera up`);
//! [`convert`] holds the wire conversions of node-only types and [`membership`]
//! the node's etcd lease in cluster mode.

pub mod chunking;
pub mod convert;
pub mod document;
pub mod embed;
pub mod finetune;
pub mod load;
pub mod membership;
pub mod model;
pub mod node;
pub mod replication;
pub mod service;
pub mod session;
pub mod shard;

pub use node::{Node, NodeConfig};
