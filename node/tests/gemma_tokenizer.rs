//! The SentencePiece tokenizer on the Gemma 3 GGUF against llama.cpp: prompt ids
//! identical for every prompt of tests/fixtures/gemma3_tokens.json (made by
//! benches/gemma_reference.py with llama-cpp-python): English, Chinese, mixed,
//! code, whitespace runs, emoji, byte fallback, control tokens, BOS.
mod common;

use serde_json::Value;
use tessera_node::model::engine::load_tokenizer;

#[test]
fn gemma_prompt_ids_equal_llama_cpp() {
    let Some(path) = common::gemma_path() else { return };
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(common::project_fixture("gemma3_tokens.json")).unwrap()).unwrap();
    let tok = load_tokenizer(&path).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 10, "the fixture holds too few prompts");
    let mut mismatches = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = tok.encode(text).unwrap();
        if got != want {
            mismatches.push(format!("{text:?}:\n  llama.cpp {want:?}\n  tessera   {got:?}"));
        }
        // Decoding gives the text back (BOS and control tokens are not text; a
        // literal ▁ in the input is SentencePiece's space and decodes as one).
        if !text.contains("<start_of_turn>") && !text.contains('\u{2581}') {
            assert_eq!(tok.decode(&got).unwrap(), text, "decode of {text:?}");
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} prompts differ:\n{}",
        mismatches.len(),
        cases.len(),
        mismatches.join("\n")
    );
}
