//! Rank 0's continuous-batching scheduler.
//!
//! It admits requests from the bounded job queue, builds each step (one token
//! for every decoding sequence plus prompt chunks of waiting ones, within
//! `max_batch_size` sequences and `max_batched_tokens` tokens), broadcasts the
//! step to the other ranks, runs its share, samples, and streams text out.
//! Sequences that arrive while others decode join at the next step; a request
//! whose receiver is dropped is cancelled and its caches freed on every rank.
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use tracing::{debug, info_span, warn};

use super::comm::Communicator;
use super::constraint::Guide;
use super::decoder::{RankModel, SeqStep};
use super::engine::{AdapterOps, Command, Control, EngineLimits, Event, FinishReason, GroupStats, Job};
use super::prefix_cache::{PrefixCache, PrefixFork, PrefixOps};
use super::sampler::Sampler;
use super::sampler::SamplingParams;
use super::tokenizer::GgufTokenizer;
use super::ModelError;

/// One request inside the scheduler.
struct Seq {
    id: u64,
    prompt: Vec<u32>,
    cached: usize,
    generated: Vec<u32>,
    sampler: Sampler,
    params: SamplingParams,
    /// The output constraint's state, when the request has one.
    guide: Option<Guide>,
    events: UnboundedSender<Event>,
    /// The adapter it runs with (None: the base model).
    adapter: Option<u32>,
    /// Bytes of the generated text already streamed.
    emitted: usize,
    /// Generated text decoded so far: `generated[..decoded]`, ending on a
    /// whole character, so each token decodes only its own tail.
    text: String,
    /// Tokens whose text is in `text`.
    decoded: usize,
    /// `model.generate`, open for the sequence's life.
    span: tracing::Span,
    submitted: Instant,
}

/// See the module documentation; owns rank 0's model and communicator.
pub(super) struct Scheduler {
    model: RankModel,
    comm: Box<dyn Communicator>,
    tokenizer: Arc<GgufTokenizer>,
    limits: EngineLimits,
    stats: Arc<GroupStats>,
    rx: Receiver<Job>,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    free: Vec<u64>,
    next_id: u64,
    /// The `model` label of this group's metrics (its served name).
    label: String,
    /// Kept prompt prefixes, and what the ranks must do about them next step.
    prefix: PrefixCache,
    prefix_ops: PrefixOps,
    /// Adapter loads and unloads, and the requests for them.
    control: Receiver<Control>,
    adapter_ops: AdapterOps,
    /// Adapters loaded (rank 0 has them; the others once `adapter_ops` is sent).
    adapters: std::collections::HashSet<u32>,
    /// Adapters to unload once no sequence uses them.
    retiring: Vec<u32>,
}

impl Scheduler {
    pub(super) fn new(
        model: RankModel,
        comm: Box<dyn Communicator>,
        tokenizer: Arc<GgufTokenizer>,
        limits: EngineLimits,
        stats: Arc<GroupStats>,
        (rx, control): (Receiver<Job>, Receiver<Control>),
        label: String,
    ) -> Self {
        Self {
            control,
            adapter_ops: AdapterOps::default(),
            adapters: Default::default(),
            retiring: Vec::new(),
            label,
            prefix: PrefixCache::new(limits.prefix_cache_bytes, model.kv_bytes_per_position()),
            prefix_ops: PrefixOps::default(),
            model,
            comm,
            tokenizer,
            limits,
            stats,
            rx,
            waiting: VecDeque::new(),
            running: Vec::new(),
            free: Vec::new(),
            next_id: 1,
        }
    }

