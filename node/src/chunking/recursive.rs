//! The recursive character splitter (LangChain's `RecursiveCharacterTextSplitter`).
//!
//! Text is cut at the first separator that occurs in it ("\n\n", then "\n", then
//! " ", then between characters); pieces still longer than `chunk_size` are cut
//! again with the next separator, and neighbouring pieces are merged back into
//! chunks of at most `chunk_size` characters that overlap by up to
//! `chunk_overlap` characters. Separators stay attached to the start of the piece
//! that follows them, so chunks are exact slices of the original text. Lengths
//! are counted in Unicode scalar values (characters), not bytes.
use std::collections::VecDeque;

use super::{check, Span, SplitError, Splitter};

/// Default separators, coarsest first.
pub const DEFAULT_SEPARATORS: &[&str] = &["\n\n", "\n", " ", ""];

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct RecursiveSplitter {
    chunk_size: usize,
    chunk_overlap: usize,
    separators: Vec<String>,
}

impl Default for RecursiveSplitter {
    fn default() -> Self {
        Self {
            chunk_size: 1000,
            chunk_overlap: 200,
            separators: DEFAULT_SEPARATORS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl RecursiveSplitter {
    /// A splitter with the default separators.
    pub fn new(chunk_size: usize, chunk_overlap: usize) -> Result<Self, SplitError> {
        check(chunk_size, chunk_overlap)?;
        Ok(Self { chunk_size, chunk_overlap, ..Self::default() })
    }

    fn split_span(&self, text: &str, span: Span, separators: &[String], out: &mut Vec<Span>) {
        let piece = &text[span.start..span.end];
        let (index, separator) = separators
            .iter()
            .enumerate()
            .find(|(_, s)| s.is_empty() || piece.contains(s.as_str()))
            .map(|(i, s)| (i, s.as_str()))
            .unwrap_or((separators.len(), ""));
        let finer = separators.get(index + 1..).unwrap_or(&[]);

        let mut good = Vec::new();
        for part in
            cut(piece, separator).into_iter().map(|s| Span { start: span.start + s.start, end: span.start + s.end })
        {
            if chars(text, part) < self.chunk_size {
                good.push(part);
            } else {
                if !good.is_empty() {
                    self.merge(text, &good, out);
                    good.clear();
                }
                if finer.is_empty() {
                    out.push(part);
                } else {
                    self.split_span(text, part, finer, out);
                }
            }
        }
        if !good.is_empty() {
            self.merge(text, &good, out);
        }
    }

    /// Merges adjacent small pieces into chunks, keeping an overlap tail.
    fn merge(&self, text: &str, pieces: &[Span], out: &mut Vec<Span>) {
        let mut current: VecDeque<(Span, usize)> = VecDeque::new();
        let mut total = 0usize;
        for &piece in pieces {
            let len = chars(text, piece);
            if total + len > self.chunk_size && !current.is_empty() {
                emit(text, &current, out);
                while total > self.chunk_overlap || (total + len > self.chunk_size && total > 0) {
                    match current.pop_front() {
                        Some((_, l)) => total -= l,
                        None => break,
                    }
                }
            }
            current.push_back((piece, len));
            total += len;
        }
        emit(text, &current, out);
    }
}

impl Splitter for RecursiveSplitter {
    fn split(&self, text: &str) -> Result<Vec<Span>, SplitError> {
        let mut out = Vec::new();
        self.split_span(text, Span { start: 0, end: text.len() }, &self.separators, &mut out);
        Ok(out)
    }
}

/// Cuts `piece` before every occurrence of `separator` (or between characters for
/// ""); spans are relative to `piece` and empty ones are dropped.
fn cut(piece: &str, separator: &str) -> Vec<Span> {
    if separator.is_empty() {
        return piece.char_indices().map(|(i, c)| Span { start: i, end: i + c.len_utf8() }).collect();
    }
    let mut spans = Vec::new();
    let mut start = 0;
    for (at, _) in piece.match_indices(separator) {
        if at > start {
            spans.push(Span { start, end: at });
        }
        start = at;
    }
    if piece.len() > start {
        spans.push(Span { start, end: piece.len() });
    }
    spans
}

fn chars(text: &str, span: Span) -> usize {
    text[span.start..span.end].chars().count()
}

/// Emits the union of `current`, trimmed of surrounding whitespace; nothing if blank.
fn emit(text: &str, current: &VecDeque<(Span, usize)>, out: &mut Vec<Span>) {
    let (Some(first), Some(last)) = (current.front(), current.back()) else {
        return;
    };
    let raw = &text[first.0.start..last.0.end];
    let trimmed_start = raw.len() - raw.trim_start().len();
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return;
    }
    let start = first.0.start + trimmed_start;
    out.push(Span { start, end: start + trimmed.len() });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(s: &RecursiveSplitter, text: &str) -> Vec<String> {
        s.split(text).unwrap().iter().map(|sp| text[sp.start..sp.end].to_string()).collect()
    }

    #[test]
    fn short_text_is_one_chunk() {
        let s = RecursiveSplitter::default();
        assert_eq!(pieces(&s, "  hello world \n"), vec!["hello world"]);
        assert!(pieces(&s, "   \n\n  ").is_empty());
    }

    #[test]
    fn paragraphs_are_kept_whole_when_they_fit() {
        let s = RecursiveSplitter::new(12, 0).unwrap();
        assert_eq!(pieces(&s, "aaaa bbbb\n\ncccc dddd"), vec!["aaaa bbbb", "cccc dddd"]);
    }

    #[test]
    fn matches_langchain_on_words_with_overlap() {
        // langchain-text-splitters: RecursiveCharacterTextSplitter(chunk_size=10, chunk_overlap=4)
        // .split_text("one two three four five six")
        let s = RecursiveSplitter::new(10, 4).unwrap();
        assert_eq!(pieces(&s, "one two three four five six"), vec!["one two", "two three", "four five", "six"]);
    }

    #[test]
    fn chunks_respect_size_and_never_split_utf8() {
        let text = "向量数据库用于语义检索和相似度搜索。".repeat(40) + "\n\n" + &"混合 mixed 文本 text ".repeat(30);
        let s = RecursiveSplitter::new(50, 10).unwrap();
        let spans = s.split(&text).unwrap();
        assert!(spans.len() > 10);
        for sp in &spans {
            assert!(text.is_char_boundary(sp.start) && text.is_char_boundary(sp.end));
            let chunk = &text[sp.start..sp.end];
            assert!(chunk.chars().count() <= 50, "{} chars", chunk.chars().count());
            assert!(!chunk.is_empty());
        }
        // Consecutive chunks overlap or are separated by whitespace only: no text is skipped.
        for w in spans.windows(2) {
            assert!(w[1].start <= w[0].end || text[w[0].end..w[1].start].trim().is_empty(), "{:?}", w);
        }
    }

    #[test]
    fn rejects_bad_settings() {
        assert_eq!(RecursiveSplitter::new(0, 0).unwrap_err(), SplitError::ZeroChunkSize);
        assert!(RecursiveSplitter::new(10, 10).is_err());
    }
}
