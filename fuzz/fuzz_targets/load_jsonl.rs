//! The jsonl loader on arbitrary bytes: an error is fine, a panic or abort is a bug.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_node::load::{load_file, Metadata};

fuzz_target!(|data: &[u8]| {
    if let Ok(docs) = load_file("docs.jsonl", "docs.jsonl", data, &Metadata::new(), None) {
        for d in docs {
            assert!(!d.id.is_empty());
        }
    }
});
