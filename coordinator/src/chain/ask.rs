//! The ask chain: history-aware retrieval-augmented generation.
//!
//! condense (follow-ups only) -> embed -> search -> prompt within the context
//! window -> generate (streamed) -> parse (one JSON repair try) -> store the
//! turn (durable before the result is sent) -> summarise old turns (summary
//! memory, in the background). Each step is timed; the times travel with the
//! result so that latency can be broken down without a profiler.
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use serde_json::Value;
use tessera_node::memory::{
    select, summary_due, validate_session_id, MemoryKind, MemoryView, SessionState, StoredMessage,
};
use tessera_node::model::ChatMessage;
use tessera_proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::Status;
use tracing::{info_span, warn, Instrument};

use super::budget::fit;
use super::parser::OutputParser;
use crate::catalog::CollectionMeta;
use crate::merge::Scored;
use crate::service::Coordinator;

/// Tokens kept free beyond the answer, for tokenization differences between
/// the separately counted parts and the whole prompt.
const SAFETY_TOKENS: usize = 16;

/// The stream of an ask: text chunks, then one chunk with the result.
pub type AskReceiver = mpsc::Receiver<Result<pb::AskChunk, Status>>;

/// An ask request after validation.
struct AskPlan {
    req: pb::AskRequest,
    meta: CollectionMeta,
    template: String,
    parser: OutputParser,
    memory: MemoryKind,
    top_k: u32,
    max_tokens: u32,
    started: Instant,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn role_label(role: &str) -> &str {
    match role {
        "user" => "User",
        "assistant" => "Assistant",
        _ => "System",
    }
}

/// One history line as it appears in prompts.
pub fn history_line(m: &ChatMessage) -> String {
    format!("{}: {}", role_label(&m.role), m.content)
}

/// One context entry as it appears in prompts.
pub fn context_entry(rank: usize, hit: &Scored) -> String {
    format!("[{rank}] ({})\n{}", hit.doc_id, hit.text.trim())
}

fn state_from_messages(messages: &[pb::ChatMessage]) -> SessionState {
    SessionState {
        messages: messages
            .iter()
            .enumerate()
            .map(|(i, m)| StoredMessage {
                seq: i as u64 + 1,
                role: m.role.clone(),
                content: m.content.clone(),
                unix_ms: 0,
            })
            .collect(),
        ..Default::default()
    }
}

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
fn key_terms(text: &str) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
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
fn newest_turn_len(messages: &[ChatMessage]) -> usize {
    messages.iter().rposition(|m| m.role == "user").map(|i| messages.len() - i).unwrap_or(messages.len())
}

impl Coordinator {
    /// Validates an ask and starts its chain; errors found before any work are
    /// returned directly, later ones end the stream.
    pub async fn ask(&self, req: pb::AskRequest) -> Result<AskReceiver, Status> {
        let started = Instant::now();
        let cfg = &self.config;
        if req.question.trim().is_empty() {
            return Err(Status::invalid_argument("question must not be empty"));
        }
        if req.question.len() > cfg.max_question_bytes {
            return Err(Status::invalid_argument(format!(
                "question is {} bytes, over the limit of {}",
                req.question.len(),
                cfg.max_question_bytes
            )));
        }
        if !req.session.is_empty() {
            validate_session_id(&req.session).map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        if let Some(bad) = req.history.iter().find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant")) {
            return Err(Status::invalid_argument(format!("unknown history role '{}'", bad.role)));
        }
        let top_k = if req.top_k == 0 { cfg.ask_top_k } else { req.top_k };
        if top_k > cfg.max_top_k {
            return Err(Status::invalid_argument(format!("top_k must be at most {}", cfg.max_top_k)));
        }
        let max_tokens = if req.max_tokens == 0 { 256 } else { req.max_tokens };
        if max_tokens > cfg.max_answer_tokens {
            return Err(Status::invalid_argument(format!("max_tokens must be at most {}", cfg.max_answer_tokens)));
        }
        pb::SearchMode::try_from(req.mode)
            .map_err(|_| Status::invalid_argument(format!("unknown search mode {}", req.mode)))?;
        let template = if req.template.is_empty() { "qa".to_string() } else { req.template.clone() };
        if !self.prompts.contains(&template) {
            return Err(Status::invalid_argument(format!(
                "unknown template '{template}' (known: {})",
                self.prompts.names().join(", ")
            )));
        }
        let out = req.output.clone().unwrap_or_default();
        let parser = OutputParser::from_spec(&out.kind, &out.schema_json, &out.pattern)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mem = req.memory.clone().unwrap_or_default();
        let memory = MemoryKind::parse(&mem.kind, mem.window, mem.max_tokens, &cfg.default_memory)
            .map_err(Status::invalid_argument)?;
        let meta = self.collection(&req.collection)?;

        let (tx, rx) = mpsc::channel(64);
        let plan = AskPlan { req, meta, template, parser, memory, top_k, max_tokens, started };
        let me = self.clone();
        let span = info_span!("ask.chain", collection = %plan.meta.name, session = %plan.req.session);
        tokio::spawn(
            async move {
                if let Err(status) = me.run_chain(plan, &tx).await {
                    let _ = tx.send(Err(status)).await;
                }
            }
            .instrument(span),
        );
        Ok(rx)
    }

