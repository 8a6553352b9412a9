//! The OpenAI-compatible bodies as the HTTP server decodes them: the first byte
//! picks chat completions, completions or embeddings. Errors are fine; panics are bugs.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_coordinator::openai::wire::{ChatRequest, CompletionRequest, EmbeddingRequest};

fuzz_target!(|data: &[u8]| {
    let [which, body @ ..] = data else { return };
    match which % 3 {
        0 => {
            if let Ok(r) = serde_json::from_slice::<ChatRequest>(body) {
                let _ = r.stop.map(|s| s.into_vec());
            }
        }
        1 => drop(serde_json::from_slice::<CompletionRequest>(body)),
        _ => drop(serde_json::from_slice::<EmbeddingRequest>(body)),
    }
});
