//! Constrained decoding on the real models: outputs under a JSON schema, a
//! regex or a choice always match, at temperature 1 with the whole
//! distribution open (no top-k, no top-p), where a 135M model left alone
//! writes anything.
mod common;

use serde_json::{json, Value};
use tessera_node::model::constraint::OutputConstraint;
use tessera_node::model::engine::load_tokenizer;
use tessera_node::model::serving::chat_template;
use tessera_node::model::{ChatMessage, EngineLimits, Event, FinishReason, ModelError, ModelGroup, SamplingParams};
use tokio::sync::mpsc::UnboundedReceiver;

fn collect(mut rx: UnboundedReceiver<Event>) -> (String, usize, FinishReason) {
    let (mut text, mut tokens) = (String::new(), 0);
    while let Some(e) = rx.blocking_recv() {
        match e {
            Event::Token { text: t, .. } => {
                tokens += 1;
                text.push_str(&t);
            }
            Event::Done { finish, .. } => return (text, tokens, finish),
            Event::Error(e) => panic!("generation failed: {e}"),
        }
    }
    panic!("the stream ended without Done");
}

/// Temperature 1 over the whole vocabulary: the hardest setting for a guide.
fn hot(seed: u64, max_tokens: usize, constraint: OutputConstraint) -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
        seed,
        max_tokens,
        constraint: Some(constraint),
        ..Default::default()
    }
}

fn schemas() -> Vec<(&'static str, Value)> {
    vec![
        (
            "person (nested object, required fields, integer range)",
            json!({
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "age": {"type": "integer", "minimum": 0, "maximum": 130},
                    "address": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                        "required": ["city", "zip"]
                    }
                },
                "required": ["name", "age", "address"]
            }),
        ),
        (
            "order (array of objects, enum, number)",
            json!({
                "type": "object",
                "properties": {
                    "items": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 4,
                        "items": {
                            "type": "object",
                            "properties": {
                                "sku": {"type": "string"},
                                "qty": {"type": "integer", "minimum": 1},
                                "price": {"type": "number"}
                            },
                            "required": ["sku", "qty", "price"]
                        }
                    },
                    "status": {"enum": ["pending", "paid", "shipped"]}
                },
                "required": ["items", "status"]
            }),
        ),
        (
            "flags (booleans, null, optional fields, array of strings)",
            json!({
                "type": "object",
                "properties": {
                    "ok": {"type": "boolean"},
                    "note": {"type": ["string", "null"]},
                    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
                    "score": {"type": "number"}
                },
                "required": ["ok", "tags"]
            }),
        ),
        ("any object (json_object)", Value::Null),
    ]
}

fn prompt(path: &std::path::Path, instruction: &str) -> Vec<u32> {
    let tok = load_tokenizer(path).unwrap();
    let tpl = chat_template(path, &tok).unwrap();
    let text = tpl.render(&[ChatMessage::new(tessera_types::Role::User, instruction)]).unwrap();
    tok.encode(&text).unwrap()
}

/// Errors of `text` against `schema` (`Null`: any object); empty when valid.
fn invalid(text: &str, schema: &Value) -> Vec<String> {
    match serde_json::from_str::<Value>(text) {
        Err(e) => vec![format!("does not parse: {e}")],
        Ok(v) if schema.is_null() => {
            if v.is_object() {
                vec![]
            } else {
                vec!["not an object".into()]
            }
        }
        Ok(v) => jsonschema::validator_for(schema).unwrap().iter_errors(&v).map(|e| e.to_string()).collect(),
    }
}

fn constraint_of(schema: &Value) -> OutputConstraint {
    if schema.is_null() {
        OutputConstraint::JsonObject
    } else {
        OutputConstraint::JsonSchema(schema.to_string())
    }
}

