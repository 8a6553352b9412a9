//! Prompt prefix reuse on the real SmolLM2 GGUF: a request that starts from a
//! kept prefix gives the same greedy tokens as one that prefills everything,
//! on two tensor-parallel ranks (the save/fork/drop operations travel in the
//! serialized step command, as over TCP).
mod common;

use std::sync::atomic::Ordering;

use tessera_node::model::{EngineLimits, Event, ModelGroup, SamplingParams};

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams { temperature: 0.0, max_tokens, ..Default::default() }
}

fn tokens(group: &ModelGroup, prompt: &[u32]) -> Vec<u32> {
    let mut rx = group.submit(prompt.to_vec(), greedy(16)).unwrap();
    let mut ids = Vec::new();
    while let Some(e) = rx.blocking_recv() {
        match e {
            Event::Token { id, .. } => ids.push(id),
            Event::Done { .. } => break,
            Event::Error(e) => panic!("generation failed: {e}"),
        }
    }
    ids
}

#[test]
fn reused_prefixes_give_the_tokens_of_a_full_prefill() {
    let Some(path) = common::smollm_path() else {
        return;
    };
    let limits = EngineLimits { max_batch_size: 8, max_batched_tokens: 256, max_queued: 64, ..Default::default() };
    let with_cache = ModelGroup::start_local(&path, 2, limits).unwrap();
    let without = ModelGroup::start_local(&path, 2, EngineLimits { prefix_cache_bytes: 0, ..limits }).unwrap();
    let tok = with_cache.tokenizer().clone();
    let system = "You are the support assistant of a storage company. Answer in one short sentence, \
                  name the setting involved, and never invent numbers. The cluster stores shards on \
                  three nodes; each shard has a leader and two followers; writes are acknowledged \
                  once a majority has them; reads go to the leader by default. Snapshots are \
                  streamed in batches and the log is compacted after each one. A node that loses \
                  its disk is rebuilt from a snapshot of its shard's leader, then catches up from \
                  the log. Sessions are kept on a replicated store, so a conversation survives the \
                  loss of any one node.";
    let ask = |q: &str| {
        tok.encode(&format!(
            "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
        ))
        .unwrap()
    };
    let first = ask("Where do reads go?");
    let second = ask("当一个节点宕机时会发生什么？");
    assert!(first.len() > 96, "the shared head must span several blocks");

    let reference: Vec<Vec<u32>> = [&first, &second, &first].iter().map(|p| tokens(&without, p)).collect();
    assert_eq!(without.stats().prefix_hits.load(Ordering::Relaxed), 0);

    // Miss (kept), then the same prompt (hit: all whole blocks), then another
    // question after the same system prompt (hit: the shared blocks).
    let a = tokens(&with_cache, &first);
    assert_eq!(with_cache.stats().prefix_hits.load(Ordering::Relaxed), 0);
    let b = tokens(&with_cache, &second);
    let c = tokens(&with_cache, &first);
    let hits = with_cache.stats().prefix_hits.load(Ordering::Relaxed);
    let reused = with_cache.stats().prefix_tokens_reused.load(Ordering::Relaxed);
    assert_eq!(hits, 2, "both later prompts share the system prompt's blocks");
    assert!(reused >= 2 * 64, "reused only {reused} tokens");
    assert_eq!(vec![a, b, c], reference, "reusing a prefix changed the greedy tokens");
}
