//! Text splitters: documents in, chunks out.
//!
//! Splitters work on byte spans of the original text rather than on copies, so
//! every chunk knows its exact byte range in the document and can never start or
//! end inside a UTF-8 character (spans only ever fall on `char` boundaries).

mod chunk;
mod recursive;
mod token;

pub use chunk::{chunk_document, Chunk};
pub use recursive::RecursiveSplitter;
pub use token::TokenSplitter;

use thiserror::Error;

/// A byte range `[start, end)` of a document's text, always on char boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

/// Splitter settings that make no sense.
#[derive(Debug, Error, PartialEq)]
pub enum SplitError {
    /// A chunk must hold at least one unit.
    #[error("chunk_size must be at least 1")]
    ZeroChunkSize,
    /// Overlap must leave room for new text in each chunk.
    #[error("chunk_overlap ({overlap}) must be smaller than chunk_size ({size})")]
    OverlapTooLarge {
        /// Requested overlap.
        overlap: usize,
        /// Requested chunk size.
        size: usize,
    },
    /// The token splitter failed to tokenize.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
}

/// Anything that cuts text into spans; lets the loader pick a splitter per request.
pub trait Splitter: Send + Sync {
    /// Spans of `text`, in order.
    fn split(&self, text: &str) -> Result<Vec<Span>, SplitError>;
}

pub(crate) fn check(size: usize, overlap: usize) -> Result<(), SplitError> {
    if size == 0 {
        return Err(SplitError::ZeroChunkSize);
    }
    if overlap >= size {
        return Err(SplitError::OverlapTooLarge { overlap, size });
    }
    Ok(())
}
