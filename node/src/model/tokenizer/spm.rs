//! SentencePiece tokenization from a GGUF vocabulary (`tokenizer.ggml.model =
//! llama`: Llama 2, Mistral, TinyLlama, Gemma, Phi-3), as llama.cpp does it, so
//! prompt ids are identical:
//!
//! - the text is split around control, user-defined and unknown tokens first
//!   (longest token first, as llama.cpp's special-token partition does);
//! - each raw fragment gets a leading space when `add_space_prefix` is set and
//!   the fragment starts the text or follows a special token, then every space
//!   becomes `▁` (U+2581);
//! - the fragment starts as one symbol per character; the adjacent pair whose
//!   concatenation is a vocabulary piece with the highest score is merged
//!   (ties: the leftmost), repeatedly, until no pair forms a piece;
//! - a symbol that is not a piece is written as its UTF-8 bytes, `<0xNN>`
//!   tokens (byte fallback).
use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use aho_corasick::AhoCorasick;

use super::{ModelError, TYPE_BYTE, TYPE_CONTROL, TYPE_UNKNOWN, TYPE_USER_DEFINED};

/// SentencePiece's space marker.
const SPACE: char = '\u{2581}';

/// A SentencePiece vocabulary.
#[derive(Clone)]
pub struct SpmVocab {
    pieces: Vec<String>,
    types: Vec<u32>,
    scores: Vec<f32>,
    by_piece: HashMap<String, u32, ahash::RandomState>,
    /// `<0xNN>` ids by byte (None where the vocabulary lacks one).
    bytes: Vec<Option<u32>>,
    /// Control, user-defined and unknown tokens, longest first.
    specials: Vec<u32>,
    /// Finds which of `specials` occur in a text at all (most prompts hold a
    /// handful of the thousands a vocabulary may define).
    special_finder: Option<AhoCorasick>,
    add_space_prefix: bool,
    unknown: Option<u32>,
}

/// A merge candidate: two adjacent symbols whose text is a piece.
#[derive(PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    /// Bytes of the merged text, to notice a candidate made stale by a merge.
    len: usize,
}

impl Eq for Bigram {}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bigram {
    /// Highest score first; on a tie the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

/// One symbol of the merge chain: a byte range of the fragment.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl SpmVocab {
    /// The vocabulary from GGUF arrays (`tokens`, `scores`, `token_type`).
    pub fn new(
        pieces: Vec<String>,
        scores: Vec<f32>,
        types: Vec<u32>,
        add_space_prefix: bool,
        unknown: Option<u32>,
    ) -> Result<Self, ModelError> {
        if scores.len() != pieces.len() {
            return Err(ModelError::Format(format!(
                "tokenizer.ggml.scores has {} entries for {} tokens",
                scores.len(),
                pieces.len()
            )));
        }
        let mut by_piece: HashMap<String, u32, ahash::RandomState> = HashMap::default();
        // The first id wins for a duplicated piece, as in llama.cpp's map.
        for (i, p) in pieces.iter().enumerate() {
            by_piece.entry(p.clone()).or_insert(i as u32);
        }
        let bytes = (0..=255u8).map(|b| by_piece.get(&format!("<0x{b:02X}>")).copied()).collect();
        let ty = |i: usize| types.get(i).copied().unwrap_or(1);
        let mut specials: Vec<u32> = (0..pieces.len())
            .filter(|&i| matches!(ty(i), TYPE_CONTROL | TYPE_USER_DEFINED | TYPE_UNKNOWN) && !pieces[i].is_empty())
            .map(|i| i as u32)
            .collect();
        specials.sort_by(|a, b| pieces[*b as usize].len().cmp(&pieces[*a as usize].len()).then(a.cmp(b)));
        let special_finder = if specials.is_empty() {
            None
        } else {
            let texts: Vec<&str> = specials.iter().map(|&i| pieces[i as usize].as_str()).collect();
            Some(AhoCorasick::new(texts).map_err(|e| ModelError::Format(format!("special tokens: {e}")))?)
        };
        Ok(Self { pieces, types, scores, by_piece, bytes, specials, special_finder, add_space_prefix, unknown })
    }

    /// Ids of `text` (no BOS/EOS: the caller adds those).
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<(), ModelError> {
        self.encode_from(text, true, out)
    }

    /// Ids of `text` continuing an output: no space prefix (the text does not
    /// start a sequence, so its spaces are only its own).
    pub fn encode_continuation(&self, text: &str, out: &mut Vec<u32>) -> Result<(), ModelError> {
        self.encode_from(text, false, out)
    }

