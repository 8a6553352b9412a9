//! The answer: streamed generation (constrained for JSON and regex output), output parsing, the
//! turn stored durably, the summary job, and the result with its timings.
use std::collections::BTreeMap;

use serde_json::Value;
use tessera_proto::v1 as pb;
use tessera_types::{summary_due, ChatMessage, MemoryKind, Role, Scored, SessionState, SummaryWork};
use tokio::sync::mpsc;
use tracing::warn;

use super::window::{history_line, FittedPrompt};
use super::{ms, AskItem, AskPlan};
use crate::chain::parser::{OutputError, OutputParser};
use crate::coordinator::Coordinator;
use crate::error::{CoordinatorError, Result};

/// What generation produced.
pub(super) struct Generated {
    /// The whole answer text.
    pub answer: String,
    /// The last chunk (finish reason, usage).
    pub last: pb::GenerateChunk,
}

impl Coordinator {
    /// Generates the answer, sending text to the client as it comes; `None` when
    /// the client went away.
    pub(super) async fn stream_answer(
        &self,
        plan: &AskPlan,
        prompt: String,
        tx: &mpsc::Sender<AskItem>,
        timings: &mut pb::AskTimings,
    ) -> Result<Option<Generated>> {
        let req = &plan.req;
        let gen = pb::GenerateRequest {
            prompt,
            max_tokens: plan.max_tokens,
            temperature: Some(req.temperature.unwrap_or(0.0)),
            top_p: req.top_p,
            seed: req.seed,
            stop: req.stop.clone(),
            repetition_penalty: req.repetition_penalty,
            model: req.model.clone(),
            constraint: plan.parser.constraint(),
            ..Default::default()
        };
        let mut stream = match self.model_stream(gen.clone()).await {
            // A regex the grammar engine cannot compile (word boundaries,
            // multi-line anchors, lookarounds) that the `regex` crate accepts:
            // the answer is generated free and parsed as before.
            Err(e) if e.code() == tonic::Code::InvalidArgument && plan.parser.kind() == "regex" => {
                warn!(error = %e, "the output regex cannot constrain generation; generating unconstrained");
                self.model_stream(pb::GenerateRequest { constraint: None, ..gen }).await?
            }
            r => r?,
        };
        let mut answer = String::new();
        let mut last = pb::GenerateChunk::default();
        while let Some(chunk) = stream.message().await? {
            if !chunk.text.is_empty() {
                if timings.first_token_ms == 0.0 {
                    timings.first_token_ms = ms(plan.started);
                }
                answer.push_str(&chunk.text);
                if tx.send(Ok(pb::AskChunk { text: chunk.text.clone(), result: None })).await.is_err() {
                    return Ok(None);
                }
            }
            if !chunk.finish_reason.is_empty() {
                last = chunk;
                break;
            }
        }
        Ok(Some(Generated { answer, last }))
    }

    /// Parses the answer, stores the turn (durable before the result goes out,
    /// also when parsing failed), starts the summary job, and builds the result.
    pub(super) async fn finish(
        &self,
        plan: AskPlan,
        generated: Generated,
        prompt: FittedPrompt,
        standalone: String,
        hits: Vec<Scored>,
        mut timings: pb::AskTimings,
    ) -> Result<pb::AskResult> {
        let Generated { mut answer, last } = generated;
        let parsed = match parse_output(&plan.parser, answer.clone()) {
            Ok((text, v)) => {
                answer = text;
                Ok(v)
            }
            Err(e) => Err(e),
        };
        let stored = self.store_turn(&plan.req, &answer).await?;
        if let (Some(state), MemoryKind::Summary { keep_turns }) = (&stored, &plan.memory) {
            self.start_summary(&plan.req.model, &plan.req.session, state, *keep_turns);
        }
        let parsed = parsed.map_err(|e| {
            CoordinatorError::OutputParse(format!(
                "output parser ({}): {}; raw output: {}",
                plan.parser.kind(),
                e.reason,
                e.raw
            ))
        })?;
        timings.total_ms = ms(plan.started);
        record_timings(&timings, &prompt);
        Ok(pb::AskResult {
            answer,
            sources: hits[..prompt.chunks].iter().map(pb::Source::from).collect(),
            session: plan.req.session.clone(),
            standalone_question: standalone,
            parsed_json: parsed.map(|v| v.to_string()).unwrap_or_default(),
            finish_reason: last.finish_reason,
            usage: last.usage,
            timings: Some(timings),
            history_messages: prompt.history_messages as u32,
            context_chunks: prompt.chunks as u32,
        })
    }

    /// Appends the question and answer to the session, if the ask has one.
    async fn store_turn(&self, req: &pb::AskRequest, answer: &str) -> Result<Option<SessionState>> {
        if req.session.is_empty() {
            return Ok(None);
        }
        let turn = vec![ChatMessage::new(Role::User, req.question.clone()), ChatMessage::new(Role::Assistant, answer)];
        Ok(Some(self.session_append(&req.session, turn).await?))
    }

    /// Folds old turns into the summary in the background: the client never
    /// waits for it, and until it lands those turns stay verbatim.
    fn start_summary(&self, model: &str, session: &str, state: &SessionState, keep_turns: usize) {
        let Some(work) = summary_due(state, keep_turns) else { return };
        let me = self.clone();
        let (model, session) = (model.to_string(), session.to_string());
        self.background.spawn(async move {
            if let Err(e) = me.summarize(&model, &session, work).await {
                warn!(session, error = %e, "summarising the session failed; older turns stay verbatim");
            }
        });
    }

    /// Folds old turns into the session's summary.
    async fn summarize(&self, model: &str, session: &str, work: SummaryWork) -> Result<()> {
        let lines: Vec<String> = work.messages.iter().map(history_line).collect();
        let vars: BTreeMap<String, Value> = [
            ("summary".to_string(), Value::String(work.previous.clone())),
            ("new_lines".to_string(), Value::String(lines.join("\n"))),
        ]
        .into();
        let prompt = self.prompts.render("summarize", &vars).map_err(|e| CoordinatorError::internal(e.to_string()))?;
        let (summary, _) = self.generate_text(model, prompt, self.config.summary_max_tokens, vec![]).await?;
        let summary = summary.trim();
        if summary.is_empty() {
            return Err(CoordinatorError::internal("the model wrote an empty summary"));
        }
        self.session_summarize(session, summary, work.upto).await
    }
}

/// Parses model output. JSON and regex output was generated under the
/// parser's constraint (every caller sends [`OutputParser::constraint`]
/// with the request), so it parses by construction unless `max_tokens`
/// cut it off (or the schema uses a keyword the engine leaves
/// unenforced; a regex it cannot compile is generated free), which is
/// reported as such: there is no repair round trip. Returns the text and
/// the parsed value.
pub(crate) fn parse_output(
    parser: &OutputParser,
    text: String,
) -> std::result::Result<(String, Option<Value>), OutputError> {
    match parser.parse(&text) {
        Ok(v) => Ok((text, v)),
        Err(e) if parser.kind() == "json" => Err(OutputError {
            reason: format!(
                "{} (the output was generated under the schema: max_tokens ended it early, or the schema uses a keyword the grammar engine does not enforce)",
                e.reason
            ),
            raw: e.raw,
        }),
        Err(e) => Err(e),
    }
}

/// The "ask answered" log line and the per-step latency histograms.
fn record_timings(timings: &pb::AskTimings, prompt: &FittedPrompt) {
    tracing::info!(
        total_ms = timings.total_ms as u64,
        first_token_ms = timings.first_token_ms as u64,
        chunks = prompt.chunks,
        history = prompt.history_messages,
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
}
