//! Retrieval quality through a real `tessera up`: recall@1, recall@10 and MRR
//! at the document level for vector, exact vector, bm25 and hybrid search, on
//! the known-item set of `benches/retrieval_data.py` (CPython's own module
//! documentation; each question answered by one module's page).
//!
//! Writes every ranking to `--out` so `benches/retrieval_reference.py` can put
//! the Python reference (sentence-transformers exact search, bm25s, RRF) beside
//! it; `bash benches/retrieval_compare.sh` runs both.
//!
//! Run: cargo test --bench retrieval -- --data benches/results/retrieval_data.json [--out FILE] [--shards 2]
mod common;

use std::time::Instant;

use serde_json::{json, Value};
use tessera_proto::v1 as pb;

/// Document ids in rank order, each once (a document's best chunk counts).
fn doc_ranking(hits: &[pb::Hit]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for h in hits {
        if !out.contains(&h.doc_id) {
            out.push(h.doc_id.clone());
        }
    }
    out
}

/// (recall@1, recall@10, MRR@10) of rankings against the answering documents.
pub fn metrics(rankings: &[Vec<String>], answers: &[String]) -> (f64, f64, f64) {
    let n = answers.len().max(1) as f64;
    let (mut r1, mut r10, mut mrr) = (0.0, 0.0, 0.0);
    for (ranking, answer) in rankings.iter().zip(answers) {
        if let Some(pos) = ranking.iter().take(10).position(|d| d == answer) {
            r10 += 1.0;
            mrr += 1.0 / (pos as f64 + 1.0);
            if pos == 0 {
                r1 += 1.0;
            }
        }
    }
    (r1 / n, r10 / n, mrr / n)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let data_path: String = common::arg("--data", "benches/results/retrieval_data.json".to_string());
    let out_path: String = common::arg("--out", "benches/results/retrieval_tessera.json".to_string());
    let shards: u32 = common::arg("--shards", 2);
    let data: Value =
        serde_json::from_str(&std::fs::read_to_string(&data_path).expect("run benches/retrieval_data.py"))
            .expect("dataset JSON");
    let docs: Vec<pb::DocumentInput> = data["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| pb::DocumentInput {
            id: d["id"].as_str().unwrap().into(),
            text: d["text"].as_str().unwrap().into(),
            ..Default::default()
        })
        .collect();
    let questions: Vec<(String, String)> = data["questions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| (q["text"].as_str().unwrap().to_string(), q["doc_id"].as_str().unwrap().to_string()))
        .collect();
    let (server, mut client) = common::start_up().await;
    client
        .create_collection(pb::CreateCollectionRequest {
            name: "docs".into(),
            shards,
            replication: 1,
            settings: None,
            ..Default::default()
        })
        .await
        .unwrap();
    let start = Instant::now();
    let mut chunks = 0;
    for batch in docs.chunks(8) {
        let req = pb::IngestRequest { collection: "docs".into(), documents: batch.to_vec(), ..Default::default() };
        chunks += client.ingest(req).await.unwrap().into_inner().chunks;
    }
    eprintln!("ingested {} documents, {chunks} chunks in {:.0}s", docs.len(), start.elapsed().as_secs_f64());

    let answers: Vec<String> = questions.iter().map(|(_, d)| d.clone()).collect();
    let runs: [(&str, pb::SearchMode, bool); 4] = [
        ("vector", pb::SearchMode::Vector, false),
        ("vector exact", pb::SearchMode::Vector, true),
        ("bm25", pb::SearchMode::Bm25, false),
        ("hybrid", pb::SearchMode::Hybrid, false),
    ];
    println!(
        "tessera up, {} documents ({chunks} chunks of the default 1000/200 splitter, {shards} shards), {} questions; \
         document-level metrics (a document's best chunk counts), top_k 30 chunks",
        docs.len(),
        questions.len()
    );
    println!();
    println!("| mode | recall@1 | recall@10 | MRR@10 | p50 ms |");
    println!("|---|---:|---:|---:|---:|");
    let mut out = json!({"chunks": chunks, "questions": questions.len()});
    for (name, mode, exact) in runs {
        let mut rankings = Vec::new();
        let mut lat = Vec::new();
        for (q, _) in &questions {
            // 30 chunks so that 10 distinct documents survive de-duplication.
            let req = pb::SearchRequest {
                collection: "docs".into(),
                query: q.clone(),
                top_k: 30,
                mode: mode as i32,
                exact,
                ..Default::default()
            };
            let t = Instant::now();
            let hits = client.search(req).await.unwrap().into_inner().hits;
            lat.push(t.elapsed());
            rankings.push(doc_ranking(&hits));
        }
        lat.sort();
        let (r1, r10, mrr) = metrics(&rankings, &answers);
        println!("| {name} | {r1:.3} | {r10:.3} | {mrr:.3} | {:.1} |", common::percentile_ms(&lat, 50.0));
        out[name] = json!(rankings);
    }
    std::fs::write(&out_path, out.to_string()).unwrap();
    drop(server);
}
