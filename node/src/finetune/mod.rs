//! LoRA fine-tuning on candle (`tessera finetune`): a team's own data
//! (chats, prompt/completion pairs, or a collection's chunks) trains a
//! low-rank adapter of the served base, written in PEFT's layout so the
//! model group serves it per request (`model::adapter`) and PEFT loads it.
//!
//! - [`job`]: one run end to end, as the CLI and the RPC start it;
//! - [`data`]: JSON Lines and chunks to token ids with loss weights;
//! - [`model`]: the base as a differentiable f32 graph, and the LoRA variables;
//! - [`fused`]: RMS norm, RoPE, causal softmax and SwiGLU as single ops with backward passes;
//! - [`ops`]: the frozen-weight matmul and the fused loss, with their backward passes;
//! - [`optimizer`]: AdamW with open state, gradient clipping and accumulation;
//! - [`trainer`]: the loop, the log and the checkpoints.
pub mod data;
pub mod fused;
pub mod job;
pub mod model;
pub mod ops;
pub mod optimizer;
pub mod trainer;

use thiserror::Error;

use crate::model::ModelError;

/// Failures of a fine-tuning run.
#[derive(Debug, Error)]
pub enum FinetuneError {
    /// A data line (or the whole file) cannot be used; says which line.
    #[error("training data: {0}")]
    Data(String),
    /// Settings that cannot work.
    #[error("settings: {0}")]
    Config(String),
    /// Reading or writing files.
    #[error("{0}")]
    Io(String),
    /// The model, its tensors or its adapter.
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl From<candle_core::Error> for FinetuneError {
    fn from(e: candle_core::Error) -> Self {
        FinetuneError::Model(ModelError::Candle(e))
    }
}

/// Keeps freed heap memory in the process instead of returning it to the
/// kernel after every tensor: a training step allocates and frees the same
/// few hundred megabytes of activations and gradients, and handing them back
/// made the kernel zero fresh pages each time (20 % of a step's time in
/// `clear_page`, measured with perf). For the `tessera finetune` process
/// only (a server would keep its peak after a job). glibc only; elsewhere
/// nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tunables; called before the
    // training threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}
