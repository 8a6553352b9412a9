//! The Tessera coordinator: the public `Tessera` gRPC service.
//!
//! It is a stateless router apart from its collection catalog: it validates
//! requests, sends loading, embedding and shard work to nodes over the internal
//! `Node` service, and merges what comes back (top-k merge, reciprocal rank
//! fusion, MMR). In `tessera up` the nodes it talks to is its own process.

pub mod catalog;
pub mod chain;
pub mod leader;
pub mod membership;
pub mod merge;
pub mod nodes;
pub mod openai;
pub mod service;
pub mod status;

pub use catalog::{Catalog, CollectionMeta};
pub use nodes::NodeSet;
pub use service::{Coordinator, CoordinatorConfig};