    async fn run_chain(&self, plan: AskPlan, tx: &mpsc::Sender<Result<pb::AskChunk, Status>>) -> Result<(), Status> {
        let AskPlan { req, meta, template, parser, memory, top_k, max_tokens, started } = plan;
        let mut timings = pb::AskTimings::default();

        // History, through the memory kind.
        let state = if req.session.is_empty() {
            state_from_messages(&req.history)
        } else {
            self.session_load(&req.session).await?
        };
        let counts: HashMap<String, usize> = if matches!(memory, MemoryKind::TokenBudget { .. }) {
            let texts: Vec<String> = state.messages.iter().map(|m| m.content.clone()).collect();
            let (c, _) = self.count_tokens(texts.clone(), false).await?;
            texts.into_iter().zip(c).collect()
        } else {
            HashMap::new()
        };
        let view = select(&state, &memory, &|t: &str| counts.get(t).copied().unwrap_or(0));

        // A follow-up becomes a standalone question.
        let t0 = Instant::now();
        let standalone =
            if view.messages.is_empty() { req.question.clone() } else { self.condense(&view, &req.question).await? };
        timings.condense_ms = ms(t0);

        // Retrieve.
        let mode = pb::SearchMode::try_from(req.mode).unwrap_or(pb::SearchMode::Vector);
        let t0 = Instant::now();
        let vector = if mode == pb::SearchMode::Bm25 {
            None
        } else {
            Some(self.embed_texts(vec![standalone.clone()]).await?.vectors.pop().map(|v| v.values).unwrap_or_default())
        };
        timings.embed_ms = ms(t0);
        let t0 = Instant::now();
        let search = pb::SearchRequest {
            collection: meta.name.clone(),
            query: standalone.clone(),
            top_k,
            filter: req.filter.clone(),
            mode: req.mode,
            min_score: req.min_score,
            ..Default::default()
        };
        let hits = self.search_hits(&search, &meta, vector).await?;
        timings.search_ms = ms(t0);

        // Prompt within the context window.
        let t0 = Instant::now();
        let summary = view.summary.clone().unwrap_or_default();
        let mut vars: BTreeMap<String, Value> =
            req.variables.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        vars.insert("question".into(), Value::String(req.question.clone()));
        vars.insert("standalone_question".into(), Value::String(standalone.clone()));
        vars.insert("summary".into(), Value::String(summary));
        vars.insert("format_instructions".into(), Value::String(parser.format_instructions()));
        vars.insert("context".into(), Value::String(String::new()));
        vars.insert("history".into(), Value::String(String::new()));
        let render = |vars: &BTreeMap<String, Value>| {
            self.prompts.render(&template, vars).map_err(|e| Status::invalid_argument(e.to_string()))
        };
        let skeleton = render(&vars)?;
        let entries: Vec<String> = hits.iter().enumerate().map(|(i, h)| context_entry(i + 1, h)).collect();
        let lines: Vec<String> = view.messages.iter().map(history_line).collect();
        let (skeleton_count, context_length) = self.count_tokens(vec![skeleton], true).await?;
        let mut texts = entries.clone();
        texts.extend(lines.iter().cloned());
        let (part_counts, _) = self.count_tokens(texts, false).await?;
        let (chunk_counts, line_counts) = part_counts.split_at(entries.len());
        // "\n\n" / "\n" joiners cost about a token each.
        let chunk_counts: Vec<usize> = chunk_counts.iter().map(|c| c + 1).collect();
        let line_counts: Vec<usize> = line_counts.iter().map(|c| c + 1).collect();
        let available = context_length.saturating_sub(max_tokens as usize + SAFETY_TOKENS);
        let fitted = fit(available, skeleton_count[0], &chunk_counts, &line_counts, newest_turn_len(&view.messages))
            .map_err(Status::invalid_argument)?;
        let kept_hits = &hits[..fitted.chunks];
        vars.insert("context".into(), Value::String(entries[..fitted.chunks].join("\n\n")));
        vars.insert("history".into(), Value::String(lines[fitted.history_from..].join("\n")));
        let prompt = render(&vars)?;
        timings.prompt_ms = ms(t0);

        // Generate, streaming text as it comes.
        let t0 = Instant::now();
        let gen = pb::GenerateRequest {
            prompt,
            max_tokens,
            temperature: Some(req.temperature.unwrap_or(0.0)),
            top_p: req.top_p,
            seed: req.seed,
            stop: req.stop.clone(),
            repetition_penalty: req.repetition_penalty,
            ..Default::default()
        };
        let mut stream = self.model_stream(gen).await?;
        let mut answer = String::new();
        let mut last = pb::GenerateChunk::default();
        while let Some(chunk) = stream.message().await? {
            if !chunk.text.is_empty() {
                if timings.first_token_ms == 0.0 {
                    timings.first_token_ms = ms(started);
                }
                answer.push_str(&chunk.text);
                if tx.send(Ok(pb::AskChunk { text: chunk.text.clone(), result: None })).await.is_err() {
                    return Ok(()); // the client went away; dropping the stream cancels generation
                }
            }
            if !chunk.finish_reason.is_empty() {
                last = chunk;
                break;
            }
        }
        timings.generate_ms = ms(t0);

        // Parse; a JSON answer gets one repair try.
        let parsed = match self.parse_output(&parser, answer.clone()).await {
            Ok((text, v)) => {
                answer = text;
                Ok(v)
            }
            Err(e) => Err(e),
        };

        // The turn is durable before the result goes out (also when parsing failed).
        let stored = if req.session.is_empty() {
            None
        } else {
            let turn = vec![
                pb::ChatMessage { role: "user".into(), content: req.question.clone() },
                pb::ChatMessage { role: "assistant".into(), content: answer.clone() },
            ];
            Some(self.session_append(&req.session, turn).await?)
        };
        if let (Some(state), MemoryKind::Summary { keep_turns }) = (&stored, &memory) {
            if let Some(work) = summary_due(state, *keep_turns) {
                let me = self.clone();
                let session = req.session.clone();
                tokio::spawn(async move {
                    if let Err(e) = me.summarize(&session, work).await {
                        warn!(session, error = %e, "summarising the session failed; older turns stay verbatim");
                    }
                });
            }
        }
        let parsed = parsed.map_err(|e| {
            Status::aborted(format!("output parser ({}): {}; raw output: {}", parser.kind(), e.reason, e.raw))
        })?;

        timings.total_ms = ms(started);
        tracing::info!(
            total_ms = timings.total_ms as u64,
            first_token_ms = timings.first_token_ms as u64,
            chunks = fitted.chunks,
            history = lines.len() - fitted.history_from,
            "ask answered"
        );
        for (step, v) in [
            ("condense", timings.condense_ms),
            ("embed", timings.embed_ms),
            ("search", timings.search_ms),
            ("prompt", timings.prompt_ms),
            ("first_token", timings.first_token_ms),
            ("generate", timings.generate_ms),
            ("total", timings.total_ms),
        ] {
            metrics::histogram!("tessera_ask_step_duration_seconds", "step" => step).record(v / 1000.0);
        }
        let result = pb::AskResult {
            answer,
            sources: kept_hits
                .iter()
                .map(|h| pb::Source {
                    doc_id: h.doc_id.clone(),
                    chunk_id: h.chunk_id.clone(),
                    score: h.score,
                    text: h.text.clone(),
                    metadata_json: h.metadata_json.clone(),
                })
                .collect(),
            session: req.session.clone(),
            standalone_question: standalone,
            parsed_json: parsed.map(|v| v.to_string()).unwrap_or_default(),
            finish_reason: last.finish_reason,
            usage: last.usage,
            timings: Some(timings),
            history_messages: (lines.len() - fitted.history_from) as u32,
            context_chunks: fitted.chunks as u32,
        };
        let _ = tx.send(Ok(pb::AskChunk { text: String::new(), result: Some(result) })).await;
        Ok(())
    }