#[test]
fn two_hundred_json_generations_at_temperature_one_all_parse_and_validate() {
    let Some(path) = common::smollm_path() else { return };
    let limits = EngineLimits { max_batch_size: 16, ..Default::default() };
    let group = ModelGroup::start_local(&path, 1, limits).unwrap();
    let mut failures = Vec::new();
    let (mut n, mut tokens, mut finishes) = (0, 0, std::collections::BTreeMap::new());
    for (s, (name, schema)) in schemas().into_iter().enumerate() {
        let ids = prompt(&path, &format!("Write one JSON value for: {name}."));
        // 50 per schema, at most 13 in flight.
        for batch in 0..4 {
            let receivers: Vec<_> = (0..if batch < 2 { 13 } else { 12 })
                .map(|i| {
                    let seed = (s * 1000 + batch * 100 + i) as u64;
                    group.submit(ids.clone(), hot(seed, 160, constraint_of(&schema))).unwrap()
                })
                .collect();
            for rx in receivers {
                let (text, t, finish) = collect(rx);
                n += 1;
                tokens += t;
                *finishes.entry(finish.as_str()).or_insert(0) += 1;
                let errors = invalid(&text, &schema);
                if !errors.is_empty() {
                    failures.push(format!("{name} ({finish:?}): {text:?}: {}", errors.join("; ")));
                }
            }
        }
    }
    eprintln!("{n} constrained generations, {tokens} tokens, finishes {finishes:?}");
    assert_eq!(n, 200);
    assert!(failures.is_empty(), "{} of {n} invalid:\n{}", failures.len(), failures.join("\n"));
}

/// A budget of 48 tokens, about twice the shortest valid output of the
/// larger schemas: left alone, the model is mid-string when it runs out; the
/// guide's closing steers it to an end. Some still cannot make it (a long
/// enum value to spell out when the budget ends), and then the output is a
/// valid prefix that ends with `length`, never invalid JSON that claims to be done
/// (19 of 20 complete here; 8 without the closing policy).
#[test]
fn a_tight_budget_is_steered_to_a_complete_output() {
    let Some(path) = common::smollm_path() else { return };
    let limits = EngineLimits { max_batch_size: 16, ..Default::default() };
    let group = ModelGroup::start_local(&path, 1, limits).unwrap();
    let (mut valid, mut n, mut failures) = (0, 0, Vec::new());
    for (s, (name, schema)) in schemas().into_iter().enumerate() {
        let ids = prompt(&path, &format!("Write one JSON value for: {name}."));
        let receivers: Vec<_> = (0..5)
            .map(|i| group.submit(ids.clone(), hot((s * 1000 + 500 + i) as u64, 48, constraint_of(&schema))).unwrap())
            .collect();
        for rx in receivers {
            let (text, _, finish) = collect(rx);
            n += 1;
            let errors = invalid(&text, &schema);
            if errors.is_empty() {
                valid += 1;
            } else {
                assert_eq!(finish, FinishReason::Length, "{name}: invalid output that did not run out: {text:?}");
                failures.push(format!("{name}: {text:?}"));
            }
        }
    }
    eprintln!("tight budget: {valid} of {n} valid; cut off:\n{}", failures.join("\n"));
    assert!(valid >= n * 9 / 10, "only {valid} of {n} completed within 48 tokens:\n{}", failures.join("\n"));
}

/// An integer the schema leaves unbounded stays within +-(2^53 - 1), the
/// range every JSON client reads exactly: asked to copy a 33-digit number,
/// the model would write it all, which pydantic then refuses as an `int`.
#[test]
fn unbounded_integers_stay_in_the_range_clients_parse() {
    let Some(path) = common::smollm_path() else { return };
    let group = ModelGroup::start_local(&path, 1, EngineLimits::default()).unwrap();
    let schema = json!({
        "type": "object",
        "properties": {"n": {"type": "integer"}, "m": {"type": ["integer", "null"]}},
        "required": ["n", "m"],
        "additionalProperties": false
    });
    let ids = prompt(
        &path,
        r#"Copy this JSON exactly: {"n":123456789012345678901234567890123,"m":-98765432109876543210987654321}"#,
    );
    let receivers: Vec<_> = (0..6)
        .map(|i| {
            let mut params = hot(40 + i, 64, constraint_of(&schema));
            if i == 0 {
                params.temperature = 0.0;
            }
            group.submit(ids.clone(), params).unwrap()
        })
        .collect();
    let safe = (1i64 << 53) - 1;
    for rx in receivers {
        let (text, _, finish) = collect(rx);
        assert!(invalid(&text, &schema).is_empty(), "{text:?} ({finish:?})");
        let v: Value = serde_json::from_str(&text).unwrap();
        for key in ["n", "m"] {
            if v[key].is_null() {
                continue;
            }
            let n = v[key].as_i64().unwrap_or_else(|| panic!("{key} is not an i64 in {text:?}"));
            assert!((-safe..=safe).contains(&n), "{key} = {n} is outside +-(2^53 - 1) in {text:?}");
        }
    }
}

