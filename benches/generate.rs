//! Model throughput on this machine: prompt tokens/s, decode tokens/s and time
//! to first token of one stream at tensor-parallel world size 1 and 2, and
//! decode tokens/s with 1, 8 and 32 concurrent streams, plus the memory
//! bandwidth a one-stream decode reaches against what this machine can read.
//! Writes benches/results/generate_candle.json for benches/llamacpp_compare.sh;
//! with `--gemma`, the Gemma 3 270M GGUF on a raw prompt (one and 8 streams)
//! into generate_gemma_candle.json.
//!
//! Run: cargo test --bench generate -- [--gemma] [--prompt-tokens 256] [--decode 128] [--tp 1,2] [--streams 1,8]
mod common;

use std::sync::atomic::Ordering;
use std::time::Instant;

use common::{arg, models_dir};
use rayon::prelude::*;
use tessera_node::model::{EngineLimits, Event, ModelGroup, SamplingParams};
use tokio::sync::mpsc::UnboundedReceiver;

/// Seconds since `start` of each streamed token of one stream.
fn drain(mut rx: UnboundedReceiver<Event>, start: Instant) -> Vec<f64> {
    let mut times = Vec::new();
    while let Some(e) = rx.blocking_recv() {
        match e {
            Event::Token { .. } => times.push(start.elapsed().as_secs_f64()),
            Event::Done { .. } => break,
            Event::Error(e) => panic!("{e}"),
        }
    }
    times
}

/// Decode tokens/s of all streams together while all of them decode: tokens
/// streamed between the last stream's first token and the first stream's last
/// token, over that window (prefill of the prompts excluded).
fn steady_decode(streams: &[Vec<f64>]) -> f64 {
    let from = streams.iter().map(|t| t[0]).fold(0.0, f64::max);
    let to = streams.iter().map(|t| *t.last().unwrap()).fold(f64::INFINITY, f64::min);
    if to <= from {
        return 0.0;
    }
    let n: usize = streams.iter().map(|t| t.iter().filter(|&&x| x > from && x <= to).count()).sum();
    n as f64 / (to - from)
}

/// GB/s this machine reads from memory with every core (a sum over 1 GiB, far
/// beyond the caches): the ceiling a decode step that streams its weights meets.
fn memory_bandwidth() -> f64 {
    let data: Vec<u64> = (0..(1usize << 27)).map(|i| i as u64).collect();
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let sum: u64 = data.par_chunks(1 << 16).map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(x))).sum();
        std::hint::black_box(sum);
        best = best.max((data.len() * 8) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

fn main() {
    tessera_node::model::engine::park_candle_threads_between_matmuls();
    let prompt_tokens: usize = arg("--prompt-tokens", 256);
    let decode: usize = arg("--decode", 128);
    let list = |name: &str, default: &str| -> Vec<usize> {
        arg(name, default.to_string()).split(',').filter_map(|s| s.trim().parse().ok()).collect()
    };
    let tps = list("--tp", "1,2");
    let only_streams = list("--streams", "");
    let gemma = std::env::args().any(|a| a == "--gemma");
    let (path, title) = if gemma {
        (models_dir().join("gemma-3-270m/gemma-3-270m-q4_k_m.gguf"), "Gemma 3 270M Q4_K_M (candle's k-quant matmuls)")
    } else {
        (models_dir().join(tessera_node::node::DEFAULT_MODEL), "SmolLM2-135M-Instruct Q4_1 on Tessera's kernels")
    };
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let bandwidth = memory_bandwidth();
    let mut rows = Vec::new();
    println!("{title} (CPU, {threads} threads); greedy; prompt {prompt_tokens} tokens; up to {decode} new tokens");
    println!("machine memory read bandwidth: {bandwidth:.1} GB/s (sum over 1 GiB, {threads} threads)");
    println!();
    println!(
        "| tp | streams | prompt tok/s | TTFT ms | decode tok/s per stream | decode tok/s all streams | weights GB/s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for tp in tps {
        // No prefix reuse: every stream sends the same prompt, and the table
        // compares prefill with llama.cpp's, which prefills each time.
        let limits =
            EngineLimits { max_batch_size: 32, max_batched_tokens: 4096, max_queued: 64, prefix_cache_bytes: 0 };
        let group = ModelGroup::start_local(&path, tp, limits).expect("model (run scripts/fetch-models.sh)");
        let weight_bytes = group.stats().weight_bytes.load(Ordering::Relaxed) as f64;
        let tok = group.tokenizer();
        let filler = "The shard index stores vectors and metadata for fast retrieval. ".repeat(64);
        let ids = if gemma {
            // A base model: the raw text (BOS added), as benches/llamacpp_bench.py gives llama.cpp.
            let mut ids = tok.encode(&filler).unwrap();
            ids.truncate(prompt_tokens);
            ids
        } else {
            let mut ids = tok.encode(&format!("<|im_start|>user\n{filler}")).unwrap();
            ids.truncate(prompt_tokens - 5);
            ids.extend(tok.encode("<|im_end|>\n<|im_start|>assistant\n").unwrap());
            ids
        };
        let params = SamplingParams { temperature: 0.0, max_tokens: decode, ..Default::default() };
        // Warm-up.
        drain(group.submit(ids.clone(), SamplingParams { max_tokens: 4, ..params.clone() }).unwrap(), Instant::now());
        let streams: Vec<usize> = match (only_streams.is_empty(), tp) {
            (false, _) => only_streams.clone(),
            (true, 1) if !gemma => vec![1, 8, 32],
            (true, _) => vec![1, 8],
        };
        for n in streams {
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
            let results: Vec<Vec<f64>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let ttft = results.iter().map(|r| r[0]).sum::<f64>() / n as f64;
            let per_stream = results
                .iter()
                .map(|r| (r.len().saturating_sub(1)) as f64 / (r.last().unwrap() - r[0]).max(1e-9))
                .sum::<f64>()
                / n as f64;
            let all = steady_decode(&results);
            let prompt_rate = ids.len() as f64 / results[0][0];
            // Per step every rank streams its weights once, whatever the batch.
            let gbs = if n == 1 { weight_bytes * per_stream / 1e9 } else { 0.0 };
            println!(
                "| {tp} | {n} | {} | {:.0} | {per_stream:.1} | {all:.1} | {} |",
                if n == 1 { format!("{prompt_rate:.0}") } else { "—".into() },
                ttft * 1000.0,
                if n == 1 { format!("{gbs:.1}") } else { "—".into() }
            );
            rows.push(serde_json::json!({"tp": tp, "streams": n, "prompt_tokens": ids.len(), "ttft_s": ttft,
                "prompt_tok_s": if n == 1 { prompt_rate } else { 0.0 },
                "decode_tok_s_per_stream": per_stream, "decode_tok_s_all_streams": all,
                "weight_bytes_per_rank": weight_bytes, "weights_gb_s": gbs, "machine_gb_s": bandwidth}));
        }
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&out).unwrap();
    let file = if gemma { "generate_gemma_candle.json" } else { "generate_candle.json" };
    std::fs::write(out.join(file), serde_json::Value::Array(rows).to_string()).unwrap();
}
