//! The html loader on arbitrary bytes: an error is fine, a panic or abort is a bug.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_node::load::{load_file, Metadata};

fuzz_target!(|data: &[u8]| {
    if let Ok(docs) = load_file("page.html", "page.html", data, &Metadata::new(), None) {
        for d in docs {
            assert!(!d.id.is_empty());
        }
    }
});