    /// Rewrites a follow-up question with the history (greedy, one line).
    async fn condense(&self, view: &MemoryView, question: &str) -> Result<String, Status> {
        let mut history: Vec<String> = Vec::new();
        if let Some(s) = &view.summary {
            history.push(format!("(Summary of earlier turns: {s})"));
        }
        // The newest turns matter most for a follow-up; keep the condense prompt short.
        let from = view.messages.len().saturating_sub(self.config.condense_history_messages);
        history.extend(view.messages[from..].iter().map(history_line));
        let vars: BTreeMap<String, Value> = [
            ("history".to_string(), Value::String(history.join("\n"))),
            ("question".to_string(), Value::String(question.to_string())),
        ]
        .into();
        let prompt = self.prompts.render("condense", &vars).map_err(|e| Status::internal(e.to_string()))?;
        let (text, _) = self.generate_text(prompt, 64, vec!["\n".into()]).await?;
        let previous = view.messages.iter().rev().find(|m| m.role == "user").map(|m| m.content.as_str()).unwrap_or("");
        Ok(standalone_or_fallback(&text, previous, question))
    }

    /// Parses model output; JSON that does not parse gets one repair try by the
    /// model. Returns the (possibly repaired) text and the parsed value.
    pub(crate) async fn parse_output(
        &self,
        parser: &OutputParser,
        text: String,
    ) -> Result<(String, Option<Value>), super::parser::OutputError> {
        match parser.parse(&text) {
            Ok(v) => Ok((text, v)),
            Err(e) if parser.kind() == "json" => self.repair_json(parser, &e.raw, &e.reason).await,
            Err(e) => Err(e),
        }
    }

