//! Model throughput on this machine: prompt tokens/s, decode tokens/s and time
//! to first token of one stream at tensor-parallel world size 1 and 2, and
//! aggregate decode tokens/s with 1, 8 and 32 concurrent streams. Writes
//! benches/results/generate_candle.json for benches/llamacpp_compare.sh.
//!
//! Run: cargo test --bench generate -- [--prompt-tokens 256] [--decode 128]
mod common;

use std::time::Instant;

use common::{arg, models_dir};
use tessera_node::model::{EngineLimits, Event, ModelGroup, SamplingParams};
use tokio::sync::mpsc::UnboundedReceiver;

/// (time to first token, time of last token, tokens) of one stream.
fn drain(mut rx: UnboundedReceiver<Event>, start: Instant) -> (f64, f64, usize) {
    let (mut first, mut last, mut n) = (0.0, 0.0, 0);
    while let Some(e) = rx.blocking_recv() {
        match e {
            Event::Token { .. } => {
                let t = start.elapsed().as_secs_f64();
                if n == 0 {
                    first = t;
                }
                last = t;
                n += 1;
            }
            Event::Done { .. } => break,
            Event::Error(e) => panic!("{e}"),
        }
    }
    (first, last, n)
}

fn main() {
    let prompt_tokens: usize = arg("--prompt-tokens", 256);
    let decode: usize = arg("--decode", 128);
    let path = models_dir().join(tessera_node::node::DEFAULT_MODEL);
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut rows = Vec::new();
    println!("SmolLM2-135M-Instruct Q4_1 on candle (CPU, {threads} threads); greedy; prompt {prompt_tokens} tokens; up to {decode} new tokens");
    println!();
    println!("| tp | streams | prompt tok/s | TTFT ms | decode tok/s per stream | aggregate decode tok/s |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for tp in [1usize, 2] {
        let limits = EngineLimits { max_batch_size: 32, max_batched_tokens: 4096, max_queued: 64 };
        let group = ModelGroup::start_local(&path, tp, limits).expect("model (run scripts/fetch-models.sh)");
        let tok = group.tokenizer();
        let filler = "The shard index stores vectors and metadata for fast retrieval. ".repeat(64);
        let mut ids = tok.encode(&format!("<|im_start|>user\n{filler}")).unwrap();
        ids.truncate(prompt_tokens - 5);
        ids.extend(tok.encode("<|im_end|>\n<|im_start|>assistant\n").unwrap());
        let params = SamplingParams { temperature: 0.0, max_tokens: decode, ..Default::default() };
        // Warm-up.
        drain(group.submit(ids.clone(), SamplingParams { max_tokens: 4, ..params.clone() }).unwrap(), Instant::now());
        let streams: &[usize] = if tp == 1 { &[1, 8, 32] } else { &[1, 8] };
        for &n in streams {
            let start = Instant::now();
            let rxs: Vec<_> = (0..n)
                .map(|i| {
                    // Distinct prompts so no two streams are identical work.
                    let mut p = ids.clone();
                    p[1] = p[1].wrapping_add(i as u32) % 1000 + 1000;
                    group.submit(p, params.clone()).unwrap()
                })
                .collect();
            let handles: Vec<_> = rxs.into_iter().map(|rx| std::thread::spawn(move || drain(rx, start))).collect();
            let results: Vec<(f64, f64, usize)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let total_tokens: usize = results.iter().map(|r| r.2).sum();
            let wall = results.iter().map(|r| r.1).fold(0.0, f64::max);
            let ttft = results.iter().map(|r| r.0).sum::<f64>() / n as f64;
            let per_stream =
                results.iter().map(|r| (r.2.saturating_sub(1)) as f64 / (r.1 - r.0).max(1e-9)).sum::<f64>() / n as f64;
            let prompt_rate = if n == 1 { format!("{:.0}", ids.len() as f64 / results[0].0) } else { "—".into() };
            let aggregate = total_tokens as f64 / wall;
            println!("| {tp} | {n} | {prompt_rate} | {:.0} | {per_stream:.1} | {aggregate:.1} |", ttft * 1000.0);
            rows.push(serde_json::json!({"tp": tp, "streams": n, "prompt_tokens": ids.len(), "ttft_s": ttft,
                "prompt_tok_s": if n == 1 { ids.len() as f64 / results[0].0 } else { 0.0 },
                "decode_tok_s_per_stream": per_stream, "aggregate_decode_tok_s": aggregate}));
        }
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("generate_candle.json"), serde_json::Value::Array(rows).to_string()).unwrap();
}
