//! What constrained decoding costs, on SmolLM2-135M (49 152 tokens; with
//! `--gemma`, Gemma 3 270M, 262 144 tokens): the time to build the grammar
//! engine for the vocabulary (once per model group), to compile a small and a
//! large JSON schema (once per schema; later requests hit the cache), and per
//! generated token: the mask alone (replayed over a real constrained output,
//! so the decode itself does not blur it) against a free decode step of the
//! same group, and decode tokens/s with and without the schema side by side.
//!
//! Run: cargo test --bench constrained -- [--gemma] [--decode 96]
mod common;

use std::time::{Duration, Instant};

use common::{arg, models_dir};
use serde_json::json;
use tessera_node::model::constraint::{ConstraintCompiler, OutputConstraint};
use tessera_node::model::{EngineLimits, Event, ModelGroup, SamplingParams};

/// Token ids and the seconds since `start` of each.
fn drain(mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>, start: Instant) -> (Vec<u32>, Vec<f64>, String) {
    let (mut ids, mut times, mut text) = (Vec::new(), Vec::new(), String::new());
    while let Some(e) = rx.blocking_recv() {
        match e {
            Event::Token { id, text: t } => {
                ids.push(id);
                times.push(start.elapsed().as_secs_f64());
                text.push_str(&t);
            }
            Event::Done { .. } => break,
            Event::Error(e) => panic!("{e}"),
        }
    }
    (ids, times, text)
}

/// Milliseconds per decode step: first token (prefill) excluded.
fn ms_per_token(times: &[f64]) -> f64 {
    if times.len() < 2 {
        return f64::NAN;
    }
    (times[times.len() - 1] - times[0]) * 1e3 / (times.len() - 1) as f64
}

/// A schema of about `fields` properties over nested objects and arrays,
/// with enums, ranges and patterns: a "large" schema of a real API.
fn large_schema(fields: usize) -> serde_json::Value {
    let mut props = serde_json::Map::new();
    for i in 0..fields {
        let p = match i % 6 {
            0 => json!({"type": "string", "maxLength": 40}),
            1 => json!({"type": "integer", "minimum": 0, "maximum": 10000}),
            2 => json!({"enum": ["alpha", "beta", "gamma", "delta", "epsilon"]}),
            3 => json!({"type": "array", "items": {"type": "string", "pattern": "^[a-z]{2,8}$"}, "maxItems": 3}),
            4 => {
                json!({"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}}, "required": ["lat", "lon"]})
            }
            _ => json!({"type": "boolean"}),
        };
        props.insert(format!("field_{i:02}"), p);
    }
    let required: Vec<String> = (0..fields).step_by(3).map(|i| format!("field_{i:02}")).collect();
    json!({"type": "object", "properties": props, "required": required})
}

fn main() {
    tessera_node::model::engine::park_candle_threads_between_matmuls();
    let decode: usize = arg("--decode", 96);
    let gemma = std::env::args().any(|a| a == "--gemma");
    let path = if gemma {
        models_dir().join("gemma-3-270m/gemma-3-270m-q4_k_m.gguf")
    } else {
        models_dir().join(tessera_node::node::DEFAULT_MODEL)
    };
    let group =
        ModelGroup::start_local(&path, 1, EngineLimits::default()).expect("model (run scripts/fetch-models.sh)");
    let tok = group.tokenizer();
    let vocab = tok.vocab_size();
    let small = OutputConstraint::JsonSchema(
        json!({"type": "object", "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
               "required": ["city", "population"]})
        .to_string(),
    );
    let large = OutputConstraint::JsonSchema(large_schema(48).to_string());
    println!("{} ({vocab} tokens), CPU, greedy, up to {decode} tokens", path.file_name().unwrap().to_string_lossy());
    println!();

    // The engine (token trie and token classes), built by a compiler of our
    // own: the group's is built in the background as the group starts.
    let t = Instant::now();
    ConstraintCompiler::new(std::sync::Arc::new(tok.clone()), "bench").prepare();
    let engine_ms = t.elapsed().as_secs_f64() * 1e3;
    group.constraints().prepare();
    let compile = |c: &OutputConstraint| {
        let t = Instant::now();
        group.constraints().guide(c).unwrap();
        let first = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        group.constraints().guide(c).unwrap();
        (first, t.elapsed().as_secs_f64() * 1e3)
    };
    let (small_ms, small_cached_ms) = compile(&small);
    let (large_ms, large_cached_ms) = compile(&large);
    println!("| step | ms |");
    println!("|---|---:|");
    println!("| grammar engine for the vocabulary (once per model group) | {engine_ms:.1} |");
    println!("| compile small schema (2 properties) | {small_ms:.2} |");
    println!("| small schema again (cache) | {small_cached_ms:.3} |");
    println!("| compile large schema (48 properties, nested) | {large_ms:.2} |");
    println!("| large schema again (cache) | {large_cached_ms:.3} |");
    println!();

    let prompt = if gemma {
        tok.encode("A JSON record of a city: ").unwrap()
    } else {
        tok.encode("<|im_start|>user\nDescribe a city as JSON.<|im_end|>\n<|im_start|>assistant\n").unwrap()
    };
    let params = SamplingParams { temperature: 0.0, max_tokens: decode, ..Default::default() };
    // Warm-up.
    drain(group.submit(prompt.clone(), SamplingParams { max_tokens: 4, ..params.clone() }).unwrap(), Instant::now());
    println!("| run | tokens | decode ms/token | mask ms/token (replayed) | mask / free decode step |");
    println!("|---|---:|---:|---:|---:|");
    let mut free_ms = Vec::new();
    for _ in 0..3 {
        let (_, times, _) = drain(group.submit(prompt.clone(), params.clone()).unwrap(), Instant::now());
        free_ms.push(ms_per_token(&times));
    }
    free_ms.sort_by(f64::total_cmp);
    let free = free_ms[1];
    println!("| free text | {decode} | {free:.2} | - | - |");
    for (name, c) in [("small schema", &small), ("large schema", &large)] {
        let constrained = SamplingParams { constraint: Some(c.clone()), ..params.clone() };
        let mut runs = Vec::new();
        let mut out = (Vec::new(), String::new());
        for _ in 0..3 {
            let (ids, times, text) = drain(group.submit(prompt.clone(), constrained.clone()).unwrap(), Instant::now());
            runs.push(ms_per_token(&times));
            out = (ids, text);
        }
        runs.sort_by(f64::total_cmp);
        // The mask alone: a fresh guide replays the output's tokens on logits of the vocabulary's size.
        let (ids, text) = out;
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let mut guide = group.constraints().guide(c).unwrap();
            let mut logits = vec![0f32; vocab];
            let t = Instant::now();
            for &id in ids.iter().filter(|id| !tok.end_of_generation.contains(id)) {
                guide.mask(&mut logits, false).unwrap();
                guide.commit(id).unwrap();
            }
            best = best.min(t.elapsed());
        }
        let mask_ms = best.as_secs_f64() * 1e3 / ids.len().max(1) as f64;
        println!("| {name} | {} | {:.2} | {mask_ms:.3} | {:.1}% |", ids.len(), runs[1], 100.0 * mask_ms / free);
        eprintln!("{name} output: {text}");
    }
}
