//! Shard storage and search.
//!
//! A shard replica is a sled tree, the source of truth for chunk text, metadata
//! and vectors ([`ShardStore`]), plus indexes derived from it at open: an HNSW
//! ANN index ([`AnnIndex`], usearch), a BM25 inverted index ([`Bm25Index`]) and
//! a payload index of metadata values ([`PayloadIndex`], roaring bitmaps).
//! [`Shard`] (`replica.rs`) keeps the three in step; [`ShardActor`] serialises
//! access to one shard; [`ShardRegistry`] opens, hosts and drops the shards of a
//! node. Sending a primary's writes to its followers is `crate::replication`.

mod actor;
mod ann;
mod bm25;
mod filter;
mod originals;
mod payload;
mod quantized;
mod registry;
mod replica;
mod sign_bits;
mod store;
mod vectors;

pub use actor::{ShardActor, ShardHandle, ShardMsg};
pub use ann::{cosine, AnnIndex};
pub use bm25::{terms, Bm25Index, Bm25Params};
pub use filter::{Condition, Filter};
pub use payload::PayloadIndex;
pub use registry::ShardRegistry;
pub use replica::{
    DocWrite, FilterPlan, SearchMode, Shard, ShardHit, ShardQuery, ShardResults, ShardStats, WriteOutcome,
};
pub use store::{ChunkRecord, ShardStore};
pub use vectors::VectorSet;

use thiserror::Error;

/// Failures of shard storage and search.
#[derive(Debug, Error)]
pub enum ShardError {
    /// sled failed; the write was not applied.
    #[error("storage: {0}")]
    Storage(#[from] sled::Error),
    /// A stored record does not decode (corruption or a format change).
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The ANN index failed.
    #[error("ann index: {0}")]
    Ann(String),
    /// A vector of the wrong length.
    #[error("vector has {got} dimensions, the shard holds {expected}")]
    Dimension {
        /// Shard dimension.
        expected: usize,
        /// Given length.
        got: usize,
    },
    /// Bad caller input.
    #[error("{0}")]
    Invalid(String),
    /// A replicated write that is not the next one in sequence.
    #[error("out of order: this replica has applied up to {have}, got write {got}")]
    OutOfOrder {
        /// Last applied sequence.
        have: u64,
        /// The sequence offered.
        got: u64,
    },
    /// The shard is not hosted here.
    #[error("shard {0} is not hosted on this node")]
    NotFound(String),
    /// The shard actor is gone.
    #[error("shard unavailable: {0}")]
    Unavailable(String),
}
