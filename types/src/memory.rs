//! Memory kinds: which part of a stored history goes into the next prompt.
//!
//! Kept pure (a state and a token counter in, messages out) so that the chain
//! can apply it wherever the tokenizer is, and so it is tested without a model.
use crate::chat::{ChatMessage, Role};
use crate::session::SessionState;

/// A memory kind name that is none of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown memory kind '{0}' (use buffer, window, tokens or summary)")]
pub struct UnknownMemoryKind(pub String);

/// See the module documentation. A turn is a user message and the answer after it.
#[derive(Debug, Clone, PartialEq)]
pub enum MemoryKind {
    /// The whole history.
    Buffer,
    /// The last `turns` turns.
    Window {
        /// Turns kept.
        turns: usize,
    },
    /// The newest turns whose messages fit in `max_tokens` tokens.
    TokenBudget {
        /// Token budget for history.
        max_tokens: usize,
    },
    /// The model-written summary of older turns, plus the last `keep_turns` turns
    /// verbatim (and any older turns not yet summarised).
    Summary {
        /// Turns kept verbatim once summarised.
        keep_turns: usize,
    },
}

impl MemoryKind {
    /// Parses the wire form: kind "buffer" | "window" | "tokens" | "summary",
    /// with `window` (turns) and `max_tokens`; zeros take the defaults.
    pub fn parse(kind: &str, window: u32, max_tokens: u32, default: &MemoryKind) -> Result<Self, UnknownMemoryKind> {
        let turns = if window == 0 { 4 } else { window as usize };
        Ok(match kind {
            "" => default.clone(),
            "buffer" => MemoryKind::Buffer,
            "window" => MemoryKind::Window { turns },
            "tokens" | "token_budget" => {
                MemoryKind::TokenBudget { max_tokens: if max_tokens == 0 { 1024 } else { max_tokens as usize } }
            }
            "summary" => MemoryKind::Summary { keep_turns: if window == 0 { 2 } else { window as usize } },
            other => return Err(UnknownMemoryKind(other.to_string())),
        })
    }
}

/// What the chain puts into the prompt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryView {
    /// Summary of older turns, when the kind uses one and it exists.
    pub summary: Option<String>,
    /// Messages, oldest first.
    pub messages: Vec<ChatMessage>,
}

fn chat(state: &SessionState, from: usize) -> Vec<ChatMessage> {
    state.messages[from..].iter().map(|m| m.chat()).collect()
}

/// Index of the first message of the last `turns` turns (a turn starts at a user message).
fn start_of_last_turns(state: &SessionState, turns: usize) -> usize {
    if turns == 0 {
        return state.messages.len();
    }
    let mut seen = 0;
    for (i, m) in state.messages.iter().enumerate().rev() {
        if m.role == Role::User {
            seen += 1;
            if seen == turns {
                return i;
            }
        }
    }
    0
}

/// Applies `kind` to a stored history; `count` gives a text's token count.
pub fn select(state: &SessionState, kind: &MemoryKind, count: &dyn Fn(&str) -> usize) -> MemoryView {
    match kind {
        MemoryKind::Buffer => MemoryView { summary: None, messages: chat(state, 0) },
        MemoryKind::Window { turns } => {
            MemoryView { summary: None, messages: chat(state, start_of_last_turns(state, *turns)) }
        }
        MemoryKind::TokenBudget { max_tokens } => {
            // Whole turns, newest first, while they fit.
            let mut start = state.messages.len();
            let mut used = 0;
            let mut turn_tokens = 0;
            for (i, m) in state.messages.iter().enumerate().rev() {
                turn_tokens += count(&m.content);
                if m.role == Role::User || i == 0 {
                    if used + turn_tokens > *max_tokens {
                        break;
                    }
                    used += turn_tokens;
                    turn_tokens = 0;
                    start = i;
                }
            }
            MemoryView { summary: None, messages: chat(state, start) }
        }
        MemoryKind::Summary { .. } => {
            let first_unsummarised =
                state.messages.iter().position(|m| m.seq > state.summarized_upto).unwrap_or(state.messages.len());
            let summary = (!state.summary.is_empty() && state.summarized_upto > 0).then(|| state.summary.clone());
            MemoryView { summary, messages: chat(state, first_unsummarised) }
        }
    }
}

/// Turns a summary memory should fold into its summary now.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryWork {
    /// The summary so far ("" when none).
    pub previous: String,
    /// Messages to fold in, oldest first.
    pub messages: Vec<ChatMessage>,
    /// The seq of the last of them (the new `summarized_upto`).
    pub upto: u64,
}

