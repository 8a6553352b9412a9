//! The part of a BERT `config.json` the encoder reads.
use serde::Deserialize;

/// Shape and constants of a BERT-family encoder, as Hugging Face writes them.
#[derive(Debug, Clone, Deserialize)]
pub struct EncoderConfig {
    /// Width of every token's hidden state (384 for all-MiniLM-L6-v2).
    pub hidden_size: usize,
    /// Attention heads per layer; `hidden_size` is split evenly among them.
    pub num_attention_heads: usize,
    /// Transformer layers.
    pub num_hidden_layers: usize,
    /// Width of the feed-forward block (4 x hidden for BERT).
    pub intermediate_size: usize,
    /// Rows of the position table: the longest input the model was trained on.
    pub max_position_embeddings: usize,
    /// Rows of the word-piece table.
    pub vocab_size: usize,
    /// Epsilon of every layer norm.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Activation of the feed-forward block; only `gelu` (the exact, erf one) is built.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// `bert` here. RoBERTa-family checkpoints share the tensor names but
    /// number positions from `padding_idx + 1`, so they would load and embed
    /// wrongly; they are refused instead.
    #[serde(default)]
    pub model_type: Option<String>,
    /// `absolute` (or absent): relative position variants are not built.
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_eps() -> f64 {
    1e-12
}

fn default_act() -> String {
    "gelu".into()
}

impl EncoderConfig {
    /// Values per attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Why this config cannot be run, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not divisible into {} attention heads",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.hidden_size == 0 || self.max_position_embeddings < 2 || self.vocab_size == 0 {
            return Err(format!(
                "hidden_size {}, max_position_embeddings {} and vocab_size {} cannot make an encoder",
                self.hidden_size, self.max_position_embeddings, self.vocab_size
            ));
        }
        if let Some(t) = self.model_type.as_deref().filter(|t| *t != "bert") {
            return Err(format!("model_type {t:?} is not supported (only \"bert\")"));
        }
        if let Some(p) = self.position_embedding_type.as_deref().filter(|p| *p != "absolute") {
            return Err(format!("position_embedding_type {p:?} is not supported (only \"absolute\")"));
        }
        if self.hidden_act != "gelu" {
            return Err(format!("hidden_act {:?} is not supported (only \"gelu\")", self.hidden_act));
        }
        Ok(())
    }
}
