//! SmolLM2 on candle against llama.cpp (../shared/fixtures/smollm2_greedy.json),
//! tensor-parallel equivalence, continuous batching, cancellation, seeds, stops.
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{greedy_on, tcp_group};
use serde_json::Value;
use tessera_node::model::engine::load_tokenizer;
use tessera_node::model::engine::local_comms;
use tessera_node::model::serving::chat_template;
use tessera_node::model::{ChatMessage, EngineLimits, Event, FinishReason, ModelGroup, SamplingParams};

fn fixture() -> Option<Value> {
    let path = common::fixture("smollm2_greedy.json")?;
    Some(serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap())
}

/// Greedy generation on `world` in-process ranks, returning tokens and the logits of every step.
fn greedy_with_logits(path: &Path, world: usize, prompt: &[u32], steps: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    greedy_on(path, local_comms(world), prompt, steps)
}

fn collect(mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>) -> (Vec<u32>, String, Option<FinishReason>) {
    let (mut ids, mut text, mut finish) = (Vec::new(), String::new(), None);
    while let Some(e) = rx.blocking_recv() {
        match e {
            Event::Token { id, text: t } => {
                ids.push(id);
                text.push_str(&t);
            }
            Event::Done { finish: f, .. } => {
                finish = Some(f);
                break;
            }
            Event::Error(e) => panic!("generation failed: {e}"),
        }
    }
    (ids, text, finish)
}

fn greedy(max_tokens: usize) -> SamplingParams {
    SamplingParams { temperature: 0.0, max_tokens, ..Default::default() }
}

#[test]
fn prompt_ids_greedy_tokens_and_top5_match_llama_cpp() {
    let (Some(path), Some(fx)) = (common::smollm_path(), fixture()) else {
        return;
    };
    let tok = load_tokenizer(&path).unwrap();
    let tpl = chat_template(&path, &tok).unwrap();
    let mut top5_checked = 0;
    for case in fx["prompts"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let messages: Vec<ChatMessage> = serde_json::from_value(case["messages"].clone()).unwrap();
        let text = tpl.render(&messages).unwrap();
        assert_eq!(text, case["prompt_text"].as_str().unwrap(), "{name}: rendered prompt");
        let ids = tok.encode(&text).unwrap();
        let want: Vec<u32> = serde_json::from_value(case["prompt_token_ids"].clone()).unwrap();
        assert_eq!(ids, want, "{name}: prompt token ids");

        let expected: Vec<u32> = serde_json::from_value(case["generated_token_ids"].clone()).unwrap();
        let gaps: Vec<f64> = serde_json::from_value(case["top1_minus_top2_logit_per_step"].clone()).unwrap();
        let (got, logits) = greedy_with_logits(&path, 1, &ids, expected.len());
        // Equal up to the first step whose reference top-1/top-2 gap is a near tie.
        let check = gaps.iter().position(|g| *g < 0.05).unwrap_or(expected.len());
        assert_eq!(got[..check], expected[..check], "{name}: greedy tokens before the first near tie (step {check})");
        eprintln!(
            "{name}: {check} tokens compared, {} equal overall",
            got.iter().zip(&expected).take_while(|(a, b)| a == b).count()
        );

        let top5 = &case["first_position_top5_logits"];
        if top5.is_object() {
            assert_eq!(top5["prompt"], name);
            // The fixture was made by llama.cpp built for AVX-512; llama.cpp 0.3.36
            // built for this AVX2 machine differs from it by up to 0.44 on these
            // five logits (measured; ARCHITECTURE.md "Numerics"), so 0.05 is out of
            // reach of llama.cpp itself on another CPU. The bound is what llama.cpp
            // shows across CPUs, and the order of the top two must hold.
            for t in top5["top5"].as_array().unwrap() {
                let id = t["token_id"].as_u64().unwrap() as usize;
                let want = t["logit"].as_f64().unwrap() as f32;
                assert!((logits[0][id] - want).abs() <= 0.45, "{name}: logit of {id}: {} vs {want}", logits[0][id]);
            }
            let id = |i: usize| top5["top5"][i]["token_id"].as_u64().unwrap() as usize;
            assert!(logits[0][id(0)] > logits[0][id(1)], "{name}: the reference's top two are swapped");
            top5_checked += 1;
        }
    }
    assert!(top5_checked > 0, "the fixture has no first-position top-5 logits to compare");
}

