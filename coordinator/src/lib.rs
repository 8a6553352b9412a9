//! The Tessera coordinator: the public `Tessera` gRPC service and the
//! OpenAI-compatible HTTP API.
//!
//! It validates requests, sends loading, embedding, shard, model and session
//! work to nodes over the internal `Node` service, merges what comes back (top-k
//! merge, reciprocal rank fusion, MMR) and runs the RAG chains. Its own state is
//! the collection catalog (sled in `tessera up`, etcd in a cluster) and, on the
//! elected placement leader, the decisions where shard replicas live. It never
//! links the node crate: what both sides share is plain data in `tessera-types`.
//! In `tessera up` the nodes it talks to are its own process, over loopback gRPC.

mod adapters;
pub mod ask;
pub mod auth;
pub mod catalog;
pub mod chain;
mod collections;
pub mod config;
mod convert;
pub mod coordinator;
pub mod error;
mod generate;
pub mod grpc;
mod ingest;
pub mod merge;
pub mod node_watch;
pub mod nodes;
pub mod openai;
pub mod placement;
mod search;
mod sessions;
pub mod status;
pub mod tenancy;

pub use catalog::{Catalog, CollectionMeta};
pub use config::{CoordinatorConfig, WriteAcks};
pub use coordinator::Coordinator;
pub use error::CoordinatorError;
pub use nodes::NodeSet;
