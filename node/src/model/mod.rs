//! Language models on candle: GGUF decoders (llama family, Gemma 3) split over
//! tensor-parallel ranks, with continuous batching and streamed generation.
//!
//! - [`tokenizer`]: the tokenizer from GGUF metadata; [`chat`]: chat templates.
//! - [`adapter`]: LoRA adapters (PEFT's layout, each rank's share, the per-row update);
//! - [`partition`]: how quantized weights are divided; [`decoder`]: one rank's model;
//!   [`linear`]: its weight matrices; [`kernels`]: the CPU kernels; [`kv_cache`]: per-sequence caches.
//! - [`comm`] / [`tcp`] / `nccl` (feature `cuda`): the [`Communicator`] trait and its backends.
//! - [`sampler`]: next-token choice; [`engine`]: the rank threads; `scheduler`: rank 0's continuous batching.
//! - [`serving`]: prompts and chat messages to token ids, for the `model` role;
//!   [`served`]: the named models of one node, the first the default.

pub mod adapter;
pub mod chat;
pub mod comm;
pub mod constraint;
pub mod decoder;
pub mod engine;
pub mod kernels;
pub mod kv_cache;
pub mod linear;
mod metrics;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod partition;
pub mod prefix_cache;
pub mod sampler;
mod scheduler;
pub mod served;
pub mod serving;
pub mod tcp;
pub mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate};
pub use comm::{Communicator, LocalGroup, SingleRank};
pub use engine::{EngineLimits, Event, FinishReason, ModelGroup};
pub use sampler::{Sampler, SamplingParams};
pub use served::{ModelSpec, ServedModels};
pub use serving::ModelServing;
pub use tokenizer::GgufTokenizer;

use thiserror::Error;

/// Failures of loading or running a model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// The file could not be read.
    #[error("model file: {0}")]
    Io(String),
    /// The GGUF is malformed or lacks something required.
    #[error("model format: {0}")]
    Format(String),
    /// A valid model that this build does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// Settings that cannot work (world size, partition).
    #[error("configuration: {0}")]
    Config(String),
    /// Bad request input.
    #[error("{0}")]
    Input(String),
    /// The queue is full.
    #[error("{0}")]
    Busy(String),
    /// Tokenizer failure.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Chat template failure.
    #[error("chat template: {0}")]
    Template(String),
    /// candle failure.
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
    /// A collective failed.
    #[error(transparent)]
    Comm(#[from] comm::CommError),
}
