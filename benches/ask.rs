//! The ask chain end to end through a real `tessera up` over gRPC: latency of
//! each step (condense, embed, search, prompt build, time to first token,
//! total) at 1 and 8 concurrent sessions. Each session asks a first question
//! and then follow-ups, so condensing with history is part of the numbers.
//!
//! Run: cargo test --bench ask -- [--docs 1000] [--turns 3] [--max-tokens 32]
mod common;

use std::time::{Duration, Instant};

use common::{arg, passage, percentile_ms, Rng};
use tessera_proto::v1 as pb;
use tessera_proto::v1::tessera_client::TesseraClient;
use tonic::transport::Channel;

const QUESTIONS: [&str; 4] = [
    "How do I copy a whole directory with cp?",
    "And how do I keep the file permissions?",
    "Does that also keep symbolic links?",
    "What if the target file already exists?",
];

async fn ask(client: &mut TesseraClient<Channel>, session: &str, question: &str, max_tokens: u32) -> pb::AskTimings {
    let req = pb::AskRequest {
        collection: "bench".into(),
        session: session.into(),
        question: question.into(),
        max_tokens,
        ..Default::default()
    };
    let mut stream = client.ask(req).await.unwrap().into_inner();
    while let Some(chunk) = stream.message().await.unwrap() {
        if let Some(r) = chunk.result {
            return r.timings.unwrap_or_default();
        }
    }
    panic!("no result");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let docs_n: usize = arg("--docs", 1000);
    let turns: usize = arg("--turns", 3);
    let max_tokens: u32 = arg("--max-tokens", 32);
    let (server, mut client) = common::start_up().await;
    let mut rng = Rng::new(11);
    let mut docs: Vec<pb::DocumentInput> = (0..docs_n)
        .map(|i| pb::DocumentInput { id: format!("doc-{i}"), text: passage(&mut rng, 400), ..Default::default() })
        .collect();
    docs.push(pb::DocumentInput {
        id: "cp.md".into(),
        text: "cp -r copies a directory with everything inside it. cp -p preserves mode, ownership and timestamps. \
               cp -a combines -r and -p and keeps symbolic links. cp -n never overwrites; cp -i asks first."
            .into(),
        ..Default::default()
    });
    for batch in docs.chunks(100) {
        client
            .ingest(pb::IngestRequest { collection: "bench".into(), documents: batch.to_vec(), ..Default::default() })
            .await
            .unwrap();
    }
    // Warm-up (first model step allocations).
    ask(&mut client, "warmup", QUESTIONS[0], 4).await;

    println!(
        "tessera up, {} documents (2 shards), default QA template, top_k 4, window memory, greedy, max_tokens {max_tokens}; \
         each session asks {turns} questions in a row (the 2nd and later are follow-ups that are condensed first; \
         the first is marked with the session, so no two prompts are alike)",
        docs.len()
    );
    println!();
    println!("| sessions | asks | condense p50 | embed p50 | search p50 | prompt p50 | first token p50 | first token p99 | total p50 | total p99 | asks/s |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for sessions in [1usize, 8] {
        let start = Instant::now();
        let tasks: Vec<_> = (0..sessions)
            .map(|s| {
                let mut c = client.clone();
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    for (turn, q) in QUESTIONS.iter().cycle().take(turns).enumerate() {
                        // Each session's first question is its own, so no two
                        // prompts of a run are the same: the prefix cache can
                        // reuse only what real sessions share (the template
                        // head) and each session's own earlier turns.
                        let q = if turn == 0 { format!("{q} (I am user {s} of {sessions}.)") } else { q.to_string() };
                        out.push(ask(&mut c, &format!("bench-{sessions}-{s}"), &q, max_tokens).await);
                    }
                    out
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let secs = start.elapsed().as_secs_f64();
        let p = |f: fn(&pb::AskTimings) -> f64, q: f64| {
            let mut v: Vec<Duration> = all.iter().map(|t| Duration::from_secs_f64(f(t) / 1000.0)).collect();
            v.sort();
            percentile_ms(&v, q)
        };
        // Condensing runs only on follow-ups.
        let mut condense: Vec<Duration> = all
            .iter()
            .filter(|t| t.condense_ms > 1.0)
            .map(|t| Duration::from_secs_f64(t.condense_ms / 1000.0))
            .collect();
        println!(
            "| {sessions} | {} | {:.0} ms | {:.1} ms | {:.2} ms | {:.2} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.2} |",
            all.len(),
            {
                condense.sort();
                percentile_ms(&condense, 50.0)
            },
            p(|t| t.embed_ms, 50.0),
            p(|t| t.search_ms, 50.0),
            p(|t| t.prompt_ms, 50.0),
            p(|t| t.first_token_ms, 50.0),
            p(|t| t.first_token_ms, 99.0),
            p(|t| t.total_ms, 50.0),
            p(|t| t.total_ms, 99.0),
            all.len() as f64 / secs,
        );
    }
    drop(server);
}
