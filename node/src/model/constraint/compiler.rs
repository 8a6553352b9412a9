//! Compiling constraints: one compiler per model group (it owns the grammar
//! engine's view of that group's vocabulary), one compiled grammar per
//! distinct constraint, cached, so a schema sent with every request is
//! compiled once.
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{InferenceCapabilities, TokEnv};
use llguidance::{Matcher, ParserFactory, TokenParser};
use serde_json::Value;

use super::guide::{Closers, Guide};
use super::vocabulary::Vocabulary;
use super::{ConstraintError, OutputConstraint};
use crate::model::GgufTokenizer;

/// Compiled grammars kept per model group; the oldest leaves first.
const CACHED_GRAMMARS: usize = 64;

/// See the module documentation.
pub struct ConstraintCompiler {
    tokenizer: Arc<GgufTokenizer>,
    /// The `model` label of its metrics.
    label: String,
    /// Built on the first constrained request: the token trie and the
    /// engine's precomputed token classes take a walk over the vocabulary
    /// (tens of milliseconds; more for 256k-token vocabularies) that requests
    /// without constraints should not pay.
    engine: OnceLock<Result<Engine, ConstraintError>>,
    cache: Mutex<VecDeque<(OutputConstraint, TokenParser)>>,
}

struct Engine {
    factory: ParserFactory,
    closers: Arc<Closers>,
}

impl ConstraintCompiler {
    /// A compiler for the group whose tokenizer this is, served as `label`.
    pub fn new(tokenizer: Arc<GgufTokenizer>, label: &str) -> Self {
        Self { tokenizer, label: label.to_string(), engine: OnceLock::new(), cache: Mutex::new(VecDeque::new()) }
    }

    /// Builds the grammar engine now if it is not built yet (a request that
    /// comes meanwhile waits for this build instead of starting its own).
    pub fn prepare(&self) {
        if let Err(e) = self.engine() {
            tracing::warn!(error = %e, "constrained decoding is unavailable for this model");
        }
    }

