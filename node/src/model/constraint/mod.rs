//! Constrained decoding: at every step, tokens that cannot continue a valid
//! output are masked out before sampling, so a JSON-schema request always
//! returns JSON that parses and validates, whatever the model and temperature.
//!
//! The grammar engine is [llguidance](https://github.com/guidance-ai/llguidance)
//! (the one llama.cpp, vLLM and SGLang ship): a JSON schema, a regex or a list
//! of choices becomes a grammar whose token masks it computes lazily from a
//! trie of the vocabulary (an Earley parser over a derivative-based lexer), so
//! no automaton over all tokens is built up front.
//!
//! - [`OutputConstraint`]: what a request asks for, as it travels in `SamplingParams`;
//! - `vocabulary`: the model's tokens as bytes, for the grammar engine;
//! - [`ConstraintCompiler`]: one per model group; compiles each constraint
//!   once and caches the compiled grammar;
//! - [`Guide`]: one per sequence; masks logits and follows the sampled tokens.
mod compiler;
mod guide;
mod vocabulary;

pub use compiler::ConstraintCompiler;
pub use guide::Guide;

use serde::{Deserialize, Serialize};

/// Largest JSON schema or regex accepted, in bytes: a grammar is compiled
/// per request on the node, so its input is bounded like any other input.
pub const MAX_CONSTRAINT_BYTES: usize = 64 * 1024;
/// Most options of a choice constraint.
pub const MAX_CHOICES: usize = 1024;

/// What the output must be.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OutputConstraint {
    /// JSON valid against this JSON Schema (the schema's JSON text).
    JsonSchema(String),
    /// Any JSON object (OpenAI's `json_object`).
    JsonObject,
    /// The whole output matches this regex (Rust `regex` syntax, anchored at both ends).
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
}

/// A constraint that cannot be compiled; the message says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConstraintError {
    /// Bad input: an invalid schema or regex, an unsatisfiable schema, too large.
    #[error("{0}")]
    Invalid(String),
    /// The grammar engine failed while generating (reported to that request only).
    #[error("constrained decoding failed: {0}")]
    Failed(String),
}

impl OutputConstraint {
    /// Checks sizes before anything is compiled.
    pub fn validate(&self) -> Result<(), ConstraintError> {
        let too_big = |what: &str, n: usize| {
            ConstraintError::Invalid(format!("{what} is {n} bytes; at most {MAX_CONSTRAINT_BYTES}"))
        };
        match self {
            Self::JsonSchema(s) if s.len() > MAX_CONSTRAINT_BYTES => Err(too_big("the JSON schema", s.len())),
            Self::JsonSchema(s) if s.trim().is_empty() => {
                Err(ConstraintError::Invalid("the JSON schema is empty".into()))
            }
            Self::Regex(r) if r.len() > MAX_CONSTRAINT_BYTES => Err(too_big("the regex", r.len())),
            Self::Regex(r) if r.is_empty() => Err(ConstraintError::Invalid("the regex is empty".into())),
            Self::Choice(c) if c.is_empty() => {
                Err(ConstraintError::Invalid("a choice needs at least one option".into()))
            }
            Self::Choice(c) if c.len() > MAX_CHOICES => {
                Err(ConstraintError::Invalid(format!("a choice has at most {MAX_CHOICES} options, got {}", c.len())))
            }
            Self::Choice(c) if c.iter().any(String::is_empty) => {
                Err(ConstraintError::Invalid("choice options must not be empty".into()))
            }
            Self::Choice(c) if c.iter().map(String::len).sum::<usize>() > MAX_CONSTRAINT_BYTES => {
                Err(too_big("the choice options", c.iter().map(String::len).sum()))
            }
            _ => Ok(()),
        }
    }

    /// Whether the output is JSON (the guide then closes open values when the
    /// token budget runs low, see [`Guide::mask`]).
    pub fn is_json(&self) -> bool {
        matches!(self, Self::JsonSchema(_) | Self::JsonObject)
    }

    /// The constraint's name, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::JsonSchema(_) => "json_schema",
            Self::JsonObject => "json_object",
            Self::Regex(_) => "regex",
            Self::Choice(_) => "choice",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_and_empty_constraints_are_refused_with_a_reason() {
        let big = "a".repeat(MAX_CONSTRAINT_BYTES + 1);
        let msg = |c: OutputConstraint| c.validate().unwrap_err().to_string();
        assert!(msg(OutputConstraint::Regex(big.clone())).contains("at most"));
        assert!(msg(OutputConstraint::JsonSchema(big)).contains("JSON schema"));
        assert!(msg(OutputConstraint::Choice(vec![])).contains("at least one"));
        assert!(msg(OutputConstraint::Choice(vec!["a".into(), String::new()])).contains("empty"));
        assert!(msg(OutputConstraint::Regex(String::new())).contains("empty"));
        assert!(OutputConstraint::Choice(vec!["yes".into(), "no".into()]).validate().is_ok());
        assert!(OutputConstraint::JsonObject.validate().is_ok());
    }
}