#[test]
fn tensor_parallel_world_sizes_1_2_3_agree() {
    let Some(path) = common::smollm_path() else {
        return;
    };
    let tok = load_tokenizer(&path).unwrap();
    let prompt = tok
        .encode("<|im_start|>user\nName three shard placement strategies.<|im_end|>\n<|im_start|>assistant\n")
        .unwrap();
    let (t1, l1) = greedy_with_logits(&path, 1, &prompt, 12);
    for world in [2, 3] {
        let (tw, lw) = greedy_with_logits(&path, world, &prompt, 12);
        assert_eq!(tw, t1, "greedy tokens differ at world size {world}");
        for (step, (a, b)) in l1.iter().zip(&lw).enumerate() {
            let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
            let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(err / scale < 1e-4, "world {world}, step {step}: relative error {}", err / scale);
        }
    }
    // The TCP backend (ranks as they would run in separate processes) gives the same result.
    let (tt, lt) = greedy_on(&path, tcp_group(2), &prompt, 12);
    assert_eq!(tt, t1, "greedy tokens differ over TCP");
    assert_eq!(lt, l1, "logits differ over TCP");
}

#[test]
fn engine_batching_cancellation_seeds_stops_and_bad_input() {
    let Some(path) = common::smollm_path() else {
        return;
    };
    let group = ModelGroup::start_local(
        &path,
        2,
        EngineLimits { max_batch_size: 8, max_batched_tokens: 256, max_queued: 64, ..Default::default() },
    )
    .unwrap();
    let tok = group.tokenizer().clone();
    let prompts: Vec<Vec<u32>> = [
        "What is a shard?",
        "Write a haiku about disks.",
        "Name a prime number.",
        "What is Rust?",
        "Say hello in French.",
        "用一句话介绍北京。",
        "Count to five.",
        "What is an index?",
    ]
    .iter()
    .map(|q| tok.encode(&format!("<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")).unwrap())
    .collect();

    // 8 at once give the same greedy text as each alone.
    let alone: Vec<_> = prompts.iter().map(|p| collect(group.submit(p.clone(), greedy(24)).unwrap())).collect();
    let receivers: Vec<_> = prompts.iter().map(|p| group.submit(p.clone(), greedy(24)).unwrap()).collect();
    let together: Vec<_> = receivers.into_iter().map(collect).collect();
    assert_eq!(together, alone);
    assert!(group.stats().max_batch_seen.load(std::sync::atomic::Ordering::Relaxed) >= 4, "requests were not batched");

    // Cancellation: dropping the receiver frees the KV cache on every rank.
    let mut rx = group.submit(prompts[0].clone(), greedy(400)).unwrap();
    assert!(matches!(rx.blocking_recv(), Some(Event::Token { .. })));
    drop(rx);
    let deadline = Instant::now() + Duration::from_secs(20);
    while group.stats().cached_sequences.load(std::sync::atomic::Ordering::Relaxed) != 0 {
        assert!(Instant::now() < deadline, "cache not freed after cancellation");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Seeds: same seed, same text; another seed, another text.
    let sampled = |seed| {
        collect(
            group
                .submit(
                    prompts[1].clone(),
                    SamplingParams {
                        temperature: 1.0,
                        top_p: 1.0,
                        top_k: 0,
                        seed,
                        max_tokens: 24,
                        ..Default::default()
                    },
                )
                .unwrap(),
        )
        .1
    };
    assert_eq!(sampled(42), sampled(42));
    assert_ne!(sampled(42), sampled(7));

    // Stop sequences end the text before them.
    let (_, full, _) = collect(group.submit(prompts[6].clone(), greedy(32)).unwrap());
    let cut = full.char_indices().nth(6).map(|(i, _)| i).unwrap_or(full.len());
    let stop = full[cut..].chars().take(3).collect::<String>();
    assert!(!stop.is_empty(), "generation too short: {full:?}");
    let (_, text, finish) =
        collect(group.submit(prompts[6].clone(), SamplingParams { stop: vec![stop.clone()], ..greedy(32) }).unwrap());
    assert_eq!(finish, Some(FinishReason::Stop));
    assert_eq!(text, full[..full.find(&stop).unwrap()]);
    let (ids, _, finish) = collect(group.submit(prompts[6].clone(), greedy(5)).unwrap());
    assert_eq!((ids.len(), finish), (5, Some(FinishReason::Length)));

    // Bad input.
    assert!(group.submit(vec![], greedy(4)).unwrap_err().to_string().contains("empty"));
    assert!(group.submit(prompts[0].clone(), greedy(1_000_000)).unwrap_err().to_string().contains("context"));
    assert!(group
        .submit(prompts[0].clone(), SamplingParams { temperature: -1.0, ..greedy(4) })
        .unwrap_err()
        .to_string()
        .contains("temperature"));
    let long = vec![prompts[0][1]; group.context_length() + 1];
    assert!(group.submit(long, greedy(1)).unwrap_err().to_string().contains("context"));
}
