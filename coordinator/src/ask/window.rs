//! The prompt of an ask, fitted into the model's context window: the template
//! with the question always, then the newest turn, chunks in rank order, older
//! turns, each whole or not at all (the policy in `chain::budget`).
use std::collections::BTreeMap;

use serde_json::Value;
use tessera_types::{ChatMessage, MemoryView, Scored};

use super::history::newest_turn_len;
use super::AskPlan;
use crate::chain::budget::fit;
use crate::coordinator::Coordinator;
use crate::error::{CoordinatorError, Result};

/// Tokens kept free beyond the answer, for tokenization differences between
/// the separately counted parts and the whole prompt.
const SAFETY_TOKENS: usize = 16;

/// One history line as it appears in prompts.
pub fn history_line(m: &ChatMessage) -> String {
    m.history_line()
}

/// One context entry as it appears in prompts.
pub fn context_entry(rank: usize, hit: &Scored) -> String {
    format!("[{rank}] ({})\n{}", hit.doc_id, hit.text.trim())
}

/// A rendered prompt and what went into it.
pub(super) struct FittedPrompt {
    /// The prompt text.
    pub text: String,
    /// Retrieved chunks that fit (the first `chunks` hits).
    pub chunks: usize,
    /// History messages that fit.
    pub history_messages: usize,
}

impl Coordinator {
    /// Renders the template with as much context and history as the window holds.
    pub(super) async fn fit_prompt(
        &self,
        plan: &AskPlan,
        view: &MemoryView,
        standalone: &str,
        hits: &[Scored],
    ) -> Result<FittedPrompt> {
        let mut vars = self.prompt_variables(plan, view, standalone);
        let render = |vars: &BTreeMap<String, Value>| {
            self.prompts.render(&plan.template, vars).map_err(|e| CoordinatorError::invalid(e.to_string()))
        };
        let skeleton = render(&vars)?;
        let entries: Vec<String> = hits.iter().enumerate().map(|(i, h)| context_entry(i + 1, h)).collect();
        let lines: Vec<String> = view.messages.iter().map(history_line).collect();
        let (skeleton_count, context_length) = self.count_tokens(&plan.req.model, vec![skeleton], true).await?;
        let mut texts = entries.clone();
        texts.extend(lines.iter().cloned());
        let (part_counts, _) = self.count_tokens(&plan.req.model, texts, false).await?;
        let (chunk_counts, line_counts) = part_counts.split_at(entries.len());
        // "\n\n" / "\n" joiners cost about a token each.
        let chunk_counts: Vec<usize> = chunk_counts.iter().map(|c| c + 1).collect();
        let line_counts: Vec<usize> = line_counts.iter().map(|c| c + 1).collect();
        let available = context_length.saturating_sub(plan.max_tokens as usize + SAFETY_TOKENS);
        let fitted = fit(available, skeleton_count[0], &chunk_counts, &line_counts, newest_turn_len(&view.messages))
            .map_err(|e| CoordinatorError::invalid(e.to_string()))?;
        vars.insert("context".into(), Value::String(entries[..fitted.chunks].join("\n\n")));
        vars.insert("history".into(), Value::String(lines[fitted.history_from..].join("\n")));
        Ok(FittedPrompt {
            text: render(&vars)?,
            chunks: fitted.chunks,
            history_messages: lines.len() - fitted.history_from,
        })
    }

    /// The template's variables: the caller's, then the chain's own (context and
    /// history empty until fitted).
    fn prompt_variables(&self, plan: &AskPlan, view: &MemoryView, standalone: &str) -> BTreeMap<String, Value> {
        let mut vars: BTreeMap<String, Value> =
            plan.req.variables.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        vars.insert("question".into(), Value::String(plan.req.question.clone()));
        vars.insert("standalone_question".into(), Value::String(standalone.to_string()));
        vars.insert("summary".into(), Value::String(view.summary.clone().unwrap_or_default()));
        vars.insert("format_instructions".into(), Value::String(plan.parser.format_instructions()));
        vars.insert("context".into(), Value::String(String::new()));
        vars.insert("history".into(), Value::String(String::new()));
        vars
    }
}