    fn engine(&self) -> Result<&Engine, ConstraintError> {
        self.engine
            .get_or_init(|| {
                let started = Instant::now();
                let env: TokEnv = Arc::new(Vocabulary::new(self.tokenizer.clone()));
                let mut factory = ParserFactory::new(
                    &env,
                    InferenceCapabilities::default(),
                    &llguidance::earley::SlicedBiasComputer::json_slices(),
                )
                .map_err(|e| ConstraintError::Failed(format!("building the grammar engine: {e}")))?;
                // Errors come back as values with the request; nothing on stderr.
                factory.quiet();
                let closers = Arc::new(Closers::new(env.tok_trie()));
                tracing::info!(ms = started.elapsed().as_millis() as u64, "constrained decoding engine ready");
                Ok(Engine { factory, closers })
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    /// A guide for one sequence under `constraint`: compiled now, or cloned
    /// from the cache when the same constraint was compiled before.
    pub fn guide(&self, constraint: &OutputConstraint) -> Result<Guide, ConstraintError> {
        constraint.validate()?;
        let engine = self.engine()?;
        let parser = self.compiled(engine, constraint)?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(ConstraintError::Invalid(e));
        }
        let closers = constraint.is_json().then(|| engine.closers.clone());
        Ok(Guide::new(matcher, closers))
    }

    /// Whether `constraint` is compiled and cached (for tests and metrics).
    pub fn is_cached(&self, constraint: &OutputConstraint) -> bool {
        self.cache.lock().map(|c| c.iter().any(|(k, _)| k == constraint)).unwrap_or(false)
    }

    /// A fresh parser for `constraint`: the cached compiled grammar, deep-cloned
    /// so sequences never share parse state.
    fn compiled(&self, engine: &Engine, constraint: &OutputConstraint) -> Result<TokenParser, ConstraintError> {
        if let Ok(cache) = self.cache.lock() {
            if let Some((_, p)) = cache.iter().find(|(k, _)| k == constraint) {
                metrics::counter!("tessera_model_constraint_compiles_total", "cached" => "true", "model" => self.label.clone())
                    .increment(1);
                return Ok(p.deep_clone());
            }
        }
        let started = Instant::now();
        let parser = engine.factory.create_parser(grammar(constraint)?).map_err(|e| {
            ConstraintError::Invalid(format!("the {} constraint does not compile: {e}", constraint.kind()))
        })?;
        metrics::histogram!("tessera_model_constraint_compile_seconds", "model" => self.label.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("tessera_model_constraint_compiles_total", "cached" => "false", "model" => self.label.clone())
            .increment(1);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHED_GRAMMARS {
                cache.pop_front();
            }
            cache.push_back((constraint.clone(), parser.deep_clone()));
        }
        Ok(parser)
    }
}

/// The grammar of a constraint.
fn grammar(constraint: &OutputConstraint) -> Result<TopLevelGrammar, ConstraintError> {
    Ok(match constraint {
        OutputConstraint::JsonSchema(text) => {
            let schema: Value = serde_json::from_str(text)
                .map_err(|e| ConstraintError::Invalid(format!("the JSON schema is not JSON: {e}")))?;
            TopLevelGrammar::from_json_schema(compact(interoperable_integers(schema)))
        }
        OutputConstraint::JsonObject => {
            TopLevelGrammar::from_json_schema(compact(serde_json::json!({"type": "object"})))
        }
        OutputConstraint::Regex(rx) => {
            // The engine's own parse error is terse; this one names the place.
            regex_syntax::Parser::new()
                .parse(rx)
                .map_err(|e| ConstraintError::Invalid(format!("the regex does not parse: {e}")))?;
            TopLevelGrammar::from_regex(rx)
        }
        OutputConstraint::Choice(options) => {
            let alternatives: Vec<String> = options.iter().map(|o| regex_syntax::escape(o)).collect();
            TopLevelGrammar::from_regex(&alternatives.join("|"))
        }
    })
}

/// The largest integer every JSON parser reads exactly (2^53 - 1; RFC 8259
/// section 6, I-JSON): beyond it JavaScript rounds, and Python clients such as
/// pydantic read the literal as a float and then refuse it as an `int`.
const JSON_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Bounds every `"type": "integer"` that has no bound of its own to
/// +-(2^53 - 1). Unbounded, the grammar allows any number of digits, and a
/// small model at temperature 1 does write 36-digit "populations" that are
/// valid JSON Schema but that the client's parser refuses. An explicit
/// `minimum` / `maximum` (or exclusive one) is kept as given. Values under
/// `const`, `enum`, `default` and `examples` are data, not schemas, and are
/// left alone.
fn interoperable_integers(mut schema: Value) -> Value {
    bound_integers(&mut schema);
    schema
}

fn bound_integers(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let integer = match map.get("type") {
                Some(Value::String(t)) => t == "integer",
                Some(Value::Array(types)) => {
                    types.iter().any(|t| t == "integer") && !types.iter().any(|t| t == "number")
                }
                _ => false,
            };
            if integer {
                if !map.contains_key("minimum") && !map.contains_key("exclusiveMinimum") {
                    map.insert("minimum".into(), Value::from(-JSON_SAFE_INTEGER));
                }
                if !map.contains_key("maximum") && !map.contains_key("exclusiveMaximum") {
                    map.insert("maximum".into(), Value::from(JSON_SAFE_INTEGER));
                }
            }
            for (key, child) in map.iter_mut() {
                if !matches!(key.as_str(), "const" | "enum" | "default" | "examples") {
                    bound_integers(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(bound_integers),
        _ => {}
    }
}

/// The grammar options unless the schema sets its own in `x-guidance`:
/// compact JSON (no optional whitespace: a small model at a high temperature
/// would otherwise spend its budget on newlines and spaces the grammar
/// allows), and lenient, so keywords the engine does not implement (some
/// `format`s, `minProperties`, `not`) are left unenforced instead of refusing
/// a schema the `jsonschema` crate accepts; the ask chain and clients still
/// validate the output against the whole schema.
fn compact(mut schema: Value) -> Value {
    if let Value::Object(map) = &mut schema {
        map.entry("x-guidance").or_insert_with(|| serde_json::json!({"whitespace_flexible": false, "lenient": true}));
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unbounded_integers_get_the_json_safe_range_and_data_is_left_alone() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {
                "a": {"type": "integer"},
                "b": {"type": "integer", "minimum": 0},
                "c": {"type": "integer", "exclusiveMaximum": 10},
                "d": {"type": ["integer", "null"]},
                "e": {"type": ["integer", "number"]},
                "f": {"const": {"type": "integer"}},
                "g": {"type": "array", "items": {"anyOf": [{"type": "integer"}, {"type": "string"}]}}
            },
            "$defs": {"h": {"type": "integer", "maximum": 5}}
        });
        let out = interoperable_integers(schema);
        let p = &out["properties"];
        assert_eq!(p["a"]["minimum"], -JSON_SAFE_INTEGER);
        assert_eq!(p["a"]["maximum"], JSON_SAFE_INTEGER);
        assert_eq!(p["b"]["minimum"], 0);
        assert_eq!(p["b"]["maximum"], JSON_SAFE_INTEGER);
        assert!(p["c"].get("maximum").is_none());
        assert_eq!(p["c"]["minimum"], -JSON_SAFE_INTEGER);
        assert_eq!(p["d"]["maximum"], JSON_SAFE_INTEGER);
        assert!(p["e"].get("maximum").is_none(), "a number type is not narrowed to integers' range");
        assert_eq!(p["f"]["const"], serde_json::json!({"type": "integer"}));
        assert_eq!(p["g"]["items"]["anyOf"][0]["maximum"], JSON_SAFE_INTEGER);
        assert_eq!(out["$defs"]["h"]["maximum"], 5);
        assert_eq!(out["$defs"]["h"]["minimum"], -JSON_SAFE_INTEGER);
        assert!(out.get("minimum").is_none(), "an object schema gets no bounds");
    }
}
