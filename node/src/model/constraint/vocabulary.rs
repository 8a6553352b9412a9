//! The model's vocabulary as the grammar engine sees it: each token's bytes
//! (control and user-defined tokens as markers it never matches against text).
use std::sync::Arc;

use llguidance::toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv, INVALID_TOKEN};

use crate::model::GgufTokenizer;

/// A [`TokenizerEnv`] over a GGUF tokenizer.
pub(super) struct Vocabulary {
    trie: TokTrie,
    tokenizer: Arc<GgufTokenizer>,
}

impl Vocabulary {
    /// Builds the token trie (once per model group: it walks the whole vocabulary).
    pub(super) fn new(tokenizer: Arc<GgufTokenizer>) -> Self {
        let n = tokenizer.vocab_size();
        let words: Vec<Vec<u8>> = (0..n as u32)
            .map(|id| match tokenizer.token_bytes(id).filter(|_| !tokenizer.end_of_generation.contains(&id)) {
                Some(bytes) => bytes,
                // The marker byte tells the trie this is a special token: it
                // is never part of matched text, only allowed by name.
                None => {
                    let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                    w.extend_from_slice(tokenizer.token(id).unwrap_or("").as_bytes());
                    w
                }
            })
            .collect();
        // Only ids inside the vocabulary can end an output (the trie asserts
        // it); a model that names none gets no EOS, not a stand-in id.
        let n32 = n as u32;
        let ends: Vec<TokenId> = tokenizer.end_of_generation.iter().copied().filter(|&id| id < n32).collect();
        let eos = tokenizer.eos_id.filter(|&id| id < n32).or_else(|| ends.first().copied()).unwrap_or(INVALID_TOKEN);
        let mut info = TokRxInfo::new(n32, eos);
        info.tok_bos = tokenizer.bos_id.filter(|&id| id < n32);
        let mut trie = TokTrie::from(&info, &words);
        // Every end-of-generation token (EOS, end-of-turn) may end an output
        // the grammar accepts, not only the one EOS id.
        if !ends.is_empty() {
            trie = trie.with_eos_tokens(&ends);
        }
        Self { trie, tokenizer }
    }
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // Only forced text is re-tokenized, and only when it is whole UTF-8;
        // the trie's greedy split is a valid (if not canonical) fallback.
        match std::str::from_utf8(s) {
            Ok(text) => self.tokenizer.encode_continuation(text).unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }

    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}
