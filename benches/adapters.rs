//! Decode tokens/s with LoRA adapters in the batch: the same streams all on
//! the base, all on one adapter, and spread over four different adapters
//! (each row gathering its own low-rank matrices in the same step), against
//! the base alone. Rank 8 on q, k, v, o (what `tessera finetune` makes by
//! default), random weights (speed does not depend on them).
//!
//! Run: cargo test --bench adapters -- [--streams 1,8] [--decode 64] [--rank 8]
mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use common::{arg, models_dir};
use tessera_node::finetune::model::SplitMix;
use tessera_node::model::adapter::{LoraAdapter, LoraMatrix, Target};
use tessera_node::model::{EngineLimits, Event, ModelGroup, SamplingParams};

fn adapter(group: &ModelGroup, rank: usize, seed: u64) -> LoraAdapter {
    let cfg = group.config();
    let mut rng = SplitMix(seed);
    let layers = (0..cfg.n_layer)
        .map(|_| {
            [Target::Q, Target::K, Target::V, Target::O]
                .iter()
                .map(|&t| {
                    let (input, output) = t.shape(cfg);
                    let mut draw = |n: usize| (0..n).map(|_| (rng.unit() - 0.5) * 0.02).collect::<Vec<f32>>();
                    (t, LoraMatrix { a: draw(rank * input), b: draw(output * rank), input, output })
                })
                .collect::<BTreeMap<_, _>>()
        })
        .collect();
    LoraAdapter { rank, alpha: 2.0 * rank as f32, layers }
}

/// Decode tokens/s while every stream decodes (prefill excluded).
fn decode_rate(group: &ModelGroup, prompt: &[u32], adapters: &[Option<u32>], decode: usize) -> f64 {
    let params = SamplingParams { temperature: 0.0, max_tokens: decode, ..Default::default() };
    let start = Instant::now();
    let rxs: Vec<_> =
        adapters.iter().map(|a| group.submit_with_adapter(prompt.to_vec(), params.clone(), *a).unwrap()).collect();
    // One reader thread per stream, so each token is timed when it arrives.
    let times: Vec<Vec<f64>> = std::thread::scope(|s| {
        let readers: Vec<_> = rxs
            .into_iter()
            .map(|mut rx| {
                s.spawn(move || {
                    let mut t = Vec::new();
                    while let Some(e) = rx.blocking_recv() {
                        match e {
                            Event::Token { .. } => t.push(start.elapsed().as_secs_f64()),
                            Event::Done { .. } => break,
                            Event::Error(e) => panic!("{e}"),
                        }
                    }
                    t
                })
            })
            .collect();
        readers.into_iter().map(|r| r.join().expect("reader")).collect()
    });
    let from = times.iter().map(|t| t[0]).fold(0.0, f64::max);
    let to = times.iter().map(|t| *t.last().unwrap_or(&0.0)).fold(f64::INFINITY, f64::min);
    let n: usize = times.iter().map(|t| t.iter().filter(|&&x| x > from && x <= to).count()).sum();
    n as f64 / (to - from).max(1e-9)
}

fn main() {
    let decode: usize = arg("--decode", 64);
    let rank: usize = arg("--rank", 8);
    let streams: Vec<usize> = std::env::args()
        .skip_while(|a| a != "--streams")
        .nth(1)
        .unwrap_or_else(|| "1,8".into())
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let path = models_dir().join("SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let limits = EngineLimits { prefix_cache_bytes: 0, ..Default::default() };
    let group = ModelGroup::start_local(&path, 1, limits).expect("load SmolLM2 (scripts/fetch-models.sh)");
    let ids: Vec<u32> = (0..4).map(|k| group.load_adapter(adapter(&group, rank, k + 1)).unwrap()).collect();
    let prompt = group
        .tokenizer()
        .encode("<|im_start|>user\nWrite a long story about a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n")
        .unwrap();
    // Warm-up.
    decode_rate(&group, &prompt, &[None], 8);
    println!("| streams | base tokens/s | 1 adapter | 4 adapters in the batch | cost of 1 | cost of 4 |");
    println!("|---:|---:|---:|---:|---:|---:|");
    // Five rounds, the three cases interleaved in each (so a slow spell of
    // the machine hits all three alike); the median of each case.
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for &n in &streams {
        let four: Vec<Option<u32>> = (0..n).map(|i| Some(ids[i % 4])).collect();
        let (mut b, mut o, mut f) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..5 {
            b.push(decode_rate(&group, &prompt, &vec![None; n], decode));
            o.push(decode_rate(&group, &prompt, &vec![Some(ids[0]); n], decode));
            f.push(if n >= 4 { decode_rate(&group, &prompt, &four, decode) } else { f64::NAN });
        }
        let (base, one, four) = (median(b), median(o), median(f));
        let cost = |x: f64| format!("{:.1} %", (1.0 - x / base) * 100.0);
        println!(
            "| {n} | {base:.1} | {one:.1} | {four:.1} | {} | {} |",
            cost(one),
            if n >= 4 { cost(four) } else { "-".into() }
        );
    }
}
