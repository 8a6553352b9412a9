//! Tessera's own BERT encoder forward over plain f32 buffers.
//!
//! candle's `BertModel` pads every batch to its longest text, masks in a
//! separate pass, runs a five-pass softmax and libm's `erf` per value, and
//! makes one product per head through its tensor layer. This forward packs
//! the batch's sequences end to end (no padding, no mask), fuses the q|k|v
//! projections into one product, folds the attention scale into `q k^T`,
//! and runs GELU, softmax and the layer norms as single vectorised passes
//! (AVX-512 where the CPU has it). The projections over many rows run on
//! AMX tiles in bf16 where the CPU has them (`amx`), a few rows (a query)
//! through `skinny`, and otherwise, like the attention products, through the
//! `gemm` crate (the one candle itself calls), with the weights transposed
//! once at load. Layout follows candle-transformers' model files: config, small
//! layers with their own forward, the model's forward last.
pub(crate) mod amx;
mod attention;
mod config;
mod disjoint_out;
mod layer;
mod linear;
mod skinny;
mod vector_math;
mod weights;

use std::path::Path;

pub use config::EncoderConfig;
use layer::{EncoderLayer, LayerNorm, LayerScratch};
use linear::Linear;
use weights::Weights;

use super::EmbedError;

/// Word-piece, position and (type 0) token-type embeddings with their norm.
struct Embeddings {
    words: Vec<f32>,
    positions: Vec<f32>,
    token_type: Vec<f32>,
    norm: LayerNorm,
}

/// A loaded encoder: embeddings, then `num_hidden_layers` layers.
pub struct BertEncoder {
    config: EncoderConfig,
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
}

impl BertEncoder {
    /// Loads the weights of `config` from a safetensors file.
    pub fn load(weights_path: &Path, config: EncoderConfig) -> Result<Self, EmbedError> {
        config.check().map_err(EmbedError::Weights)?;
        let w = Weights::load(weights_path)?;
        let (h, f) = (config.hidden_size, config.intermediate_size);
        let eps = config.layer_norm_eps as f32;
        let norm = |prefix: &str| -> Result<LayerNorm, EmbedError> {
            Ok(LayerNorm {
                weight: w.get(&format!("{prefix}.weight"), &[h])?,
                bias: w.get(&format!("{prefix}.bias"), &[h])?,
                eps,
            })
        };
        let linear = |prefix: &str, inputs: usize, outputs: usize| -> Result<Linear, EmbedError> {
            let weight = w.get(&format!("{prefix}.weight"), &[outputs, inputs])?;
            Ok(Linear::new(&weight, w.get(&format!("{prefix}.bias"), &[outputs])?, inputs, outputs))
        };
        // The table has a row per segment type (usually 2); sentence embedding uses type 0 only.
        let token_type = w.first_row("embeddings.token_type_embeddings.weight", h)?;
        let embeddings = Embeddings {
            words: w.get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
            positions: w.get("embeddings.position_embeddings.weight", &[config.max_position_embeddings, h])?,
            token_type,
            norm: norm("embeddings.LayerNorm")?,
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let attention = attention::SelfAttention::new(
                linear(&format!("{p}.attention.self.query"), h, h)?,
                linear(&format!("{p}.attention.self.key"), h, h)?,
                linear(&format!("{p}.attention.self.value"), h, h)?,
                linear(&format!("{p}.attention.output.dense"), h, h)?,
                config.num_attention_heads,
            );
            layers.push(EncoderLayer {
                attention,
                attention_norm: norm(&format!("{p}.attention.output.LayerNorm"))?,
                up: linear(&format!("{p}.intermediate.dense"), h, f)?,
                down: linear(&format!("{p}.output.dense"), f, h)?,
                output_norm: norm(&format!("{p}.output.LayerNorm"))?,
            });
        }
        Ok(Self { config, embeddings, layers })
    }

    /// The config the encoder was loaded with.
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// The last hidden state of every token of every sequence, packed:
    /// sequence `s` is rows `starts[s]..starts[s + 1]` of the result.
    /// Ids must be below the vocabulary size and sequences no longer than
    /// the position table (the tokenizer's truncation sees to both; checked
    /// here too, as an error).
    pub fn forward(&self, sequences: &[&[u32]]) -> Result<(Vec<f32>, Vec<usize>), EmbedError> {
        let h = self.config.hidden_size;
        let mut starts = Vec::with_capacity(sequences.len() + 1);
        starts.push(0);
        for s in sequences {
            if s.len() > self.config.max_position_embeddings {
                return Err(EmbedError::Input(format!(
                    "a text of {} word pieces is longer than the model's {} positions",
                    s.len(),
                    self.config.max_position_embeddings
                )));
            }
            starts.push(starts[starts.len() - 1] + s.len());
        }
        let tokens = starts[starts.len() - 1];
        let mut x = Vec::with_capacity(tokens * h);
        for s in sequences {
            for (pos, &id) in s.iter().enumerate() {
                let id = id as usize;
                if id >= self.config.vocab_size {
                    return Err(EmbedError::Input(format!("word-piece id {id} is outside the vocabulary")));
                }
                let word = &self.embeddings.words[id * h..][..h];
                let position = &self.embeddings.positions[pos * h..][..h];
                x.extend(word.iter().zip(position).zip(&self.embeddings.token_type).map(|((w, p), t)| w + p + t));
            }
        }
        self.embeddings.norm.apply(&mut x, None);
        let mut scratch = LayerScratch::default();
        for layer in &self.layers {
            layer.forward(&mut x, &starts, &mut scratch);
        }
        Ok((x, starts))
    }

    /// sentence-transformers' pooling: each sequence's token states averaged,
    /// then divided by the L2 norm.
    pub fn embed(&self, sequences: &[&[u32]]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let h = self.config.hidden_size;
        // The whole forward runs on a pool thread: every product and the
        // attention fan out from there as local work, instead of each of the
        // ~30 parallel steps of a pass being injected into the pool from the
        // caller's (actor's blocking) thread and waking it again when done.
        let (states, starts) = rayon::scope(|_| self.forward(sequences))?;
        Ok(starts
            .windows(2)
            .map(|w| {
                let mut mean = vec![0f32; h];
                for row in states[w[0] * h..w[1] * h].chunks_exact(h) {
                    mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
                }
                let count = (w[1] - w[0]).max(1) as f32;
                mean.iter_mut().for_each(|m| *m /= count);
                let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                mean.iter_mut().for_each(|m| *m /= norm);
                mean
            })
            .collect())
    }
}
