//! BM25 parameters chosen by measurement: document-level recall@10 and MRR@10 of
//! Tessera's BM25 over a grid of (k1, b), in process, on the known-item set of
//! `benches/retrieval_data.py` split with the default 1000/200 splitter (the
//! same chunks `tessera up` makes). No embedding, so it runs in seconds.
//!
//! Run: cargo test --bench bm25_sweep -- --data benches/results/retrieval_data.json
mod common;

use serde_json::Value;
use tessera_node::chunking::{RecursiveSplitter, Splitter};
use tessera_node::shard::{Bm25Index, Bm25Params};

fn main() {
    let data_path: String = common::arg("--data", "benches/results/retrieval_data.json".to_string());
    let data: Value =
        serde_json::from_str(&std::fs::read_to_string(&data_path).expect("run benches/retrieval_data.py"))
            .expect("dataset JSON");
    let splitter = RecursiveSplitter::new(1000, 200).unwrap();
    let mut index = Bm25Index::default();
    let mut owner: Vec<String> = Vec::new();
    for d in data["documents"].as_array().unwrap() {
        let text = d["text"].as_str().unwrap();
        for span in splitter.split(text).unwrap() {
            index.insert(owner.len() as u64, &text[span.start..span.end]);
            owner.push(d["id"].as_str().unwrap().to_string());
        }
    }
    let questions: Vec<(&str, &str)> = data["questions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| (q["text"].as_str().unwrap(), q["doc_id"].as_str().unwrap()))
        .collect();
    println!("{} chunks, {} questions; top 30 chunks, document level", owner.len(), questions.len());
    println!();
    println!("| k1 | b | recall@1 | recall@10 | MRR@10 |");
    println!("|---:|---:|---:|---:|---:|");
    for k1 in [0.6f32, 0.9, 1.2, 1.5, 2.0] {
        for b in [0.3f32, 0.5, 0.75, 0.9] {
            let (mut r1, mut r10, mut mrr) = (0.0, 0.0, 0.0);
            for (q, answer) in &questions {
                let mut docs: Vec<&str> = Vec::new();
                for (key, _) in index.search_with(q, 30, Bm25Params { k1, b }, |_| true) {
                    let d = owner[key as usize].as_str();
                    if !docs.contains(&d) {
                        docs.push(d);
                    }
                }
                if let Some(pos) = docs.iter().take(10).position(|d| d == answer) {
                    r10 += 1.0;
                    mrr += 1.0 / (pos as f64 + 1.0);
                    if pos == 0 {
                        r1 += 1.0;
                    }
                }
            }
            let n = questions.len() as f64;
            println!("| {k1} | {b} | {:.3} | {:.3} | {:.3} |", r1 / n, r10 / n, mrr / n);
        }
    }
}
