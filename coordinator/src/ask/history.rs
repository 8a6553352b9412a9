//! The history a question is asked in: the memory kind's view of the stored
//! session (or of the history sent along), and the follow-up rewritten as a
//! standalone question.
use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;
use tessera_types::{select, ChatMessage, MemoryKind, MemoryView, Role, SessionState};

use super::AskPlan;
use crate::coordinator::Coordinator;
use crate::error::{CoordinatorError, Result};

/// The model's rewrite of a follow-up, when it looks like one question; else
/// the previous question joined with the follow-up, so that retrieval still
/// sees what the conversation is about. Small models often answer instead of
/// rewriting, or repeat the previous question; both are caught here.
pub fn standalone_or_fallback(rewrite: &str, previous: &str, question: &str) -> String {
    let line = rewrite.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    let line = line.trim_matches(|c| c == '"' || c == '\'' || c == '“' || c == '”').trim();
    let limit = 2 * (previous.chars().count() + question.chars().count()) + 40;
    let looks_like_a_question = (line.ends_with('?') || line.ends_with('？')) && line.chars().count() <= limit;
    let asked = key_terms(question);
    let on_topic = asked.is_empty() || !key_terms(line).is_disjoint(&asked);
    if looks_like_a_question && on_topic && line != previous.trim() {
        line.to_string()
    } else if previous.is_empty() {
        question.to_string()
    } else {
        format!("{} {}", previous.trim(), question.trim())
    }
}

/// Lower-cased words of four or more letters, and pairs of neighbouring CJK
/// characters: enough to tell whether a rewrite still talks about the follow-up.
fn key_terms(text: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    for word in text.split(|c: char| !c.is_alphanumeric()) {
        let cjk: Vec<char> = word.chars().filter(|c| ('\u{3400}'..='\u{9fff}').contains(c)).collect();
        if !cjk.is_empty() {
            out.extend(cjk.windows(2).map(|w| w.iter().collect::<String>()));
        } else if word.chars().count() >= 4 {
            out.insert(word.to_lowercase());
        }
    }
    out
}

/// Messages of the newest turn at the end of `messages` (from its last user message).
pub(super) fn newest_turn_len(messages: &[ChatMessage]) -> usize {
    messages.iter().rposition(|m| m.role == Role::User).map(|i| messages.len() - i).unwrap_or(messages.len())
}

impl Coordinator {
    /// The history the memory kind lets into the prompt; a token budget counts
    /// each message with the model's tokenizer first.
    pub(super) async fn remembered(&self, plan: &AskPlan) -> Result<MemoryView> {
        let state = if plan.req.session.is_empty() {
            SessionState::unsaved(&plan.history)
        } else {
            self.session_load(&plan.req.session).await?
        };
        let counts: HashMap<String, usize> = if matches!(plan.memory, MemoryKind::TokenBudget { .. }) {
            let texts: Vec<String> = state.messages.iter().map(|m| m.content.clone()).collect();
            let (c, _) = self.count_tokens(&plan.req.model, texts.clone(), false).await?;
            texts.into_iter().zip(c).collect()
        } else {
            HashMap::new()
        };
        Ok(select(&state, &plan.memory, &|t: &str| counts.get(t).copied().unwrap_or(0)))
    }

    /// Rewrites a follow-up question with the history (greedy, one line, by `model`).
    pub(super) async fn condense(&self, model: &str, view: &MemoryView, question: &str) -> Result<String> {
        let mut history: Vec<String> = Vec::new();
        if let Some(s) = &view.summary {
            history.push(format!("(Summary of earlier turns: {s})"));
        }
        // The newest turns matter most for a follow-up; keep the condense prompt short.
        let from = view.messages.len().saturating_sub(self.config.condense_history_messages);
        history.extend(view.messages[from..].iter().map(ChatMessage::history_line));
        let vars: BTreeMap<String, Value> = [
            ("history".to_string(), Value::String(history.join("\n"))),
            ("question".to_string(), Value::String(question.to_string())),
        ]
        .into();
        let prompt = self.prompts.render("condense", &vars).map_err(|e| CoordinatorError::internal(e.to_string()))?;
        let (text, _) = self.generate_text(model, prompt, 64, vec!["\n".into()]).await?;
        let previous =
            view.messages.iter().rev().find(|m| m.role == Role::User).map(|m| m.content.as_str()).unwrap_or("");
        Ok(standalone_or_fallback(&text, previous, question))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewrite_is_used_only_when_it_looks_like_a_new_question() {
        let prev = "What does the -r flag of cp do?";
        let q = "And how do I keep permissions?";
        assert_eq!(
            standalone_or_fallback(" \"How does cp keep permissions?\"\n", prev, q),
            "How does cp keep permissions?"
        );
        assert_eq!(standalone_or_fallback("cp 如何保留权限？", prev, "那权限呢？"), "cp 如何保留权限？");
        // A question about something else (e.g. a template's example) is not a rewrite.
        assert_eq!(standalone_or_fallback("How do I delete a file?", prev, q), format!("{prev} {q}"));
        // An answer instead of a question, the previous question again, or nothing: fall back.
        let joined = format!("{prev} {q}");
        assert_eq!(standalone_or_fallback("The -r flag copies directories.", prev, q), joined);
        assert_eq!(standalone_or_fallback(prev, prev, q), joined);
        assert_eq!(standalone_or_fallback("", prev, q), joined);
        assert_eq!(standalone_or_fallback(&format!("{}?", "x".repeat(500)), prev, q), joined);
        assert_eq!(standalone_or_fallback("", "", q), q);
    }

    #[test]
    fn the_newest_turn_starts_at_the_last_user_message() {
        let m = |r: Role| ChatMessage::new(r, "");
        let (u, a) = (Role::User, Role::Assistant);
        assert_eq!(newest_turn_len(&[m(u), m(a), m(u), m(a)]), 2);
        assert_eq!(newest_turn_len(&[m(u), m(a), m(u)]), 1);
        assert_eq!(newest_turn_len(&[m(a)]), 1);
        assert_eq!(newest_turn_len(&[]), 0);
    }
}