    /// The bytes piece `id` adds to a text: `▁` as a space, a byte token as
    /// its byte (see [`GgufTokenizer::token_bytes`](super::GgufTokenizer::token_bytes)).
    pub fn piece_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let i = id as usize;
        let piece = self.pieces.get(i)?;
        match self.types.get(i).copied().unwrap_or(1) {
            TYPE_CONTROL | TYPE_UNKNOWN => None,
            TYPE_BYTE => parse_byte(piece).map(|b| vec![b]),
            TYPE_USER_DEFINED => Some(piece.as_bytes().to_vec()),
            _ => Some(piece.replace(SPACE, " ").into_bytes()),
        }
    }

    fn encode_from(&self, text: &str, starts_sequence: bool, out: &mut Vec<u32>) -> Result<(), ModelError> {
        let mut prev_special = starts_sequence;
        for fragment in self.partition(text) {
            match fragment {
                Fragment::Special(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Raw(raw) => {
                    let mut escaped = String::with_capacity(raw.len() + 3);
                    if self.add_space_prefix && prev_special {
                        escaped.push(SPACE);
                    }
                    escaped.extend(raw.chars().map(|c| if c == ' ' { SPACE } else { c }));
                    self.encode_fragment(&escaped, out)?;
                    prev_special = false;
                }
            }
        }
        Ok(())
    }

    /// Splits `text` around special tokens the way llama.cpp does: each token,
    /// longest first, splits every raw fragment left at each of its occurrences.
    fn partition<'t>(&self, text: &'t str) -> Vec<Fragment<'t>> {
        // No fragment at all for "" (not an empty one that would get a prefix space).
        if text.is_empty() {
            return Vec::new();
        }
        let mut fragments = vec![Fragment::Raw(text)];
        let Some(finder) = &self.special_finder else { return fragments };
        let mut present = vec![false; self.specials.len()];
        for m in finder.find_overlapping_iter(text) {
            present[m.pattern().as_usize()] = true;
        }
        for (k, &id) in self.specials.iter().enumerate() {
            if !present[k] {
                continue;
            }
            let piece = self.pieces[id as usize].as_str();
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for f in fragments {
                let Fragment::Raw(mut rest) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(at) = rest.find(piece) {
                    if at > 0 {
                        next.push(Fragment::Raw(&rest[..at]));
                    }
                    next.push(Fragment::Special(id));
                    rest = &rest[at + piece.len()..];
                }
                if !rest.is_empty() {
                    next.push(Fragment::Raw(rest));
                }
            }
            fragments = next;
        }
        fragments
    }

    fn piece_id(&self, text: &str) -> Option<u32> {
        self.by_piece.get(text).copied()
    }

    /// The merge loop over one escaped fragment.
    fn encode_fragment(&self, text: &str, out: &mut Vec<u32>) -> Result<(), ModelError> {
        if text.is_empty() {
            return Ok(());
        }
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (i, (start, c)) in text.char_indices().enumerate() {
            let last = start + c.len_utf8() == text.len();
            symbols.push(Symbol { start, len: c.len_utf8(), prev: i.checked_sub(1), next: (!last).then_some(i + 1) });
        }
        let mut queue = BinaryHeap::new();
        let candidate = |symbols: &[Symbol], left: Option<usize>, right: Option<usize>| -> Option<Bigram> {
            let (l, r) = (left?, right?);
            let (a, b) = (symbols[l], symbols[r]);
            let merged = &text[a.start..a.start + a.len + b.len];
            let id = self.piece_id(merged)?;
            Some(Bigram { score: self.scores[id as usize], left: l, right: r, len: merged.len() })
        };
        for i in 1..symbols.len() {
            queue.extend(candidate(&symbols, Some(i - 1), Some(i)));
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (symbols[b.left], symbols[b.right]);
            // Skip a candidate one of whose symbols has merged since.
            if l.len == 0 || r.len == 0 || l.len + r.len != b.len {
                continue;
            }
            symbols[b.left].len += r.len;
            symbols[b.right].len = 0;
            symbols[b.left].next = r.next;
            if let Some(n) = r.next {
                symbols[n].prev = Some(b.left);
            }
            let left = symbols[b.left];
            queue.extend(candidate(&symbols, left.prev, Some(b.left)));
            queue.extend(candidate(&symbols, Some(b.left), left.next));
        }
        let mut at = Some(0);
        while let Some(i) = at {
            let s = symbols[i];
            let piece = &text[s.start..s.start + s.len];
            match self.piece_id(piece) {
                Some(id) => out.push(id),
                None => {
                    for byte in piece.bytes() {
                        let id = self.bytes[byte as usize]
                            .or_else(|| self.piece_id(&(byte as char).to_string()))
                            .or(self.unknown)
                            .ok_or_else(|| {
                                ModelError::Tokenizer(format!("no token for byte 0x{byte:02X} and no unknown token"))
                            })?;
                        out.push(id);
                    }
                }
            }
            at = s.next;
        }
        Ok(())
    }

    /// Text of `ids`: `▁` back to spaces, byte tokens to their bytes, control
    /// tokens left out; bytes that are not UTF-8 yet (a character split over
    /// tokens) become U+FFFD, which the streaming decoder waits out.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let i = id as usize;
            let Some(piece) = self.pieces.get(i) else { continue };
            match self.types.get(i).copied().unwrap_or(1) {
                TYPE_CONTROL => {}
                TYPE_BYTE => match parse_byte(piece) {
                    Some(b) => bytes.push(b),
                    None => bytes.extend_from_slice(piece.as_bytes()),
                },
                TYPE_USER_DEFINED => bytes.extend_from_slice(piece.as_bytes()),
                TYPE_UNKNOWN => bytes.extend_from_slice("\u{2585}".as_bytes()),
                _ => {
                    let text = piece.replace(SPACE, " ");
                    bytes.extend_from_slice(text.as_bytes());
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

fn parse_byte(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

/// A piece of the text between special tokens, or one of them.
#[derive(Debug, PartialEq)]
enum Fragment<'t> {
    Raw(&'t str),
    Special(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy vocabulary: bytes, single characters, and merges with scores.
    fn vocab(add_space_prefix: bool) -> SpmVocab {
        let mut pieces = vec!["<unk>".to_string(), "<s>".into(), "<start>".into(), "<start_of>".into()];
        let mut types = vec![TYPE_UNKNOWN, TYPE_CONTROL, TYPE_CONTROL, TYPE_USER_DEFINED];
        let mut scores = vec![0.0, 0.0, 0.0, 0.0];
        for b in 0..=255u8 {
            pieces.push(format!("<0x{b:02X}>"));
            types.push(TYPE_BYTE);
            scores.push(0.0);
        }
        let merges = [("ab", -3.0), ("bc", -1.5), ("cb", -1.5), ("abc", -0.5), ("▁a", -4.0)];
        let chars = [("▁", -1.0), ("a", -2.0), ("b", -2.0), ("c", -2.0), ("中", -2.0)];
        for (p, s) in chars.into_iter().chain(merges) {
            pieces.push(p.into());
            types.push(1);
            scores.push(s);
        }
        SpmVocab::new(pieces, scores, types, add_space_prefix, Some(0)).unwrap()
    }

    fn ids(v: &SpmVocab, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        v.encode(text, &mut out).unwrap();
        out.iter().map(|&i| v.pieces[i as usize].clone()).collect()
    }

    #[test]
    fn merges_follow_scores_then_position() {
        let v = vocab(false);
        // "bc" (-1.5) beats "ab" (-3.0); then a + bc forms "abc".
        assert_eq!(ids(&v, "abc"), ["abc"]);
        assert_eq!(ids(&v, "ab"), ["ab"]);
        // "bc" and "cb" tie: the leftmost merges, and "bcb" is no piece.
        assert_eq!(ids(&v, "bcb"), ["bc", "b"]);
        // Spaces become ▁ and merge like any character; no prefix space here.
        assert_eq!(ids(&v, "a a"), ["a", "▁a"]);
    }

    #[test]
    fn unknown_characters_fall_back_to_bytes_and_decode_back() {
        let v = vocab(false);
        assert_eq!(ids(&v, "é中"), ["<0xC3>", "<0xA9>", "中"]);
        let mut out = Vec::new();
        v.encode("a é 中", &mut out).unwrap();
        assert_eq!(v.decode(&out), "a é 中");
        // Half a character decodes to U+FFFD, the streaming decoder's signal to wait.
        assert!(v.decode(&out[..3]).ends_with('\u{FFFD}'));
    }

    #[test]
    fn special_tokens_split_first_longest_first_and_control_tokens_decode_to_nothing() {
        let v = vocab(true);
        // "<start_of>" (longer) wins over "<start>"; a prefix space starts the text and follows specials.
        assert_eq!(ids(&v, "<start_of>a<start>b"), ["<start_of>", "▁a", "<start>", "▁", "b"]);
        assert_eq!(ids(&v, "a"), ["▁a"]);
        let mut out = Vec::new();
        v.encode("<start>ab", &mut out).unwrap();
        assert_eq!(v.decode(&out), " ab");
        assert!(ids(&v, "").is_empty());
    }
}