#[test]
fn regex_and_choice_outputs_match_exactly() {
    let Some(path) = common::smollm_path() else { return };
    let group = ModelGroup::start_local(&path, 1, EngineLimits::default()).unwrap();
    let colours = vec!["red".to_string(), "green".into(), "light blue".into(), "紫色".into()];
    let ids = prompt(&path, "Name a colour.");
    let receivers: Vec<_> = (0..12)
        .map(|i| group.submit(ids.clone(), hot(i, 32, OutputConstraint::Choice(colours.clone()))).unwrap())
        .collect();
    for rx in receivers {
        let (text, _, finish) = collect(rx);
        assert!(colours.contains(&text), "{text:?} is not one of {colours:?}");
        assert_ne!(finish, FinishReason::Length, "{text:?}");
    }
    let pattern = r"[0-9]{3}-[A-Z]{2}( [a-z]+)?";
    let re = regex::Regex::new(&format!("^(?:{pattern})$")).unwrap();
    let ids = prompt(&path, "Write a ticket code.");
    let receivers: Vec<_> = (0..12)
        .map(|i| group.submit(ids.clone(), hot(100 + i, 24, OutputConstraint::Regex(pattern.into()))).unwrap())
        .collect();
    for rx in receivers {
        let (text, _, finish) = collect(rx);
        // The optional tail may still be open when the budget ends; what was written matches so far.
        if finish == FinishReason::Length {
            assert!(re.is_match(text.split(' ').next().unwrap()), "{text:?}");
        } else {
            assert!(re.is_match(&text), "{text:?} does not match /{pattern}/");
        }
    }
    // The same constraint again comes from the cache, not a new compile.
    assert!(group.constraints().is_cached(&OutputConstraint::Regex(pattern.into())));
}

#[test]
fn bad_constraints_are_refused_with_a_reason_before_queueing() {
    let Some(path) = common::smollm_path() else { return };
    let group = ModelGroup::start_local(&path, 1, EngineLimits::default()).unwrap();
    let ids = prompt(&path, "hi");
    let refuse = |c: OutputConstraint| match group.submit(ids.clone(), hot(1, 16, c)) {
        Err(ModelError::Input(m)) => m,
        Err(e) => panic!("wrong error kind: {e}"),
        Ok(_) => panic!("accepted"),
    };
    assert!(refuse(OutputConstraint::JsonSchema("{not json".into())).contains("not JSON"));
    assert!(refuse(OutputConstraint::Regex("([a-z".into())).contains("regex"));
    let m = refuse(OutputConstraint::JsonSchema(json!({"type": "integer", "minimum": 5, "maximum": 1}).to_string()));
    assert!(m.contains("compile"), "{m}");
    assert!(refuse(OutputConstraint::Choice(vec![])).contains("at least one"));
    // Keywords the engine does not implement are left unenforced (lenient),
    // not a refusal of a schema the jsonschema crate accepts.
    let lenient = json!({"type": "object", "minProperties": 1, "properties": {"h": {"type": "string", "format": "no-such-format"}}});
    let (text, _, _) =
        collect(group.submit(ids.clone(), hot(3, 48, OutputConstraint::JsonSchema(lenient.to_string()))).unwrap());
    assert!(serde_json::from_str::<Value>(&text).is_ok_and(|v| v.is_object()), "{text:?}");
    // The group still serves after the refusals.
    let (text, _, _) = collect(group.submit(ids, hot(2, 16, OutputConstraint::Choice(vec!["yes".into()]))).unwrap());
    assert_eq!(text, "yes");
}

