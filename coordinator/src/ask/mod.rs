//! The ask chain: history-aware retrieval-augmented generation.
//!
//! condense (follow-ups only) -> embed -> search -> prompt within the context
//! window -> generate (streamed) -> parse (JSON and regex generated constrained) -> store the
//! turn (durable before the result is sent) -> summarise old turns (summary
//! memory, in the background). Each step is timed; the times travel with the
//! result so that latency can be broken down without a profiler.
//!
//! The steps live in their own files, each an `impl Coordinator` block:
//! [`history`] (memory and condensing), [`window`] (fitting context and history
//! into the window), [`answer`] (generation, parsing, the stored turn, the result).
//! This file validates a request into an [`AskPlan`] and runs the steps in order.

mod answer;
pub(crate) use answer::parse_output;
mod history;
mod window;

use std::time::Instant;

use tessera_proto::convert::{chat_messages, search_mode};
use tessera_proto::v1 as pb;
use tessera_types::{validate_session_id, ChatMessage, MemoryKind, SearchMode};
use tokio::sync::mpsc;
use tracing::{info_span, Instrument};

pub use history::standalone_or_fallback;
pub use window::{context_entry, history_line};

use crate::catalog::CollectionMeta;
use crate::chain::parser::OutputParser;
use crate::coordinator::Coordinator;
use crate::error::{CoordinatorError, Result};

/// What an ask stream carries: text chunks, then one chunk with the result.
pub type AskItem = Result<pb::AskChunk>;
/// The stream of an ask.
pub type AskReceiver = mpsc::Receiver<AskItem>;

/// An ask request after validation.
struct AskPlan {
    req: pb::AskRequest,
    history: Vec<ChatMessage>,
    mode: SearchMode,
    meta: CollectionMeta,
    template: String,
    parser: OutputParser,
    memory: MemoryKind,
    top_k: u32,
    max_tokens: u32,
    started: Instant,
}

/// Milliseconds since `since`.
fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

impl Coordinator {
    /// Validates an ask and starts its chain; errors found before any work are
    /// returned directly, later ones end the stream.
    pub async fn ask(&self, req: pb::AskRequest) -> Result<AskReceiver> {
        let mut plan = self.plan(req)?;
        // "" / "default" means a node's first model, and model nodes are picked
        // round robin: name one now, so every step of this ask (token counts,
        // condense, answer, summary) uses the same model and tokenizer.
        if tessera_types::names_default_model(&plan.req.model) {
            if let Ok(Some(m)) = self.model_info().await {
                plan.req.model = m.name;
            }
        }
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        let span = info_span!("ask.chain", collection = %plan.meta.name, session = %plan.req.session);
        tokio::spawn(
            async move {
                if let Err(e) = me.run_chain(plan, &tx).await {
                    let _ = tx.send(Err(e)).await;
                }
            }
            .instrument(span),
        );
        Ok(rx)
    }

    /// Checks every field of an ask against the limits and resolves the defaults.
    fn plan(&self, req: pb::AskRequest) -> Result<AskPlan> {
        let started = Instant::now();
        let cfg = &self.config;
        if req.question.trim().is_empty() {
            return Err(CoordinatorError::invalid("question must not be empty"));
        }
        if req.question.len() > cfg.max_question_bytes {
            return Err(CoordinatorError::invalid(format!(
                "question is {} bytes, over the limit of {}",
                req.question.len(),
                cfg.max_question_bytes
            )));
        }
        if !req.session.is_empty() {
            validate_session_id(&req.session).map_err(|e| CoordinatorError::invalid(e.to_string()))?;
        }
        let history = chat_messages(&req.history).map_err(|e| CoordinatorError::invalid(format!("history: {e}")))?;
        let top_k = if req.top_k == 0 { cfg.ask_top_k } else { req.top_k };
        if top_k > cfg.max_top_k {
            return Err(CoordinatorError::invalid(format!("top_k must be at most {}", cfg.max_top_k)));
        }
        let max_tokens = if req.max_tokens == 0 { 256 } else { req.max_tokens };
        if max_tokens > cfg.max_answer_tokens {
            return Err(CoordinatorError::invalid(format!("max_tokens must be at most {}", cfg.max_answer_tokens)));
        }
        let mode = search_mode(req.mode)?;
        let template = if req.template.is_empty() { "qa".to_string() } else { req.template.clone() };
        if !self.prompts.contains(&template) {
            return Err(CoordinatorError::invalid(format!(
                "unknown template '{template}' (known: {})",
                self.prompts.names().join(", ")
            )));
        }
        let out = req.output.clone().unwrap_or_default();
        let parser = OutputParser::from_spec(&out.kind, &out.schema_json, &out.pattern)
            .map_err(|e| CoordinatorError::invalid(e.to_string()))?;
        let mem = req.memory.clone().unwrap_or_default();
        let memory = MemoryKind::parse(&mem.kind, mem.window, mem.max_tokens, &cfg.default_memory)
            .map_err(|e| CoordinatorError::invalid(e.to_string()))?;
        let meta = self.collection(&req.collection)?;
        Ok(AskPlan { req, history, mode, meta, template, parser, memory, top_k, max_tokens, started })
    }

    /// The chain's steps in order; each records its time in `timings`.
    async fn run_chain(&self, plan: AskPlan, tx: &mpsc::Sender<AskItem>) -> Result<()> {
        let mut timings = pb::AskTimings::default();
        let view = self.remembered(&plan).await?;

        let t0 = Instant::now();
        let standalone = if view.messages.is_empty() {
            plan.req.question.clone()
        } else {
            self.condense(&plan.req.model, &view, &plan.req.question).await?
        };
        timings.condense_ms = ms(t0);

        let hits = self.retrieve(&plan, &standalone, &mut timings).await?;

        let t0 = Instant::now();
        let prompt = self.fit_prompt(&plan, &view, &standalone, &hits).await?;
        timings.prompt_ms = ms(t0);

        let t0 = Instant::now();
        let Some(generated) = self.stream_answer(&plan, prompt.text.clone(), tx, &mut timings).await? else {
            return Ok(()); // the client went away; dropping the stream cancelled generation
        };
        timings.generate_ms = ms(t0);

        let result = self.finish(plan, generated, prompt, standalone, hits, timings).await?;
        let _ = tx.send(Ok(pb::AskChunk { text: String::new(), result: Some(result) })).await;
        Ok(())
    }

    /// Embeds the standalone question (unless the mode is BM25 only) and searches.
    async fn retrieve(
        &self,
        plan: &AskPlan,
        standalone: &str,
        timings: &mut pb::AskTimings,
    ) -> Result<Vec<tessera_types::Scored>> {
        let t0 = Instant::now();
        let vector = if plan.mode == SearchMode::Bm25 { None } else { Some(self.embed_query(standalone).await?) };
        timings.embed_ms = ms(t0);
        let t0 = Instant::now();
        let search = pb::SearchRequest {
            collection: plan.meta.name.clone(),
            query: standalone.to_string(),
            top_k: plan.top_k,
            filter: plan.req.filter.clone(),
            mode: plan.req.mode,
            min_score: plan.req.min_score,
            ..Default::default()
        };
        let hits = self.search_hits(&search, &plan.meta, vector).await?;
        timings.search_ms = ms(t0);
        Ok(hits)
    }
}
