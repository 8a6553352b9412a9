//! A GGUF decoder (the llama family: SmolLM2, Llama, Mistral, Qwen2; and
//! Gemma 3), one tensor-parallel rank of it.
//!
//! Each rank holds its share of every layer (see [`super::partition`]): the query,
//! key and value heads of its k/v groups and its slice of the feed-forward
//! features (column parallel). The attention output projection and the down
//! projection are split by output row: each rank all-gathers their input and
//! computes whole dot products for its rows, then the rows are all-gathered, so
//! every output value is one dot product by the same kernel whatever the world
//! size (ARCHITECTURE.md says why this beats Megatron's row-parallel
//! all-reduce here). Embeddings and norms are replicated; the output head is
//! split by vocabulary row (each rank its rows of the one matrix, the logits
//! gathered; rank 0 samples). With one rank this is a plain forward pass.
//!
//! A forward step takes several sequences at once, each with its own tokens
//! (a prompt chunk or one decode token) and its own KV cache: the matmuls run on
//! all tokens together (q|k|v and gate|up fused into one matmul each), attention
//! for every (sequence, token, head) in parallel. That is what continuous
//! batching needs. Activations are plain `tokens × width` f32 buffers and every
//! hot op is one of [`super::kernels`]; candle reads the GGUF and runs the
//! matmuls of weight types without a kernel here.
//!
//! - [`config`]: the shape and what each architecture changes;
//! - `load`: reading one rank's share of the weights;
//! - `forward`: one step of the layers.
pub mod config;
mod forward;
mod load;

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::QTensor;
use serde::{Deserialize, Serialize};

pub use config::{Activation, DecoderConfig, Family, LayerAttention};

use super::adapter::rank::RankAdapter;
use super::adapter::LoraAdapter;
use super::kernels::attention::Heads;
use super::kernels::rope::Rope;
use super::kernels::QuantMatrix;
use super::kv_cache::SeqCache;
use super::linear::Linear;
use super::partition::Partition;
use super::prefix_cache::PrefixOps;
use super::ModelError;

/// One sequence's part of a forward step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeqStep {
    /// Sequence id (keys the KV cache).
    pub seq: u64,
    /// Tokens to append (a prompt chunk, or one generated token).
    pub tokens: Vec<u32>,
    /// Position of the first token (= tokens already cached).
    pub start: usize,
    /// The adapter this sequence runs with (an id of
    /// [`RankModel::load_adapter`]); `None` is the base model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adapter: Option<u32>,
}

/// One decoder layer's weights on this rank.
struct Layer {
    attn_norm: Vec<f32>,
    /// This rank's query heads, then its key and value groups, one matrix.
    qkv: Linear,
    /// Biases of `qkv` (Qwen2), in the same column order.
    qkv_bias: Option<Vec<f32>>,
    /// Per-head RMS norm weights of the queries and the keys (Gemma 3).
    qk_norm: Option<(Vec<f32>, Vec<f32>)>,
    /// o_proj rows of this rank's share of the model width.
    wo: Linear,
    /// RMS norm of the attention output before the residual add (Gemma 3).
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    /// gate_proj then up_proj rows of this rank's feature share, one matrix.
    gate_up: Linear,
    /// down_proj rows of this rank's share of the model width.
    w_down: Linear,
    /// RMS norm of the feed-forward output before the residual add (Gemma 3).
    post_ffn_norm: Option<Vec<f32>>,
    /// Index into the model's RoPE tables (one per distinct base and scale).
    rope: usize,
}

/// Token embeddings: rows of a kernel matrix (shared with a tied output head), or candle's lookup.
enum Embedding {
    Quant(Arc<QuantMatrix>),
    Candle(QTensor),
}

/// The output head.
enum Head {
    /// Vocabulary-parallel: each rank computes its rows (`rows` of `matrix`)
    /// and the logits are gathered, so no rank streams the whole head alone
    /// (Gemma's tied head is 178 MB a token). Each logit is still one dot
    /// product by the same kernel, so world sizes agree exactly.
    Split {
        /// The head (a tied head: the embedding matrix itself).
        matrix: Arc<QuantMatrix>,
        /// This rank's rows of it.
        rows: std::ops::Range<usize>,
        /// Rows of every rank, in rank order.
        per_rank: Vec<usize>,
    },
    /// A head of a type without a kernel here: rank 0 computes it whole
    /// (other ranks hold None).
    Whole(Option<Linear>),
}

/// This rank's weights and KV caches.
pub struct RankModel {
    cfg: DecoderConfig,
    part: Partition,
    embed: Embedding,
    vocab: usize,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    head: Head,
    ropes: Vec<Rope>,
    caches: HashMap<u64, SeqCache>,
    /// Prompt prefixes kept for later requests, by the scheduler's entry id
    /// (see `prefix_cache`); every rank keeps its own share of each.
    prefixes: HashMap<u64, SeqCache>,
    /// Loaded LoRA adapters (this rank's share), by the scheduler's id.
    adapters: HashMap<u32, RankAdapter>,
}