/// For a summary memory: the unsummarised messages older than the last
/// `keep_turns` turns, if there are any.
pub fn summary_due(state: &SessionState, keep_turns: usize) -> Option<SummaryWork> {
    let keep_from = start_of_last_turns(state, keep_turns);
    let fold: Vec<_> = state.messages[..keep_from].iter().filter(|m| m.seq > state.summarized_upto).collect();
    let upto = fold.last()?.seq;
    Some(SummaryWork { previous: state.summary.clone(), messages: fold.iter().map(|m| m.chat()).collect(), upto })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::StoredMessage;

    fn state(turns: usize) -> SessionState {
        let mut messages = Vec::new();
        for t in 0..turns {
            for (role, text) in [(Role::User, format!("q{t}")), (Role::Assistant, format!("a{t} with more words"))] {
                let seq = messages.len() as u64 + 1;
                messages.push(StoredMessage { seq, role, content: text, unix_ms: 0 });
            }
        }
        SessionState { session: "s".into(), messages, summary: String::new(), summarized_upto: 0 }
    }

    fn contents(v: &MemoryView) -> Vec<&str> {
        v.messages.iter().map(|m| m.content.as_str()).collect()
    }

    fn words(s: &str) -> usize {
        s.split_whitespace().count()
    }

    #[test]
    fn buffer_keeps_everything_and_window_the_last_turns() {
        let s = state(3);
        assert_eq!(select(&s, &MemoryKind::Buffer, &words).messages.len(), 6);
        let w = select(&s, &MemoryKind::Window { turns: 2 }, &words);
        assert_eq!(contents(&w), vec!["q1", "a1 with more words", "q2", "a2 with more words"]);
        assert!(select(&s, &MemoryKind::Window { turns: 0 }, &words).messages.is_empty());
        assert_eq!(select(&s, &MemoryKind::Window { turns: 9 }, &words).messages.len(), 6);
    }

    #[test]
    fn token_budget_keeps_whole_newest_turns_that_fit() {
        let s = state(3); // each turn: 1 + 4 = 5 "tokens"
        assert_eq!(select(&s, &MemoryKind::TokenBudget { max_tokens: 10 }, &words).messages.len(), 4);
        assert_eq!(select(&s, &MemoryKind::TokenBudget { max_tokens: 9 }, &words).messages.len(), 2);
        assert!(select(&s, &MemoryKind::TokenBudget { max_tokens: 4 }, &words).messages.is_empty());
        assert_eq!(select(&s, &MemoryKind::TokenBudget { max_tokens: 100 }, &words).messages.len(), 6);
    }

    #[test]
    fn summary_memory_folds_old_turns_and_keeps_unsummarised_ones_verbatim() {
        let mut s = state(4);
        let work = summary_due(&s, 2).unwrap();
        assert_eq!(work.upto, 4);
        assert_eq!(work.messages.len(), 4);
        // Before the summary exists, nothing is lost: all turns stay verbatim.
        let v = select(&s, &MemoryKind::Summary { keep_turns: 2 }, &words);
        assert_eq!((v.summary.clone(), v.messages.len()), (None, 8));
        s.summary = "they talked about q0 and q1".into();
        s.summarized_upto = work.upto;
        let v = select(&s, &MemoryKind::Summary { keep_turns: 2 }, &words);
        assert_eq!(v.summary.as_deref(), Some("they talked about q0 and q1"));
        assert_eq!(contents(&v)[0], "q2");
        assert_eq!(summary_due(&s, 2), None);
        assert_eq!(summary_due(&state(2), 2), None);
    }

    #[test]
    fn kinds_parse_with_defaults_and_refuse_unknown_names() {
        let d = MemoryKind::Buffer;
        assert_eq!(MemoryKind::parse("", 0, 0, &d).unwrap(), MemoryKind::Buffer);
        assert_eq!(MemoryKind::parse("window", 3, 0, &d).unwrap(), MemoryKind::Window { turns: 3 });
        assert_eq!(MemoryKind::parse("tokens", 0, 0, &d).unwrap(), MemoryKind::TokenBudget { max_tokens: 1024 });
        assert_eq!(MemoryKind::parse("summary", 0, 0, &d).unwrap(), MemoryKind::Summary { keep_turns: 2 });
        assert!(MemoryKind::parse("forever", 0, 0, &d).unwrap_err().to_string().contains("unknown memory kind"));
    }
}