/// The SentencePiece vocabulary (`▁` spaces, byte tokens) under a schema.
#[test]
fn gemma_json_under_a_schema_validates() {
    let Some(path) = common::gemma_path() else { return };
    let group = ModelGroup::start_local(&path, 1, EngineLimits::default()).unwrap();
    let tok = load_tokenizer(&path).unwrap();
    let schema = json!({"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
                        "required": ["city", "population"]});
    let validator = jsonschema::validator_for(&schema).unwrap();
    let ids = tok.encode("The largest city in Japan, as JSON: ").unwrap();
    let receivers: Vec<_> = (0..8)
        .map(|i| group.submit(ids.clone(), hot(i, 64, OutputConstraint::JsonSchema(schema.to_string()))).unwrap())
        .collect();
    for rx in receivers {
        let (text, _, _) = collect(rx);
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(validator.is_valid(&v), "{text:?}");
    }
}

/// Hostile constraints: each is refused with a message or compiles, quickly,
/// and none panics or hangs the compiler (it runs on the request's thread).
#[test]
fn hostile_constraints_are_refused_or_compiled_quickly() {
    let Some(path) = common::smollm_path() else { return };
    let tokenizer = std::sync::Arc::new(load_tokenizer(&path).unwrap());
    let compiler = tessera_node::model::constraint::ConstraintCompiler::new(tokenizer, "hostile");
    let mut deep = json!({"type": "string"});
    for _ in 0..100 {
        deep = json!({"type": "object", "properties": {"a": deep}, "required": ["a"]});
    }
    let wide: serde_json::Map<String, Value> =
        (0..2000).map(|i| (format!("k{i}"), json!({"type": "integer"}))).collect();
    let cases = vec![
        OutputConstraint::JsonSchema(deep.to_string()),
        OutputConstraint::JsonSchema(json!({"type": "object", "properties": wide}).to_string()),
        OutputConstraint::JsonSchema(json!({"$ref": "#"}).to_string()),
        OutputConstraint::JsonSchema(json!({"$ref": "#/definitions/nope"}).to_string()),
        OutputConstraint::JsonSchema(json!({"$ref": "http://example.com/schema.json"}).to_string()),
        OutputConstraint::JsonSchema(json!({"type": "string", "minLength": 1_000_000_000u64}).to_string()),
        OutputConstraint::JsonSchema(json!({"type": "string", "pattern": "(a*)*b"}).to_string()),
        OutputConstraint::JsonSchema(json!({"type": "string", "pattern": "(?=lookahead)"}).to_string()),
        OutputConstraint::JsonSchema(
            json!({"enum": (0..5000).map(|i| format!("value-{i}")).collect::<Vec<_>>()}).to_string(),
        ),
        OutputConstraint::JsonSchema(json!({"anyOf": [{"type": "integer"}, {"not": {"type": "integer"}}]}).to_string()),
        OutputConstraint::JsonSchema(json!({"type": "no-such-type"}).to_string()),
        OutputConstraint::JsonSchema("[1, 2, 3]".into()),
        OutputConstraint::JsonSchema("true".into()),
        OutputConstraint::JsonSchema("false".into()),
        OutputConstraint::JsonSchema("{".repeat(10_000)),
        OutputConstraint::Regex("a{1000}{1000}".into()),
        OutputConstraint::Regex("(x+x+)+y".into()),
        OutputConstraint::Regex("\\p{NoSuchClass}".into()),
        OutputConstraint::Regex("[".repeat(3000)),
        OutputConstraint::Choice(vec!["\u{0}".into(), "\u{FFFF}".into(), "😀".repeat(100)]),
    ];
    for c in cases {
        let label = format!("{c:?}").chars().take(80).collect::<String>();
        let started = std::time::Instant::now();
        match compiler.guide(&c) {
            Ok(_) => eprintln!("compiled: {label}"),
            Err(e) => {
                assert!(!e.to_string().is_empty());
                eprintln!("refused: {label}: {e}");
            }
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{label} took {:?}", started.elapsed());
    }
}
