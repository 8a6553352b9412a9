//! End to end through a real `tessera up` process over gRPC: ingest
//! documents/s and chunks/s (load + split + embed + durable shard writes), then
//! search latency p50/p99 and QPS per mode at 1 and 4 concurrent clients.
//!
//! Run: cargo test --bench e2e -- [--docs 10000] [--chars 400] [--queries 300] [--embed-alone false]
mod common;

use std::time::Instant;

use common::{arg, passage, search_load, sentence, Rng};
use tessera_proto::v1 as pb;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let docs_n: usize = arg("--docs", 10_000);
    let chars: usize = arg("--chars", 400);
    let queries_n: usize = arg("--queries", 300);
    // The embedder-alone pass costs as long as the ingest; skip it when only
    // search is measured (e.g. to profile the server at 100k chunks).
    let embed_alone: bool = arg("--embed-alone", true);
    let (server, mut client) = common::start_up().await;

    let mut rng = Rng::new(3);
    let docs: Vec<pb::DocumentInput> = (0..docs_n)
        .map(|i| pb::DocumentInput { id: format!("doc-{i}"), text: passage(&mut rng, chars), ..Default::default() })
        .collect();
    let start = Instant::now();
    let mut chunks = 0;
    for batch in docs.chunks(100) {
        let r = client
            .ingest(pb::IngestRequest { collection: "bench".into(), documents: batch.to_vec(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        chunks += r.chunks;
    }
    let secs = start.elapsed().as_secs_f64();
    // The embedder alone on the same texts, through the same server and batching
    // (gRPC Embed, 100 texts per request): the ceiling ingest is measured against.
    let start = Instant::now();
    for batch in docs.chunks(100).take(if embed_alone { usize::MAX } else { 0 }) {
        let texts = batch.iter().map(|d| d.text.clone()).collect();
        client.embed(pb::EmbedRequest { texts }).await.unwrap();
    }
    let embed_secs = if embed_alone { start.elapsed().as_secs_f64() } else { f64::NAN };
    println!("tessera up, 2 shards, {docs_n} documents of ~{chars} characters, ingested in batches of 100 documents");
    println!();
    println!("| ingest | documents/s | chunks/s | chunks | seconds | embedder alone, same texts, chunks/s | ingest / embedder |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    println!(
        "| gRPC Ingest, end to end | {:.1} | {:.1} | {chunks} | {secs:.1} | {:.1} | {:.2} |",
        docs_n as f64 / secs,
        chunks as f64 / secs,
        docs_n as f64 / embed_secs,
        (chunks as f64 / secs) / (docs_n as f64 / embed_secs),
    );
    println!();

    let queries: Vec<String> = (0..queries_n).map(|_| sentence(&mut rng, 6)).collect();
    println!("| mode | clients | p50 ms | p99 ms | QPS |");
    println!("|---|---:|---:|---:|---:|");
    for (name, mode) in
        [("vector", pb::SearchMode::Vector), ("bm25", pb::SearchMode::Bm25), ("hybrid", pb::SearchMode::Hybrid)]
    {
        for clients in [1usize, 4] {
            let (qps, p50, p99) = search_load(&client, "bench", &queries, mode, clients).await;
            println!("| {name} | {clients} | {p50:.2} | {p99:.2} | {qps:.1} |");
        }
    }
    drop(server);
}
