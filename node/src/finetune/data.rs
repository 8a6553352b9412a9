//! Training data: JSON Lines of chats or prompt/completion pairs, or a
//! collection's chunks, turned into token ids with a per-token loss weight.
//!
//! - `{"messages": [{"role", "content"}, ...]}`: rendered with the model's
//!   chat template; only the assistant turns (their text and the turn's end
//!   token, so the model learns to stop) count in the loss.
//! - `{"prompt": ..., "completion": ...}`: raw text, the loss on the
//!   completion and the end-of-sequence token after it.
//! - chunks (`--collection`): next-token prediction on every token.
//!
//! The whole file is parsed before anything is trained or written; the first
//! bad line is named by its number.
use std::str::FromStr;

use serde_json::Value;
use tessera_types::{ChatMessage, Role};

use crate::model::{ChatTemplate, GgufTokenizer};

use super::FinetuneError;

/// One training sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Per token: 1 when predicting it counts in the loss, else 0 (the first
    /// token is never predicted).
    pub weights: Vec<f32>,
}

impl Example {
    /// Tokens whose prediction counts.
    pub fn target_tokens(&self) -> usize {
        self.weights.iter().skip(1).filter(|&&w| w > 0.0).count()
    }
}

/// Turns texts into examples with one tokenizer and template.
pub struct Encoder<'a> {
    /// The base model's tokenizer.
    pub tokenizer: &'a GgufTokenizer,
    /// Its chat template.
    pub template: &'a ChatTemplate,
    /// Longest sequence kept (longer ones are cut at the end).
    pub max_seq_len: usize,
}

impl Encoder<'_> {
    /// Parses JSON Lines `text`: every line a chat or a prompt/completion
    /// pair (blank lines skipped). Returns the examples and how many lines
    /// were dropped because nothing to learn survived `max_seq_len`.
    pub fn jsonl(&self, text: &str) -> Result<(Vec<Example>, usize), FinetuneError> {
        let mut out = Vec::new();
        let mut dropped = 0;
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let bad = |m: String| FinetuneError::Data(format!("line {n}: {m}"));
            let v: Value = serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
            let ex = if let Some(messages) = v.get("messages") {
                self.chat(&parse_messages(messages).map_err(bad)?).map_err(|e| bad(e.to_string()))?
            } else {
                match (v.get("prompt").and_then(Value::as_str), v.get("completion").and_then(Value::as_str)) {
                    (Some(p), Some(c)) if !c.is_empty() => self.pair(p, c).map_err(|e| bad(e.to_string()))?,
                    (Some(_), Some(_)) => return Err(bad("the completion is empty".into())),
                    _ => {
                        return Err(
                            bad("expected {\"messages\": [...]} or {\"prompt\", \"completion\"} strings".into()),
                        )
                    }
                }
            };
            if ex.target_tokens() == 0 {
                dropped += 1;
            } else {
                out.push(ex);
            }
        }
        if out.is_empty() {
            return Err(FinetuneError::Data("no example with tokens to learn (empty file, or all cut off)".into()));
        }
        Ok((out, dropped))
    }

    /// One chat: the template's rendering split at each assistant turn, each
    /// piece tokenized on its own (the pieces meet at special tokens, where a
    /// tokenization of the whole would split too).
    pub fn chat(&self, messages: &[ChatMessage]) -> Result<Example, FinetuneError> {
        if !messages.iter().any(|m| m.role == Role::Assistant) {
            return Err(FinetuneError::Data("a chat needs at least one assistant message to learn from".into()));
        }
        let mut pieces: Vec<(String, bool)> = Vec::new();
        let mut done = String::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != Role::Assistant {
                continue;
            }
            let before = self.template.render_with(&messages[..i], true)?;
            let through = self.template.render_with(&messages[..=i], false)?;
            let (Some(head), Some(turn)) = (before.strip_prefix(done.as_str()), through.strip_prefix(before.as_str()))
            else {
                return Err(FinetuneError::Data(
                    "the chat template does not render conversations as prefixes of each other".into(),
                ));
            };
            pieces.push((head.to_string(), false));
            pieces.push((turn.to_string(), true));
            done = through;
        }
        let all = self.template.render_with(messages, false)?;
        if let Some(rest) = all.strip_prefix(done.as_str()) {
            pieces.push((rest.to_string(), false));
        }
        self.encode_pieces(&pieces)
    }

    /// A prompt and its completion (then end of sequence) as raw text.
    pub fn pair(&self, prompt: &str, completion: &str) -> Result<Example, FinetuneError> {
        let eos = self.tokenizer.eos_id.and_then(|id| self.tokenizer.token(id)).unwrap_or("").to_string();
        self.encode_pieces(&[(prompt.to_string(), false), (format!("{completion}{eos}"), true)])
    }

    /// A stored chunk: every token counts.
    pub fn plain(&self, text: &str) -> Result<Example, FinetuneError> {
        self.encode_pieces(&[(text.to_string(), true)])
    }

    fn encode_pieces(&self, pieces: &[(String, bool)]) -> Result<Example, FinetuneError> {
        let mut ids = Vec::new();
        let mut weights = Vec::new();
        for (k, (text, learn)) in pieces.iter().enumerate() {
            if text.is_empty() {
                continue;
            }
            let part = if k == 0 { self.tokenizer.encode(text)? } else { self.tokenizer.encode_continuation(text)? };
            weights.extend(std::iter::repeat_n(if *learn { 1.0 } else { 0.0 }, part.len()));
            ids.extend(part);
        }
        ids.truncate(self.max_seq_len);
        weights.truncate(self.max_seq_len);
        Ok(Example { ids, weights })
    }
}

fn parse_messages(v: &Value) -> Result<Vec<ChatMessage>, String> {
    let list = v.as_array().ok_or("\"messages\" must be a list")?;
    if list.is_empty() {
        return Err("\"messages\" is empty".into());
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m.get("role").and_then(Value::as_str).ok_or(format!("message {i} has no \"role\" string"))?;
            let role = Role::from_str(role).map_err(|e| format!("message {i}: {e}"))?;
            let content =
                m.get("content").and_then(Value::as_str).ok_or(format!("message {i} has no \"content\" string"))?;
            Ok(ChatMessage::new(role, content))
        })
        .collect()
}

/// Splits `examples` into training and evaluation sets: the last
/// `fraction` of them (at least one when the fraction is above 0 and there
/// are two or more) are held out.
pub fn split_eval(mut examples: Vec<Example>, fraction: f32) -> (Vec<Example>, Vec<Example>) {
    if fraction <= 0.0 || examples.len() < 2 {
        return (examples, Vec::new());
    }
    let held = ((examples.len() as f32 * fraction).round() as usize).clamp(1, examples.len() - 1);
    let eval = examples.split_off(examples.len() - held);
    (examples, eval)
}