    fn admit(&mut self, job: Job) {
        if let Some(a) = job.adapter {
            if !self.adapters.contains(&a) || self.retiring.contains(&a) {
                let _ = job.events.send(Event::Error(format!("adapter {a} is not loaded (it was unloaded)")));
                return;
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        // Kept prefixes hold the base model's keys and values: a sequence
        // with an adapter neither reuses nor keeps one.
        let found = if job.adapter.is_none() { self.prefix.lookup(&job.prompt) } else { None };
        let cached = match found {
            Some((entry, positions)) => {
                self.prefix_ops.fork.push(PrefixFork { entry, seq: id, positions });
                self.stats.prefix_hits.fetch_add(1, Ordering::Relaxed);
                self.stats.prefix_tokens_reused.fetch_add(positions, Ordering::Relaxed);
                metrics::counter!("tessera_model_prefix_cache_hits_total", "model" => self.label.clone()).increment(1);
                metrics::counter!("tessera_model_prefix_cache_tokens_reused_total", "model" => self.label.clone())
                    .increment(positions as u64);
                positions
            }
            None => {
                if self.prefix.enabled() {
                    metrics::counter!("tessera_model_prefix_cache_misses_total", "model" => self.label.clone())
                        .increment(1);
                }
                0
            }
        };
        let span = info_span!(parent: &job.span, "model.generate", seq = id, prompt_tokens = job.prompt.len(), completion_tokens = tracing::field::Empty, finish = tracing::field::Empty);
        self.waiting.push_back(Seq {
            span,
            submitted: job.submitted,
            id,
            sampler: Sampler::new(job.params.clone()),
            params: job.params,
            guide: job.guide,
            prompt: job.prompt,
            cached,
            generated: Vec::new(),
            events: job.events,
            adapter: job.adapter,
            emitted: 0,
            text: String::new(),
            decoded: 0,
        });
    }

    fn broadcast(&self, cmd: &Command) -> Result<(), ModelError> {
        let mut buf = serde_json::to_vec(cmd).map_err(|e| ModelError::Io(e.to_string()))?;
        self.comm.broadcast(&mut buf, 0)?;
        Ok(())
    }

    /// Adapter requests that have arrived: a load is checked and applied on
    /// rank 0 now (the reply says whether it fits the model) and sent to the
    /// other ranks with the next step; an unload waits for its sequences.
    fn take_control(&mut self) {
        while let Ok(c) = self.control.try_recv() {
            match c {
                Control::LoadAdapter { id, adapter, reply } => {
                    let r = self.model.load_adapter(id, &adapter);
                    if r.is_ok() {
                        self.adapters.insert(id);
                        self.adapter_ops.load.push((id, *adapter));
                    }
                    let _ = reply.send(r);
                }
                Control::UnloadAdapter { id } => {
                    if self.adapters.contains(&id) && !self.retiring.contains(&id) {
                        self.retiring.push(id);
                    }
                }
            }
        }
    }

    /// Retiring adapters that no sequence uses any more: unloaded on rank 0
    /// now and on the others with this step.
    fn retire_unused_adapters(&mut self) {
        let in_use: std::collections::HashSet<u32> =
            self.running.iter().chain(self.waiting.iter()).filter_map(|s| s.adapter).collect();
        let (done, keep): (Vec<u32>, Vec<u32>) = self.retiring.drain(..).partition(|id| !in_use.contains(id));
        self.retiring = keep;
        for id in done {
            self.model.unload_adapter(id);
            self.adapters.remove(&id);
            self.adapter_ops.unload.push(id);
        }
    }

    /// Serves until the job channel closes, then shuts the other ranks down.
    pub(super) fn run(mut self) {
        loop {
            self.take_control();
            // Admit: block when idle, otherwise take whatever has arrived.
            if self.waiting.is_empty() && self.running.is_empty() {
                match self.rx.recv_timeout(Duration::from_millis(50)) {
                    Ok(job) => {
                        // A load sent just before this job must be known first.
                        self.take_control();
                        self.admit(job)
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        let pending =
                            !self.free.is_empty() || !self.retiring.is_empty() || !self.adapter_ops.is_empty();
                        if pending && self.step().is_err() {
                            return;
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            // Admit only what the next steps can run; the rest stays in the bounded
            // channel, whose capacity is what makes a full queue refuse requests.
            while self.running.len() + self.waiting.len() < self.limits.max_batch_size {
                match self.rx.try_recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => break,
                }
            }
            if let Err(e) = self.step() {
                warn!("model step failed: {e}");
                for s in self.running.drain(..).chain(self.waiting.drain(..)) {
                    let _ = s.events.send(Event::Error(e.to_string()));
                    self.free.push(s.id);
                }
                for id in self.free.drain(..) {
                    self.model.free(id);
                }
                // The failed step's prefix saves and forks may have reached
                // some ranks and not others: start the index afresh.
                self.prefix.clear(&mut self.prefix_ops);
            }
        }
        let _ = self.broadcast(&Command::Shutdown);
    }

    /// Builds and runs one step, then samples and streams.
    fn step(&mut self) -> Result<(), ModelError> {
        self.drop_cancelled();
        self.retire_unused_adapters();
        let (steps, prefilling) = self.plan_step();
        let free = std::mem::take(&mut self.free);
        let prefix = std::mem::take(&mut self.prefix_ops);
        let adapters = std::mem::take(&mut self.adapter_ops);
        // Prefix saves before frees: a sequence that ended on its first
        // token is freed in the same step its prompt is saved.
        self.model.apply_prefix_ops(&prefix)?;
        for id in &free {
            self.model.free(*id);
        }
        self.broadcast(&Command::Step { steps: steps.clone(), free, prefix, adapters })?;
        if steps.is_empty() {
            self.stats.cached_sequences.store(self.model.cached_sequences(), Ordering::Relaxed);
            self.record_gauges();
            return Ok(());
        }
        let started = Instant::now();
        let mut logits = self.forward(&steps, prefilling)?;
        self.record_step(&steps, started);
        let finished = self.sample_and_stream(&steps, &mut logits);
        self.promote_prefilled();
        self.finish(finished);
        self.stats.cached_sequences.store(self.model.cached_sequences(), Ordering::Relaxed);
        self.record_gauges();
        Ok(())
    }

    /// Cancelled requests (receiver dropped) leave now; their caches are freed next step.
    fn drop_cancelled(&mut self) {
        for s in self.running.iter().chain(self.waiting.iter()) {
            if s.events.is_closed() {
                self.free.push(s.id);
            }
        }
        self.running.retain(|s| !s.events.is_closed());
        self.waiting.retain(|s| !s.events.is_closed());
    }

    /// One decode token per running sequence, then prompt chunks of waiting ones
    /// in arrival order, within the step's sequence and token budgets. Returns
    /// the steps and how many of them are prompt chunks.
    fn plan_step(&self) -> (Vec<SeqStep>, usize) {
        let mut steps = Vec::new();
        let mut budget = self.limits.max_batched_tokens;
        for s in &self.running {
            steps.push(SeqStep {
                seq: s.id,
                tokens: vec![*s.generated.last().expect("running sequences have a token")],
                start: s.cached,
                adapter: s.adapter,
            });
            budget = budget.saturating_sub(1);
        }
        let mut prefilling = 0;
        for s in self.waiting.iter() {
            if budget == 0 || steps.len() >= self.limits.max_batch_size {
                break;
            }
            let take = (s.prompt.len() - s.cached).min(budget);
            steps.push(SeqStep {
                seq: s.id,
                tokens: s.prompt[s.cached..s.cached + take].to_vec(),
                start: s.cached,
                adapter: s.adapter,
            });
            budget -= take;
            prefilling += 1;
        }
        (steps, prefilling)
    }

    /// Rank 0's share of the step, inside a `model.step` span that links to every
    /// sequence it serves (one step serves many requests, so it has no one parent)
    /// and one `model.prefill` span per prompt chunk under its request.
    fn forward(&mut self, steps: &[SeqStep], prefilling: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        let step_span =
            info_span!("model.step", rank = 0, seqs = steps.len(), decode = self.running.len(), prefill = prefilling);
        for s in self.running.iter().chain(self.waiting.iter().take(prefilling)) {
            step_span.follows_from(&s.span);
        }
        let _prefill_spans: Vec<tracing::Span> = steps[self.running.len()..]
            .iter()
            .filter_map(|st| {
                let seq = self.waiting.iter().find(|s| s.id == st.seq)?;
                Some(info_span!(parent: &seq.span, "model.prefill", tokens = st.tokens.len(), start = st.start))
            })
            .collect();
        let _entered = step_span.enter();
        self.model.forward(steps, self.comm.as_ref())
    }

    /// Step metrics and counters.
    fn record_step(&self, steps: &[SeqStep], started: Instant) {
        debug!(seqs = steps.len(), ms = started.elapsed().as_millis() as u64, "step");
        let prompt_tokens: usize = steps[self.running.len()..].iter().map(|s| s.tokens.len()).sum();
        metrics::histogram!("tessera_model_step_duration_seconds", "model" => self.label.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!("tessera_model_step_sequences", "model" => self.label.clone()).record(steps.len() as f64);
        metrics::counter!("tessera_model_prompt_tokens_total", "model" => self.label.clone())
            .increment(prompt_tokens as u64);
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        self.stats.max_batch_seen.fetch_max(steps.len(), Ordering::Relaxed);
    }

    /// Advances running sequences, then the prompt chunks: a sequence whose
    /// prompt is complete samples its next token and streams the text it makes
    /// final. Returns the sequences that ended, with why (or the error that
    /// ended them).
    fn sample_and_stream(&mut self, steps: &[SeqStep], logits: &mut [Vec<f32>]) -> Vec<(u64, Ended)> {
        let n_running = self.running.len();
        let mut ended = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let seq = if i < n_running {
                &mut self.running[i]
            } else {
                let w = self.waiting.iter_mut().find(|s| s.id == step.seq).expect("prefilling sequence is waiting");
                w.cached += step.tokens.len();
                if w.cached < w.prompt.len() {
                    continue; // more prompt to go; its logits are not needed
                }
                w
            };
            if i < n_running {
                seq.cached += 1;
            }
            let token = match sample(seq, &mut logits[i], &self.tokenizer, &self.label) {
                Ok(t) => t,
                Err(e) => {
                    ended.push((seq.id, Ended::Failed(e)));
                    continue;
                }
            };
            if seq.generated.is_empty() {
                metrics::histogram!("tessera_model_time_to_first_token_seconds", "model" => self.label.clone())
                    .record(seq.submitted.elapsed().as_secs_f64());
            }
            seq.generated.push(token);
            metrics::counter!("tessera_model_generated_tokens_total", "model" => self.label.clone()).increment(1);
            let complete = seq.guide.as_ref().is_some_and(Guide::is_complete);
            if let Some(reason) = advance(seq, token, &self.tokenizer, complete) {
                ended.push((seq.id, Ended::Finished(reason)));
            }
        }
        ended
    }

    /// Sequences whose prompt is done move from waiting to running.
    fn promote_prefilled(&mut self) {
        let mut still_waiting = VecDeque::new();
        for s in self.waiting.drain(..) {
            if s.cached == s.prompt.len() && !s.generated.is_empty() {
                if s.adapter.is_none() {
                    self.prefix.insert(s.id, &s.prompt, &mut self.prefix_ops);
                }
                self.running.push(s);
            } else {
                still_waiting.push_back(s);
            }
        }
        self.waiting = still_waiting;
    }

    /// Ends finished sequences: the last event, span fields, and their caches freed next step.
    fn finish(&mut self, ended: Vec<(u64, Ended)>) {
        for (id, how) in ended {
            let reason = match how {
                Ended::Finished(reason) => reason,
                Ended::Failed(e) => {
                    // It may have failed on its first token, still among the waiting.
                    let s = match self.running.iter().position(|s| s.id == id) {
                        Some(pos) => Some(self.running.remove(pos)),
                        None => self.waiting.iter().position(|s| s.id == id).and_then(|p| self.waiting.remove(p)),
                    };
                    if let Some(s) = s {
                        warn!(seq = id, error = %e, "generation failed");
                        let _ = s.events.send(Event::Error(e));
                        self.free.push(id);
                    }
                    continue;
                }
            };
            if let Some(pos) = self.running.iter().position(|s| s.id == id) {
                let s = self.running.remove(pos);
                s.span.record("completion_tokens", s.generated.len());
                s.span.record("finish", reason.as_str());
                metrics::counter!("tessera_model_requests_total", "finish" => reason.as_str(), "model" => self.label.clone()).increment(1);
                let _ = s.events.send(Event::Done {
                    finish: reason,
                    prompt_tokens: s.prompt.len(),
                    completion_tokens: s.generated.len(),
                });
                self.free.push(id);
            }
        }
    }

    /// Queue, batch and KV-cache gauges after a step.
    fn record_gauges(&self) {
        let cached_tokens: usize = self.running.iter().chain(self.waiting.iter()).map(|s| s.cached).sum();
        metrics::gauge!("tessera_model_waiting_requests", "model" => self.label.clone()).set(self.waiting.len() as f64);
        metrics::gauge!("tessera_model_running_requests", "model" => self.label.clone()).set(self.running.len() as f64);
        metrics::gauge!("tessera_model_kv_cache_sequences", "model" => self.label.clone())
            .set(self.model.cached_sequences() as f64);
        metrics::gauge!("tessera_model_kv_cache_tokens", "model" => self.label.clone()).set(cached_tokens as f64);
        metrics::gauge!("tessera_model_kv_cache_bytes", "model" => self.label.clone())
            .set(self.model.cache_bytes() as f64);
        metrics::gauge!("tessera_model_prefix_cache_entries", "model" => self.label.clone())
            .set(self.prefix.len() as f64);
        metrics::gauge!("tessera_model_prefix_cache_bytes", "model" => self.label.clone())
            .set(self.model.prefix_bytes() as f64);
    }
}

/// How a sequence ended this step.
enum Ended {
    Finished(FinishReason),
    /// The constraint engine failed; the message goes to the request.
    Failed(String),
}

/// Tokens of the budget, at the end, in which a JSON constraint steers the
/// output to its end (see [`Guide::mask`]): half of `max_tokens`, at least 8
/// and at most 64 (closing a few nested objects with required keys, a pattern
/// or an enum value still to spell out takes tens of tokens; a third of a
/// 48-token budget left 3 of 20 outputs cut off in the test, half left none
/// or one).
fn closing_reserve(max_tokens: usize) -> usize {
    (max_tokens / 2).clamp(8, 64)
}

/// The sequence's next token: its logits (this step's own, so masked in
/// place) masked by its constraint, if any, then sampled; the constraint
/// follows the token.
fn sample(seq: &mut Seq, logits: &mut [f32], tokenizer: &GgufTokenizer, label: &str) -> Result<u32, String> {
    let Some(guide) = seq.guide.as_mut() else {
        return Ok(seq.sampler.sample(logits, &seq.prompt, &seq.generated));
    };
    let left = seq.params.max_tokens.saturating_sub(seq.generated.len());
    let started = Instant::now();
    guide.mask(logits, left <= closing_reserve(seq.params.max_tokens)).map_err(|e| e.to_string())?;
    let token = seq.sampler.sample(logits, &seq.prompt, &seq.generated);
    // An end-of-generation token ends the sequence; the grammar needs no news of it.
    if !tokenizer.end_of_generation.contains(&token) {
        guide.commit(token).map_err(|e| e.to_string())?;
    }
    metrics::histogram!("tessera_model_constraint_seconds", "model" => label.to_string())
        .record(started.elapsed().as_secs_f64());
    Ok(token)
}

/// Streams the text that `token` makes final; returns why the sequence ends,
/// if it does. `complete`: the sequence's constraint allows nothing more.
fn advance(seq: &mut Seq, token: u32, tokenizer: &GgufTokenizer, complete: bool) -> Option<FinishReason> {
    let eog = tokenizer.end_of_generation.contains(&token);
    let visible = if eog { seq.generated.len() - 1 } else { seq.generated.len() };
    // Decode only the tokens after the last whole character; the text up to
    // there is kept (a byte-level decode of a suffix that starts on a
    // character boundary is the suffix of the whole decode).
    let tail = tokenizer.decode(&seq.generated[seq.decoded.min(visible)..visible]).unwrap_or_default();
    let committed = seq.text.len();
    let pending = tail.ends_with('\u{FFFD}');
    seq.text.push_str(&tail);
    let text = seq.text.as_str();
    // A stop sequence ends the text just before it.
    let stop_at = seq.params.stop.iter().filter_map(|s| text.find(s.as_str())).min();
    let (final_len, reason) = if let Some(at) = stop_at {
        (at, Some(FinishReason::Stop))
    } else if eog {
        (text.len(), Some(FinishReason::Eos))
    } else if complete {
        (text.len(), Some(FinishReason::Stop))
    } else if seq.generated.len() >= seq.params.max_tokens {
        (text.len(), Some(FinishReason::Length))
    } else {
        // Hold back what may still become a stop sequence or an incomplete character.
        let mut safe = text.len();
        if text.ends_with('\u{FFFD}') {
            safe = text.len() - '\u{FFFD}'.len_utf8();
        }
        for s in &seq.params.stop {
            for k in (1..s.len()).rev() {
                if s.is_char_boundary(k) && text[..safe].ends_with(&s[..k]) {
                    safe = safe.min(text.len() - k);
                    break;
                }
            }
        }
        (safe, None)
    };
    let final_len = final_len.max(seq.emitted);
    let delta = text.get(seq.emitted..final_len).unwrap_or("").to_string();
    seq.emitted = final_len;
    if pending {
        // An incomplete character: decode these tokens again with the next one.
        seq.text.truncate(committed);
    } else {
        seq.decoded = visible;
    }
    let _ = seq.events.send(Event::Token { id: token, text: delta });
    reason
}
