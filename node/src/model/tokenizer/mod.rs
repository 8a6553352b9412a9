//! The tokenizer of a GGUF model, built from the file's own metadata
//! (`tokenizer.ggml.*`), so a GGUF is all a model needs: no tokenizer.json next
//! to it. Two kinds, as llama.cpp has them:
//!
//! - `gpt2`: byte-level BPE (SmolLM, Llama 3, Qwen 2), on the `tokenizers`
//!   crate ([`bpe`]);
//! - `llama`: SentencePiece with scores and byte fallback (Llama 2, Mistral,
//!   Gemma), by hand after llama.cpp ([`spm`]).
//!
//! Control and user-defined tokens are recognised in raw prompts, so
//! `<|im_start|>` or `<start_of_turn>` is one token, as llama.cpp parses a prompt
//! with `parse_special`.
mod bpe;
pub mod spm;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::Tokenizer;

use super::ModelError;
use spm::SpmVocab;

/// GGUF token types (llama.cpp's `llama_token_type`), shared by both kinds.
const TYPE_UNKNOWN: u32 = 2;
const TYPE_CONTROL: u32 = 3;
const TYPE_USER_DEFINED: u32 = 4;
const TYPE_BYTE: u32 = 6;

/// The two tokenizer kinds.
#[derive(Clone)]
enum Kind {
    Bpe(Box<Tokenizer>),
    Spm(Box<SpmVocab>),
}

/// The tokenizer and the ids generation needs.
#[derive(Clone)]
pub struct GgufTokenizer {
    kind: Kind,
    /// Beginning-of-sequence id.
    pub bos_id: Option<u32>,
    /// End-of-sequence id.
    pub eos_id: Option<u32>,
    /// Ids that end a generation (EOS and end-of-turn tokens such as `<|im_end|>`).
    pub end_of_generation: Vec<u32>,
    /// Whether the model wants BOS prepended (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    /// Whether the model wants EOS appended to a prompt (`tokenizer.ggml.add_eos_token`).
    pub add_eos: bool,
    tokens: Vec<String>,
    /// Control and user-defined tokens: markers, never text a grammar can spell.
    special: Vec<bool>,
}

fn meta<'a>(ct: &'a Content, key: &str) -> Result<&'a Value, ModelError> {
    ct.metadata.get(key).ok_or_else(|| ModelError::Format(format!("GGUF metadata lacks {key}")))
}

fn strings(v: &Value, key: &str) -> Result<Vec<String>, ModelError> {
    let arr = v.to_vec().map_err(|_| ModelError::Format(format!("{key} is not an array")))?;
    arr.iter()
        .map(|v| v.to_string().cloned().map_err(|_| ModelError::Format(format!("{key} holds a non-string"))))
        .collect()
}

fn number(v: &Value) -> Option<u32> {
    match v {
        Value::U8(x) => Some(*x as u32),
        Value::I8(x) => Some(*x as u32),
        Value::U16(x) => Some(*x as u32),
        Value::I16(x) => Some(*x as u32),
        Value::U32(x) => Some(*x),
        Value::I32(x) => Some(*x as u32),
        Value::U64(x) => Some(*x as u32),
        Value::I64(x) => Some(*x as u32),
        _ => None,
    }
}