    /// One repair try for JSON output: the model is shown the error and its text.
    async fn repair_json(
        &self,
        parser: &OutputParser,
        raw: &str,
        reason: &str,
    ) -> Result<(String, Option<Value>), super::parser::OutputError> {
        let vars: BTreeMap<String, Value> = [
            ("schema".to_string(), Value::String(parser.schema().map(|s| s.to_string()).unwrap_or_default())),
            ("error".to_string(), Value::String(reason.to_string())),
            ("text".to_string(), Value::String(raw.to_string())),
        ]
        .into();
        let fail = |why: String| super::parser::OutputError { reason: why, raw: raw.to_string() };
        let prompt = self.prompts.render("fix_json", &vars).map_err(|e| fail(e.to_string()))?;
        let (fixed, _) = self
            .generate_text(prompt, 256, vec![])
            .await
            .map_err(|s| fail(format!("{reason}; repair failed: {}", s.message())))?;
        match parser.parse(&fixed) {
            Ok(v) => Ok((fixed, v)),
            Err(e) => Err(fail(format!("{reason}; after one repair try: {}", e.reason))),
        }
    }

    /// Folds old turns into the session's summary.
    async fn summarize(&self, session: &str, work: tessera_node::memory::SummaryWork) -> Result<(), Status> {
        let lines: Vec<String> = work.messages.iter().map(history_line).collect();
        let vars: BTreeMap<String, Value> = [
            ("summary".to_string(), Value::String(work.previous.clone())),
            ("new_lines".to_string(), Value::String(lines.join("\n"))),
        ]
        .into();
        let prompt = self.prompts.render("summarize", &vars).map_err(|e| Status::internal(e.to_string()))?;
        let (summary, _) = self.generate_text(prompt, self.config.summary_max_tokens, vec![]).await?;
        let summary = summary.trim();
        if summary.is_empty() {
            return Err(Status::internal("the model wrote an empty summary"));
        }
        let node = self.session_node(session)?;
        node.client
            .clone()
            .session_summarize(pb::SessionSummaryRequest {
                session: session.to_string(),
                summary: summary.to_string(),
                summarized_upto: work.upto,
            })
            .await?;
        Ok(())
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
        let m = |r: &str| ChatMessage { role: r.into(), content: String::new() };
        assert_eq!(newest_turn_len(&[m("user"), m("assistant"), m("user"), m("assistant")]), 2);
        assert_eq!(newest_turn_len(&[m("user"), m("assistant"), m("user")]), 1);
        assert_eq!(newest_turn_len(&[m("assistant")]), 1);
        assert_eq!(newest_turn_len(&[]), 0);
    }
}
