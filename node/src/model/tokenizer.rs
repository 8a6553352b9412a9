//! A byte-level BPE tokenizer built from a GGUF file's own metadata
//! (`tokenizer.ggml.tokens`, `.merges`, `.token_type`, `.pre`), so a GGUF is all
//! a model needs: no tokenizer.json next to it.
//!
//! Control and user-defined tokens (types 3 and 4) become special added tokens,
//! so `<|im_start|>` in a raw prompt is one token, as llama.cpp parses it with
//! `parse_special`.
use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use super::ModelError;

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: u32 = 3;
const TOKEN_TYPE_USER_DEFINED: u32 = 4;

/// The tokenizer and the ids generation needs.
#[derive(Clone)]
pub struct GgufTokenizer {
    tokenizer: Tokenizer,
    /// Beginning-of-sequence id.
    pub bos_id: Option<u32>,
    /// End-of-sequence id.
    pub eos_id: Option<u32>,
    /// Ids that end a generation (EOS and end-of-turn tokens such as `<|im_end|>`).
    pub end_of_generation: Vec<u32>,
    /// Whether the model wants BOS prepended (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    tokens: Vec<String>,
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

/// The pre-tokenizer regex llama.cpp uses for a `tokenizer.ggml.pre` value.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, ModelError> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let byte_level_no_regex = || PreTokenizerWrapper::from(ByteLevel::new(false, true, false));
    let split = |re: &str| -> Result<PreTokenizerWrapper, ModelError> {
        let s = Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| ModelError::Format(format!("pre-tokenizer regex: {e}")))?;
        Ok(PreTokenizerWrapper::from(s))
    };
    Ok(match pre {
        // SmolLM / StarCoder: every digit alone, then GPT-2's byte-level split.
        "smollm" | "starcoder" | "refact" => {
            Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into()
        }
        "llama3" | "llama-bpe" | "smaug-bpe" => Sequence::new(vec![split(LLAMA3)?, byte_level_no_regex()]).into(),
        "qwen2" => Sequence::new(vec![split(QWEN2)?, byte_level_no_regex()]).into(),
        "gpt2" | "default" | "" => ByteLevel::new(false, true, true).into(),
        other => return Err(ModelError::Unsupported(format!("tokenizer pre-tokenizer '{other}'"))),
    })
}

impl GgufTokenizer {
    /// Builds the tokenizer from GGUF metadata.
    pub fn from_gguf(ct: &Content) -> Result<Self, ModelError> {
        let model = meta(ct, "tokenizer.ggml.model")?
            .to_string()
            .map_err(|_| ModelError::Format("tokenizer.ggml.model".into()))?;
        if model != "gpt2" {
            return Err(ModelError::Unsupported(format!(
                "tokenizer model '{model}' (only byte-level BPE, 'gpt2', is supported so far)"
            )));
        }
        let tokens = strings(meta(ct, "tokenizer.ggml.tokens")?, "tokenizer.ggml.tokens")?;
        let merges: Vec<(String, String)> = strings(meta(ct, "tokenizer.ggml.merges")?, "tokenizer.ggml.merges")?
            .into_iter()
            .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
            .collect();
        let types: Vec<u32> = match ct.metadata.get("tokenizer.ggml.token_type") {
            Some(v) => v.to_vec().map(|a| a.iter().map(|x| number(x).unwrap_or(1)).collect()).unwrap_or_default(),
            None => Vec::new(),
        };
        let pre = ct.metadata.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();

        let vocab: HashMap<String, u32, ahash::RandomState> =
            tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| ModelError::Format(format!("BPE: {e}")))?;
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer(&pre)?));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        let specials: Vec<AddedToken> = tokens
            .iter()
            .enumerate()
            .filter(|(i, _)| matches!(types.get(*i), Some(&TOKEN_TYPE_CONTROL) | Some(&TOKEN_TYPE_USER_DEFINED)))
            .map(|(_, t)| AddedToken::from(t.clone(), true))
            .collect();
        tokenizer.add_special_tokens(specials).map_err(|e| ModelError::Tokenizer(e.to_string()))?;

        let id = |key: &str| ct.metadata.get(key).and_then(number);
        let bos_id = id("tokenizer.ggml.bos_token_id");
        let eos_id = id("tokenizer.ggml.eos_token_id");
        let add_bos = matches!(ct.metadata.get("tokenizer.ggml.add_bos_token"), Some(Value::Bool(true)));
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
        Ok(Self { tokenizer, bos_id, eos_id, end_of_generation, add_bos, tokens })
    }

    /// Token ids of `text`, special tokens recognised; BOS prepended when the model asks for it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let enc = self.tokenizer.encode_fast(text, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            ids.extend(self.bos_id);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Text of `ids` (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.tokenizer.decode(ids, true).map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// The vocabulary piece of an id (for bos/eos strings in chat templates).
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
}