impl GgufTokenizer {
    /// Builds the tokenizer from GGUF metadata.
    pub fn from_gguf(ct: &Content) -> Result<Self, ModelError> {
        let model = meta(ct, "tokenizer.ggml.model")?
            .to_string()
            .map_err(|_| ModelError::Format("tokenizer.ggml.model".into()))?
            .clone();
        let tokens = strings(meta(ct, "tokenizer.ggml.tokens")?, "tokenizer.ggml.tokens")?;
        let types: Vec<u32> = match ct.metadata.get("tokenizer.ggml.token_type") {
            Some(v) => v.to_vec().map(|a| a.iter().map(|x| number(x).unwrap_or(1)).collect()).unwrap_or_default(),
            None => Vec::new(),
        };
        let flag = |key: &str| match ct.metadata.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        };
        let id = |key: &str| ct.metadata.get(key).and_then(number);
        // llama.cpp's defaults per kind when the file does not say.
        let (kind, add_bos_default) = match model.as_str() {
            "gpt2" => (Kind::Bpe(Box::new(bpe::from_gguf(ct, &tokens, &types)?)), false),
            "llama" => {
                let scores: Vec<f32> = match ct.metadata.get("tokenizer.ggml.scores") {
                    Some(v) => v
                        .to_vec()
                        .map_err(|_| ModelError::Format("tokenizer.ggml.scores is not an array".into()))?
                        .iter()
                        .map(|x| x.to_f32().unwrap_or(0.0))
                        .collect(),
                    None => vec![0.0; tokens.len()],
                };
                let space_prefix = flag("tokenizer.ggml.add_space_prefix").unwrap_or(true);
                let unknown =
                    id("tokenizer.ggml.unknown_token_id").or(Some(0)).filter(|&u| (u as usize) < tokens.len());
                let vocab = SpmVocab::new(tokens.clone(), scores, types.clone(), space_prefix, unknown)?;
                (Kind::Spm(Box::new(vocab)), true)
            }
            other => {
                return Err(ModelError::Unsupported(format!(
                    "tokenizer model '{other}' (supported: 'gpt2' byte-level BPE, 'llama' SentencePiece)"
                )))
            }
        };
        let bos_id = id("tokenizer.ggml.bos_token_id");
        let eos_id = id("tokenizer.ggml.eos_token_id");
        let add_bos = flag("tokenizer.ggml.add_bos_token").unwrap_or(add_bos_default);
        let add_eos = flag("tokenizer.ggml.add_eos_token").unwrap_or(false);
        let mut end_of_generation: Vec<u32> = eos_id.into_iter().collect();
        if let Some(eot) = id("tokenizer.ggml.eot_token_id") {
            end_of_generation.push(eot);
        }
        for name in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<end_of_turn>", "<|end|>"] {
            if let Some(i) = tokens.iter().position(|t| t == name) {
                end_of_generation.push(i as u32);
            }
        }
        end_of_generation.sort_unstable();
        end_of_generation.dedup();
        let special =
            (0..tokens.len()).map(|i| matches!(types.get(i), Some(&TYPE_CONTROL) | Some(&TYPE_USER_DEFINED))).collect();
        Ok(Self { kind, bos_id, eos_id, end_of_generation, add_bos, add_eos, tokens, special })
    }

    /// Token ids of `text`, special tokens recognised; BOS prepended (and
    /// EOS appended) when the model asks for it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if self.add_bos {
            ids.extend(self.bos_id);
        }
        match &self.kind {
            Kind::Bpe(t) => {
                let enc = t.encode_fast(text, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
                ids.extend_from_slice(enc.get_ids());
            }
            Kind::Spm(v) => v.encode(text, &mut ids)?,
        }
        if self.add_eos {
            ids.extend(self.eos_id);
        }
        Ok(ids)
    }

    /// Text of `ids` (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        match &self.kind {
            Kind::Bpe(t) => t.decode(ids, true).map_err(|e| ModelError::Tokenizer(e.to_string())),
            Kind::Spm(v) => Ok(v.decode(ids)),
        }
    }

    /// The vocabulary piece of an id (for bos/eos strings in chat templates).
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// Ids of `text` as a continuation: no BOS or EOS added (what a grammar
    /// engine asks for when it re-tokenizes text it forces).
    pub fn encode_continuation(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 1);
        match &self.kind {
            Kind::Bpe(t) => {
                let enc = t.encode_fast(text, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
                ids.extend_from_slice(enc.get_ids());
            }
            Kind::Spm(v) => v.encode_continuation(text, &mut ids)?,
        }
        Ok(ids)
    }

    /// The bytes token `id` adds to the text in the middle of an output, or
    /// `None` for a control or user-defined token (a marker, not text).
    /// Constrained decoding matches these bytes against the grammar, so they
    /// are the raw bytes, not a decode: a byte-level token that holds half of
    /// a UTF-8 character yields that half.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let i = id as usize;
        if self.special.get(i).copied().unwrap_or(true) {
            return None;
        }
        let piece = self.tokens.get(i)?;
        match &self.kind {
            Kind::Bpe(_) => bpe::piece_bytes(piece),
            Kind::Spm(v) => v.piece_bytes(id),
        }
    }
}
