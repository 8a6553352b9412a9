//! Byte-level BPE (`tokenizer.ggml.model = gpt2`) on the `tokenizers` crate:
//! the vocabulary and merges from the GGUF, the pre-tokenizer llama.cpp uses for
//! the file's `tokenizer.ggml.pre`, control and user-defined tokens as special
//! added tokens.
use std::collections::HashMap;

use candle_core::quantized::gguf_file::Content;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use super::{meta, strings, ModelError, TYPE_CONTROL, TYPE_USER_DEFINED};

/// The pre-tokenizer regex llama.cpp uses for a `tokenizer.ggml.pre` value.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, ModelError> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let byte_level_no_regex = || PreTokenizerWrapper::from(ByteLevel::new(false, true, false));
    let split = |re: &str| -> Result<PreTokenizerWrapper, ModelError> {
        let s = Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false)
            .map_err(|e| ModelError::Format(format!("pre-tokenizer regex: {e}")))?;
        Ok(PreTokenizerWrapper::from(s))
    };
    Ok(match pre {
        // SmolLM / StarCoder: every digit alone, then GPT-2's byte-level split.
        "smollm" | "starcoder" | "refact" => {
            Sequence::new(vec![Digits::new(true).into(), ByteLevel::new(false, true, true).into()]).into()
        }
        "llama3" | "llama-bpe" | "smaug-bpe" => Sequence::new(vec![split(LLAMA3)?, byte_level_no_regex()]).into(),
        "qwen2" => Sequence::new(vec![split(QWEN2)?, byte_level_no_regex()]).into(),
        "gpt2" | "default" | "" => ByteLevel::new(false, true, true).into(),
        other => return Err(ModelError::Unsupported(format!("tokenizer pre-tokenizer '{other}'"))),
    })
}

/// The BPE tokenizer of a `gpt2` GGUF vocabulary.
pub(super) fn from_gguf(ct: &Content, tokens: &[String], types: &[u32]) -> Result<Tokenizer, ModelError> {
    let merges: Vec<(String, String)> = strings(meta(ct, "tokenizer.ggml.merges")?, "tokenizer.ggml.merges")?
        .into_iter()
        .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
        .collect();
    let pre = ct.metadata.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    let vocab: HashMap<String, u32, ahash::RandomState> =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let bpe =
        BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| ModelError::Format(format!("BPE: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(&pre)?));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let specials: Vec<AddedToken> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(&TYPE_CONTROL) | Some(&TYPE_USER_DEFINED)))
        .map(|(_, t)| AddedToken::from(t.clone(), true))
        .collect();
    tokenizer.add_special_tokens(specials).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    Ok(tokenizer)
}

/// The bytes of a byte-level BPE piece: GPT-2 writes each byte as a printable
/// character (printable ASCII and Latin-1 stand for themselves, the other 68
/// bytes for U+0100 onwards, in byte order). `None` when a character is not
/// one of those 256 (the piece is not byte-level text).
pub(super) fn piece_bytes(piece: &str) -> Option<Vec<u8>> {
    piece.chars().map(byte_of_char).collect()
}

fn byte_of_char(c: char) -> Option<u8> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let code = c as u32;
    if printable(code) {
        return Some(code as u8);
    }
    // The n-th non-printable byte is written as U+0100 + n.
    let n = code.checked_sub(256)?;
    (0u32..=255).filter(|&b| !printable(b)).nth(n as usize).map(|b| b as u8)
}

#[cfg(test)]
mod byte_level_tests {
    use super::piece_bytes;

    #[test]
    fn byte_level_pieces_map_back_to_their_bytes() {
        assert_eq!(piece_bytes("hello").as_deref(), Some(&b"hello"[..]));
        // Ġ is the space, Ċ the newline, ĉ the tab.
        assert_eq!(piece_bytes("\u{120}world").as_deref(), Some(&b" world"[..]));
        assert_eq!(piece_bytes("\u{10A}").as_deref(), Some(&b"\n"[..]));
        assert_eq!(piece_bytes("\u{109}").as_deref(), Some(&b"\t"[..]));
        assert_eq!(piece_bytes("\u{100}").as_deref(), Some(&[0u8][..]));
        // "é" is two bytes, C3 A9, written as "Ã©".
        assert_eq!(piece_bytes("\u{C3}\u{A9}").as_deref(), Some("é".as_bytes()));
        assert_eq!(piece_bytes("\u{4E2D}"), None);
    }
}