impl RankModel {
    /// The model's shape.
    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// This rank's share.
    pub fn partition(&self) -> &Partition {
        &self.part
    }

    /// Sequences with a KV cache on this rank.
    pub fn cached_sequences(&self) -> usize {
        self.caches.len()
    }

    /// Cached values per position per layer on this rank: its k/v heads
    /// times the head width (the `SeqCache` width).
    fn kv_width(&self) -> usize {
        self.part.kv_groups.len() * self.cfg.head_dim
    }

    /// Bytes one cached position costs on this rank: every layer's keys and
    /// values in f16 (what the prefix cache budgets by).
    pub fn kv_bytes_per_position(&self) -> usize {
        self.cfg.n_layer * 2 * self.kv_width() * std::mem::size_of::<half::f16>()
    }

    /// Bytes of KV cache held on this rank.
    pub fn cache_bytes(&self) -> usize {
        self.caches.values().map(SeqCache::bytes).sum()
    }

    /// Bytes of weights one decode step streams on this rank (every layer's
    /// matrices, plus its share of the output head).
    pub fn weight_bytes(&self) -> usize {
        let layers: usize =
            self.layers.iter().map(|l| l.qkv.bytes() + l.wo.bytes() + l.gate_up.bytes() + l.w_down.bytes()).sum();
        let head = match &self.head {
            Head::Split { matrix, rows, .. } => matrix.bytes() / matrix.rows().max(1) * rows.len(),
            Head::Whole(l) => l.as_ref().map_or(0, Linear::bytes),
        };
        layers + head
    }

    /// Drops a sequence's KV cache.
    pub fn free(&mut self, seq: u64) {
        self.caches.remove(&seq);
    }

    /// Keeps the first `positions` positions of sequence `seq`'s cache as
    /// prefix `entry` (nothing when the sequence is gone, e.g. cancelled).
    pub fn save_prefix(&mut self, seq: u64, entry: u64, positions: usize) {
        if let Some(cache) = self.caches.get(&seq) {
            self.prefixes.insert(entry, cache.prefix(positions));
        }
    }

    /// Starts sequence `seq`'s cache as the first `positions` positions of
    /// prefix `entry`. An unknown entry is an error: the scheduler and the
    /// ranks disagree, and prefilling from position `positions` would read
    /// keys that are not there.
    pub fn fork_prefix(&mut self, entry: u64, seq: u64, positions: usize) -> Result<(), ModelError> {
        let prefix = self.prefixes.get(&entry).ok_or_else(|| ModelError::Input(format!("no prefix entry {entry}")))?;
        if prefix.positions() < positions {
            return Err(ModelError::Input(format!("prefix entry {entry} holds fewer than {positions} positions")));
        }
        self.caches.insert(seq, prefix.prefix(positions));
        Ok(())
    }

    /// Forgets prefix `entry`.
    pub fn drop_prefix(&mut self, entry: u64) {
        self.prefixes.remove(&entry);
    }

    /// Applies the scheduler's prefix operations of one step, in the order
    /// every rank uses: saves (of sequences still cached), forks, then drops
    /// (so an entry evicted in the same step still serves its forks).
    pub fn apply_prefix_ops(&mut self, ops: &PrefixOps) -> Result<(), ModelError> {
        for save in &ops.save {
            self.save_prefix(save.seq, save.entry, save.positions);
        }
        for fork in &ops.fork {
            self.fork_prefix(fork.entry, fork.seq, fork.positions)?;
        }
        for entry in &ops.drop {
            self.drop_prefix(*entry);
        }
        Ok(())
    }

    /// Bytes of kept prefixes on this rank.
    pub fn prefix_bytes(&self) -> usize {
        self.prefixes.values().map(SeqCache::bytes).sum()
    }

    /// Loads this rank's share of `adapter` as `id` (checked against the model first).
    pub fn load_adapter(&mut self, id: u32, adapter: &LoraAdapter) -> Result<(), ModelError> {
        adapter.check(&self.cfg)?;
        self.adapters.insert(id, RankAdapter::new(adapter, &self.cfg, &self.part));
        Ok(())
    }

    /// Forgets adapter `id`.
    pub fn unload_adapter(&mut self, id: u32) {
        self.adapters.remove(&id);
    }

    /// Bytes of adapters held on this rank.
    pub fn adapter_bytes(&self) -> usize {
        self.adapters.values().map(RankAdapter::bytes).sum()
    }

    fn heads(&self) -> Heads {
        Heads { n_q: self.part.q_heads().len(), n_kv: self.part.kv_groups.len(), head_dim: self.cfg.head_dim }
    }
}
