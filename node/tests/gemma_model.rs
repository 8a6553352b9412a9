//! Gemma 3 (270M, Q4_K_M) on candle against llama.cpp
//! (tests/fixtures/gemma3_greedy.json, made by benches/gemma_greedy_reference.py):
//! prompt ids identical, greedy tokens equal up to the first near tie, the
//! first position's top-5 logits close; the same greedy tokens at tensor-parallel
//! world size 2 (the model's single key/value head replicated), in process and
//! over TCP; the engine streams it end to end.
//!
//! How close is close: the fixture also records llama.cpp against itself (the
//! prompt evaluated one token per batch instead of 512 at a time). On this
//! model that moves top-5 logits by up to 0.76 and top-1/top-2 gaps by up to
//! 0.67, and its own greedy tokens part after 3 and 11 steps on two prompts.
//! So each logit must be within 0.45 (SmolLM2's bound) of one of llama.cpp's
//! two answers, and tokens are compared up to the first gap below 0.1 (SmolLM2's 0.05 is tighter than
//! llama.cpp holds itself here) and no further than llama.cpp's two orders
//! agree with each other.
mod common;

use common::{greedy_on, tcp_group};
use serde_json::Value;
use tessera_node::model::decoder::RankModel;
use tessera_node::model::engine::load_tokenizer;
use tessera_node::model::engine::local_comms;
use tessera_node::model::{EngineLimits, Event, ModelGroup, SamplingParams};

fn fixture() -> Value {
    let path = common::project_fixture("gemma3_greedy.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// A top-1/top-2 logit gap below this is a near tie (module documentation).
const NEAR_TIE: f64 = 0.1;

/// Steps before the reference's first near tie, and before llama.cpp's two
/// evaluation orders part from each other (where llama.cpp itself does not
/// hold its tokens, neither can a second implementation).
fn comparable(case: &Value, generated: usize) -> usize {
    let gaps: Vec<f64> = serde_json::from_value(case["top1_minus_top2_logit_per_step"].clone()).unwrap();
    let self_equal = case["token_by_token"]["equal_greedy_tokens"].as_u64().unwrap() as usize;
    gaps.iter().position(|g| *g < NEAR_TIE).unwrap_or(generated).min(self_equal)
}

#[test]
fn gemma3_prompt_ids_greedy_tokens_and_top5_match_llama_cpp() {
    let Some(path) = common::gemma_path() else {
        return;
    };
    let fx = fixture();
    let tok = load_tokenizer(&path).unwrap();
    let (mut long_checked, mut compared) = (false, 0);
    for case in fx["prompts"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let ids = tok.encode(case["prompt_text"].as_str().unwrap()).unwrap();
        let want: Vec<u32> = serde_json::from_value(case["prompt_token_ids"].clone()).unwrap();
        assert_eq!(ids, want, "{name}: prompt token ids");
        let expected: Vec<u32> = serde_json::from_value(case["generated_token_ids"].clone()).unwrap();
        let check = comparable(case, expected.len());
        let (got, logits) = greedy_on(&path, local_comms(1), &ids, expected.len());
        assert_eq!(got[..check], expected[..check], "{name}: greedy tokens before the first near tie (step {check})");
        eprintln!(
            "{name}: {} prompt tokens, {check} generated tokens compared, {} equal overall",
            ids.len(),
            got.iter().zip(&expected).take_while(|(a, b)| a == b).count()
        );
        // The first position's top five: within 0.45 of one of llama.cpp's two
        // evaluation orders (they are up to 0.76 apart), the top two in order.
        let top5 = case["first_position_top5_logits"]["top5"].as_array().unwrap();
        let alt: Vec<f64> = serde_json::from_value(case["token_by_token"]["top5_logits"].clone()).unwrap();
        for (t, alt) in top5.iter().zip(&alt) {
            let id = t["token_id"].as_u64().unwrap() as usize;
            let (want, have) = (t["logit"].as_f64().unwrap() as f32, logits[0][id]);
            let off = (have - want).abs().min((have - *alt as f32).abs());
            assert!(off <= 0.45, "{name}: logit of {id}: {have} vs llama.cpp's {want} and {alt}");
        }
        let id = |i: usize| top5[i]["token_id"].as_u64().unwrap() as usize;
        assert!(logits[0][id(0)] > logits[0][id(1)], "{name}: the reference's top two are swapped");
        long_checked |= ids.len() > 512 && check > 0;
        compared += check;
    }
    assert!(long_checked, "no prompt longer than the 512-position sliding window was compared");
    assert!(compared >= 40, "only {compared} greedy tokens came before a near tie: the fixture compares too little");
}

#[test]
fn gemma3_tensor_parallel_world_size_2_agrees_in_process_and_over_tcp() {
    let Some(path) = common::gemma_path() else {
        return;
    };
    let fx = fixture();
    let case = &fx["prompts"][0];
    let ids: Vec<u32> = serde_json::from_value(case["prompt_token_ids"].clone()).unwrap();
    let steps = 12;
    let (t1, l1) = greedy_on(&path, local_comms(1), &ids, steps);
    for (how, comms) in [("in process", local_comms(2)), ("over TCP", tcp_group(2))] {
        let (t2, l2) = greedy_on(&path, comms, &ids, steps);
        assert_eq!(t2, t1, "greedy tokens differ at world size 2 {how}");
        for (step, (a, b)) in l1.iter().zip(&l2).enumerate() {
            let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
            let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(err / scale < 1e-4, "{how}, step {step}: relative error {}", err / scale);
        }
    }
    // A world size that cannot split 4 query heads over 1 k/v head is refused, not a panic.
    let err = RankModel::load(&path, 0, 8).err().expect("world size 8 must be refused").to_string();
    assert!(err.contains("does not fit"), "{err}");
}

#[test]
fn gemma3_streams_through_the_engine() {
    let Some(path) = common::gemma_path() else {
        return;
    };
    let fx = fixture();
    let case = &fx["prompts"][0];
    let expected: Vec<u32> = serde_json::from_value(case["generated_token_ids"].clone()).unwrap();
    let group = ModelGroup::start_local(&path, 1, EngineLimits::default()).unwrap();
    let ids = group.tokenizer().encode(case["prompt_text"].as_str().unwrap()).unwrap();
    let params = SamplingParams { temperature: 0.0, max_tokens: 8, ..Default::default() };
    let mut rx = group.submit(ids, params).unwrap();
    let (mut got, mut text) = (Vec::new(), String::new());
    while let Some(e) = rx.blocking_recv() {
        match e {
            Event::Token { id, text: t } => {
                got.push(id);
                text.push_str(&t);
            }
            Event::Done { .. } => break,
            Event::Error(e) => panic!("generation failed: {e}"),
        }
    }
    let n = comparable(case, expected.len()).min(got.len());
    assert!(n > 0 && got[..n] == expected[..n], "engine tokens {got:?} vs reference {expected:?}");
    let want = case["generated_text"].as_str().unwrap();
    assert!(!text.is_empty() && want.starts_with(text.trim_end()), "streamed text {text:?} vs reference {want:?}");
}
