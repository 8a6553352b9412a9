//! One sequence's constraint: the token mask before each sample, the grammar
//! advanced by each sampled token.
use std::sync::Arc;

use llguidance::toktrie::{SimpleVob, TokEnv, TokTrie};
use llguidance::Matcher;

use super::ConstraintError;

/// Tokens that end JSON values, which the guide prefers when the token
/// budget runs low. Which ones depend on where the output is: inside a string
/// a `}` is only text, so there the ends start with the closing quote.
pub(crate) struct Closers {
    /// Start with `"` and hold only `"`, `}`, `]`: end the string (and maybe more).
    string_ends: SimpleVob,
    /// The same with `,` allowed: end the string and go on to the next key.
    string_ends_then_next: SimpleVob,
    /// Only `}` and `]`: end objects and arrays.
    container_ends: SimpleVob,
    /// `,`: what an object with required keys still missing needs before its next key.
    separators: SimpleVob,
}

impl Closers {
    /// From the token bytes the trie already holds (special tokens there
    /// start with a marker byte, so none of them lands in a set).
    pub(super) fn new(trie: &TokTrie) -> Self {
        let closing = |b: &[u8], extra: &[u8]| b.iter().all(|c| matches!(c, b'"' | b'}' | b']') || extra.contains(c));
        let tokens_where = |keep: &dyn Fn(&[u8]) -> bool| {
            let mut set = trie.alloc_token_set();
            for id in 0..trie.vocab_size() as u32 {
                let bytes = trie.token(id);
                if !bytes.is_empty() && keep(bytes) {
                    set.allow_token(id);
                }
            }
            set
        };
        Self {
            string_ends: tokens_where(&|b| b[0] == b'"' && closing(b, b"")),
            string_ends_then_next: tokens_where(&|b| b[0] == b'"' && closing(b, b",")),
            container_ends: tokens_where(&|b| b.iter().all(|c| matches!(c, b'}' | b']'))),
            separators: tokens_where(&|b| b == b","),
        }
    }
}

/// Where a JSON output is, as far as closing it is concerned: inside a
/// string or not, and whether the last byte was an escaping backslash. The
/// output is a valid JSON prefix (the grammar sees to that), so these two bits
/// follow from its bytes alone.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct JsonCursor {
    in_string: bool,
    escaped: bool,
}

impl JsonCursor {
    fn advance(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.escaped {
                self.escaped = false;
            } else if self.in_string && b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = !self.in_string;
            }
        }
    }
}

/// See the module documentation.
pub struct Guide {
    matcher: Matcher,
    /// For JSON constraints: how to finish within the budget.
    closers: Option<Arc<Closers>>,
    cursor: JsonCursor,
    env: Option<TokEnv>,
}

impl Guide {
    pub(super) fn new(matcher: Matcher, closers: Option<Arc<Closers>>) -> Self {
        let env = matcher.tok_env().ok();
        Self { matcher, closers, cursor: JsonCursor::default(), env }
    }

    /// Sets the logits of tokens that cannot continue a valid output to −∞.
    ///
    /// `closing`: few tokens of the budget are left, so a JSON output is
    /// steered to its end: of the allowed tokens only the first non-empty
    /// group of these stays: an end-of-generation token (the output is
    /// complete); inside a string, tokens that close it (then those that also
    /// start the next key); outside, closing brackets, then a separator. Where
    /// none is allowed (a string below its `minLength`, an enum value being
    /// spelled, a value to begin) the longest allowed tokens stay, the model
    /// choosing among them. Without this a string a small model keeps
    /// writing at a high temperature runs into `max_tokens` and leaves invalid
    /// JSON.
    pub fn mask(&mut self, logits: &mut [f32], closing: bool) -> Result<(), ConstraintError> {
        let mut allowed = self.matcher.compute_mask().map_err(|e| ConstraintError::Failed(e.to_string()))?;
        if allowed.is_zero() {
            return Err(ConstraintError::Failed("no token can continue the output".into()));
        }
        if closing {
            self.narrow_to_closers(&mut allowed);
        }
        for (id, l) in logits.iter_mut().enumerate() {
            if id >= allowed.len() || !allowed.is_allowed(id as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    fn narrow_to_closers(&mut self, allowed: &mut SimpleVob) {
        let Some(closers) = &self.closers else { return };
        if self.cursor.escaped {
            return; // a quote now would be an escaped one, not an end
        }
        let eos = self.env.as_ref().map(|env| env.tok_trie().eos_token_set());
        let groups = if self.cursor.in_string {
            [&closers.string_ends, &closers.string_ends_then_next]
        } else {
            [&closers.container_ends, &closers.separators]
        };
        for set in eos.iter().chain(groups) {
            if set.len() == allowed.len() && !allowed.and_is_zero(set) {
                allowed.and(set);
                return;
            }
        }
        // Nothing closes yet (an enum value or a pattern to spell out, a
        // string below its minLength, a value to begin): the longest allowed
        // tokens get there in the fewest steps. Not ones that open more
        // (`,` `{` `[`) while others are allowed: `:"",` is longer than `:""`
        // but starts another key, and then another (seen on Gemma's vocabulary).
        if let Some(env) = &self.env {
            let trie = env.tok_trie();
            let opens = |id: usize| trie.token(id as u32).iter().any(|b| matches!(b, b',' | b'{' | b'['));
            let mut any_closed = false;
            allowed.iter_set_entries(|id| any_closed |= !opens(id));
            let eligible = |id: usize| !any_closed || !opens(id);
            let mut longest = 0;
            allowed.iter_set_entries(|id| {
                if eligible(id) {
                    longest = longest.max(trie.token_len(id as u32));
                }
            });
            let mut keep = SimpleVob::alloc(allowed.len());
            allowed.iter_set_entries(|id| {
                if eligible(id) && trie.token_len(id as u32) == longest {
                    keep.allow_token(id as u32);
                }
            });
            allowed.and(&keep);
        }
    }

    /// Advances the grammar by the sampled token (one the mask allowed).
    pub fn commit(&mut self, token: u32) -> Result<(), ConstraintError> {
        self.matcher.consume_token(token).map_err(|e| ConstraintError::Failed(e.to_string()))?;
        if let (Some(_), Some(env)) = (&self.closers, &self.env) {
            self.cursor.advance(env.tok_trie().token(token));
        }
        Ok(())
    }

    /// Whether the output is complete: the grammar allows nothing more.
    pub fn is_complete(&self) -> bool {
        self.matcher.is_stopped()
    }
}

#[cfg(test)]
mod tests {
    use super::JsonCursor;

    #[test]
    fn the_cursor_knows_when_a_json_prefix_is_inside_a_string() {
        let at = |text: &str| {
            let mut c = JsonCursor::default();
            c.advance(text.as_bytes());
            c
        };
        assert!(!at(r#"{"a":1,"b":[2,"#).in_string);
        assert!(at(r#"{"a":"x}]"#).in_string);
        assert!(at(r#"{"a":"say \"hi"#).in_string, "an escaped quote does not end the string");
        assert!(!at(r#"{"a":"c:\\""#).in_string, "an escaped backslash does not escape the quote");
        assert!(at(r#"{"a":"x\"#).escaped);
        assert!(at(r#"{"#).eq(&JsonCursor::default()));
        assert!(at(r#"{"ke"#).in_string);
    }
}
