//! A BERT-family sentence-transformers model (default all-MiniLM-L6-v2).
//!
//! Reproduces sentence-transformers' recipe: tokenizer.json ids truncated to
//! `max_seq_length` word pieces (keeping [CLS] and [SEP]), the last hidden state
//! averaged over the attention mask, then divided by its L2 norm.
use std::path::{Path, PathBuf};

use thiserror::Error;
use tokenizers::{Encoding, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::encoder::{BertEncoder, EncoderConfig};

/// Why the embedder could not load or run.
#[derive(Debug, Error)]
pub enum EmbedError {
    /// A model file is missing or unreadable.
    #[error("cannot read model file {path}: {message} (run scripts/fetch-models.sh to fetch the default models)")]
    File {
        /// The file that failed.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The weights file could not be read as tensors (candle's safetensors reader).
    #[error("model: {0}")]
    Model(#[from] candle_core::Error),
    /// A tensor is missing or has the wrong shape, or the config cannot be run.
    #[error("model weights: {0}")]
    Weights(String),
    /// Input the model cannot take (an id outside the vocabulary, a text
    /// longer than the position table).
    #[error("embedder input: {0}")]
    Input(String),
}

/// See the module documentation.
pub struct BertEmbedder {
    encoder: BertEncoder,
    tokenizer: Tokenizer,
    dimension: usize,
    max_tokens: usize,
    name: String,
}

impl BertEmbedder {
    /// Loads a sentence-transformers folder (config.json, tokenizer.json,
    /// model.safetensors, optional sentence_bert_config.json) on the CPU.
    pub fn load(dir: &Path) -> Result<Self, EmbedError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| EmbedError::File { path, message: e.to_string() })
        };
        let config: EncoderConfig = serde_json::from_str(&read("config.json")?)
            .map_err(|e| EmbedError::File { path: dir.join("config.json"), message: e.to_string() })?;
        let dimension = config.hidden_size;
        let max_tokens = read("sentence_bert_config.json")
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v["max_seq_length"].as_u64())
            .unwrap_or(256)
            .min(config.max_position_embeddings as u64) as usize; // truncation keeps texts within the position table
        if max_tokens < 2 {
            // [CLS] and [SEP] alone take two; the tokenizer's truncation would underflow.
            return Err(EmbedError::Weights(format!("max_seq_length {max_tokens} leaves no room for [CLS] and [SEP]")));
        }

        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| EmbedError::File { path: tokenizer_path.clone(), message: e.to_string() })?;
        // tokenizer.json declares truncation at 128 and fixed padding; sentence-transformers
        // overrides both (truncate at max_seq_length, pad per batch), and so do we.
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?
            .with_padding(None);

        let weights = dir.join("model.safetensors");
        if !weights.exists() {
            return Err(EmbedError::File { path: weights, message: "not found".into() });
        }
        let encoder = BertEncoder::load(&weights, config)?;
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("bert").to_string();
        Ok(Self { encoder, tokenizer, dimension, max_tokens, name })
    }

    /// Output dimension (384 for all-MiniLM-L6-v2).
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Word pieces read per text; longer texts are truncated.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Model name (its folder name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tokenizer as configured for embedding (truncation on, padding off).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Tokenizes texts (with special tokens, truncated).
    pub fn encode(&self, texts: &[String]) -> Result<Vec<Encoding>, EmbedError> {
        self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| EmbedError::Tokenizer(e.to_string()))
    }

    /// Embeds already tokenized texts in one forward pass (packed end to
    /// end, no padding).
    pub fn embed_encodings(&self, encodings: &[&Encoding]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let ids: Vec<&[u32]> = encodings.iter().map(|e| e.get_ids()).collect();
        self.encoder.embed(&ids)
    }

    /// Tokenizes and embeds texts in one batch.
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let encodings = self.encode(texts)?;
        self.embed_encodings(&encodings.iter().collect::<Vec<_>>())
    }
}
