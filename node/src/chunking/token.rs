//! Token splitter: windows of `chunk_size` word pieces of the embedder's own
//! tokenizer, overlapping by `chunk_overlap`, so chunks never exceed what the
//! embedder reads (256 word pieces for all-MiniLM-L6-v2).
use tokenizers::Tokenizer;

use super::{check, Span, SplitError, Splitter};

/// See the module documentation.
pub struct TokenSplitter {
    tokenizer: Tokenizer,
    chunk_size: usize,
    chunk_overlap: usize,
}

impl TokenSplitter {
    /// `tokenizer` should be the embedder's; truncation and padding are turned off here.
    pub fn new(mut tokenizer: Tokenizer, chunk_size: usize, chunk_overlap: usize) -> Result<Self, SplitError> {
        check(chunk_size, chunk_overlap)?;
        tokenizer.with_truncation(None).map_err(|e| SplitError::Tokenizer(e.to_string()))?.with_padding(None);
        Ok(Self { tokenizer, chunk_size, chunk_overlap })
    }
}

impl Splitter for TokenSplitter {
    fn split(&self, text: &str) -> Result<Vec<Span>, SplitError> {
        let encoding = self.tokenizer.encode(text, false).map_err(|e| SplitError::Tokenizer(e.to_string()))?;
        let offsets: Vec<(usize, usize)> =
            encoding.get_offsets().iter().copied().filter(|(s, e)| e > s && *e <= text.len()).collect();
        let step = self.chunk_size - self.chunk_overlap;
        let mut spans = Vec::new();
        let mut first = 0;
        while first < offsets.len() {
            let last = (first + self.chunk_size).min(offsets.len()) - 1;
            let (mut start, mut end) = (offsets[first].0, offsets[last].1);
            // Offsets fall on char boundaries; guard anyway so a slice can never panic.
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            while !text.is_char_boundary(end) {
                end += 1;
            }
            spans.push(Span { start, end });
            if last + 1 == offsets.len() {
                break;
            }
            first += step;
        }
        Ok(spans)
    }
}
