//! The recursive splitter on arbitrary UTF-8 with sizes from the input: every
//! span lies on character boundaries inside the text, in order.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_node::chunking::{RecursiveSplitter, Splitter};

fuzz_target!(|data: &[u8]| {
    let [a, b, rest @ ..] = data else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let size = 1 + *a as usize;
    let overlap = *b as usize % size;
    let Ok(splitter) = RecursiveSplitter::new(size, overlap) else { return };
    let Ok(spans) = splitter.split(text) else { return };
    let mut last_start = 0;
    for s in spans {
        assert!(s.start < s.end && s.end <= text.len(), "{s:?} outside {}", text.len());
        assert!(text.is_char_boundary(s.start) && text.is_char_boundary(s.end));
        assert!(s.start >= last_start, "spans out of order");
        last_start = s.start;
    }
});
