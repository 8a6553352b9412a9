//! Embedder throughput: chunks/s and tokens/s of Tessera's all-MiniLM-L6-v2 encoder at
//! batch sizes 1, 8 and 32, for chunk-sized texts (~1000 characters, the default
//! chunk) and for short query-sized texts. Also writes the texts to
//! benches/results/embed_texts.json so that benches/st_compare.sh measures
//! sentence-transformers on exactly the same input.
//!
//! Then the latency of one 6-10 word query embedded alone (tokenize +
//! forward + pooling), p50 and p99 over `--queries` queries at idle.
//!
//! Run: cargo test --bench embedder -- [--texts N] [--queries N] [--only latency]
mod common;

use std::time::Instant;

use common::{arg, models_dir, passage, sentence, Rng};
use tessera_node::embed::BertEmbedder;

fn main() {
    let n: usize = arg("--texts", 192);
    let only: String = arg("--only", String::new());
    let model =
        BertEmbedder::load(&models_dir().join("all-MiniLM-L6-v2")).expect("model (run scripts/fetch-models.sh)");
    let mut rng = Rng::new(7);
    let chunks: Vec<String> = (0..n).map(|_| passage(&mut rng, 1000)).collect();
    let shorts: Vec<String> = (0..n).map(|_| sentence(&mut rng, 10)).collect();
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("embed_texts.json"), serde_json::json!({"chunk": chunks, "short": shorts}).to_string())
        .unwrap();

    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("Tessera encoder, all-MiniLM-L6-v2, {n} texts per row, {threads} CPU threads");
    println!();
    println!("| texts | batch | chunks/s | tokens/s | mean tokens/text |");
    println!("|---|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    let sets: &[(&str, &Vec<String>)] =
        if only == "latency" { &[] } else { &[("chunk (~1000 chars)", &chunks), ("short (~10 words)", &shorts)] };
    for &(label, texts) in sets {
        let tokens: usize = model.encode(texts).unwrap().iter().map(|e| e.get_ids().len()).sum();
        // Warm-up.
        model.embed(&texts[..8.min(texts.len())]).unwrap();
        for batch in [1usize, 8, 32] {
            let start = Instant::now();
            for group in texts.chunks(batch) {
                model.embed(group).unwrap();
            }
            let secs = start.elapsed().as_secs_f64();
            rows.push(serde_json::json!({"texts": label, "batch": batch, "chunks_per_s": texts.len() as f64 / secs, "tokens_per_s": tokens as f64 / secs}));
            println!(
                "| {label} | {batch} | {:.1} | {:.0} | {:.0} |",
                texts.len() as f64 / secs,
                tokens as f64 / secs,
                tokens as f64 / texts.len() as f64
            );
        }
    }
    if only != "latency" {
        std::fs::write(out.join("embedder_candle.json"), serde_json::Value::Array(rows).to_string()).unwrap();
    }

    let queries: usize = arg("--queries", 300);
    let texts: Vec<String> = (0..queries).map(|i| sentence(&mut rng, 6 + i % 5)).collect();
    model.embed(&texts[..4]).unwrap();
    let mut ms: Vec<f64> = texts
        .iter()
        .map(|t| {
            let start = Instant::now();
            model.embed(std::slice::from_ref(t)).unwrap();
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    println!();
    println!("one 6-10 word query alone: p50 {:.2} ms, p99 {:.2} ms ({queries} queries)", at(0.5), at(0.99));
}
