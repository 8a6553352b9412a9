//! The model group: rank threads and rank 0's continuous-batching scheduler.
//!
//! Every rank runs on its own OS thread (a `ModelRankActor` in DESIGN.md's
//! terms: it owns its weight shard and its part of every KV cache, and handles
//! one command at a time). Rank 0 leads: it admits requests, builds each step
//! (one token for every decoding sequence plus prompt chunks of waiting ones,
//! within `max_batch_size` sequences and `max_batched_tokens` tokens),
//! broadcasts the step to the other ranks, runs its share, samples, and streams
//! tokens out. Sequences that arrive while others decode join at the next step;
//! a request whose receiver is dropped is cancelled and its caches freed on
//! every rank.
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tracing::{debug, info_span, warn};

use super::comm::{Communicator, LocalGroup, Traced};
use super::llama::{RankModel, SeqStep};
use super::sampler::{Sampler, SamplingParams};
use super::tokenizer::GgufTokenizer;
use super::ModelError;

/// Scheduler bounds.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    /// Sequences in one step.
    pub max_batch_size: usize,
    /// Tokens in one step (decode tokens + prompt chunks).
    pub max_batched_tokens: usize,
    /// Requests waiting to be admitted before new ones are refused.
    pub max_queued: usize,
}

impl Default for EngineLimits {
    fn default() -> Self {
        Self { max_batch_size: 16, max_batched_tokens: 512, max_queued: 64 }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishReason {
    /// `max_tokens` reached.
    Length,
    /// A stop sequence appeared.
    Stop,
    /// The model produced an end-of-generation token.
    Eos,
}

impl FinishReason {
    /// Lower-case name, as APIs report it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Length => "length",
            Self::Stop => "stop",
            Self::Eos => "eos",
        }
    }
}

/// What a request's stream carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New text (may be empty while a stop sequence or a UTF-8 character is incomplete) and the token that produced it.
    Token {
        /// The token id.
        id: u32,
        /// Text that became final with this token.
        text: String,
    },
    /// The generation ended.
    Done {
        /// Why.
        finish: FinishReason,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Generated tokens (including an end-of-generation token).
        completion_tokens: usize,
    },
    /// The generation failed.
    Error(String),
}

/// A generation request for the engine.
struct Job {
    prompt: Vec<u32>,
    params: SamplingParams,
    events: UnboundedSender<Event>,
    /// The submitting request's span: the sequence's spans are its children.
    span: tracing::Span,
    submitted: Instant,
}

/// What rank 0 broadcasts before each step.
#[derive(Debug, Serialize, Deserialize)]
enum Command {
    Step { steps: Vec<SeqStep>, free: Vec<u64> },
    Shutdown,
}

/// Counters shared with callers (metrics, tests).
#[derive(Debug, Default)]
pub struct GroupStats {
    /// Sequences with KV caches on rank 0.
    pub cached_sequences: AtomicUsize,
    /// Most sequences seen in one step.
    pub max_batch_seen: AtomicUsize,
    /// Steps run.
    pub steps: AtomicUsize,
}

/// A running model group (all ranks in this process, or rank 0 of a TCP group).
pub struct ModelGroup {
    jobs: SyncSender<Job>,
    tokenizer: Arc<GgufTokenizer>,
    stats: Arc<GroupStats>,
    context_length: usize,
    world: usize,
    threads: Vec<std::thread::JoinHandle<()>>,
}

struct Seq {
    id: u64,
    prompt: Vec<u32>,
    cached: usize,
    generated: Vec<u32>,
    sampler: Sampler,
    params: SamplingParams,
    events: UnboundedSender<Event>,
    emitted: usize,
    /// `model.generate`, open for the sequence's life.
    span: tracing::Span,
    submitted: Instant,
}

impl ModelGroup {
    /// Loads `path` split over `world` ranks, each a thread of this process.
    pub fn start_local(path: &Path, world: usize, limits: EngineLimits) -> Result<Self, ModelError> {
        let comms: Vec<Box<dyn Communicator>> =
            LocalGroup::new(world).into_iter().map(|c| Box::new(c) as Box<dyn Communicator>).collect();
        Self::start(path, comms, limits)
    }

    /// Starts rank 0 with `comms[0]` and, in this process, the ranks of `comms[1..]`
    /// (empty when they run elsewhere, e.g. TCP followers in other processes).
    pub fn start(path: &Path, comms: Vec<Box<dyn Communicator>>, limits: EngineLimits) -> Result<Self, ModelError> {
        let mut comms: Vec<Box<dyn Communicator>> =
            comms.into_iter().map(|c| Box::new(Traced(c)) as Box<dyn Communicator>).collect();
        if comms.is_empty() {
            return Err(ModelError::Config("a model group needs at least one rank".into()));
        }
        let tokenizer = Arc::new(load_tokenizer(path)?);
        let world = comms[0].world_size();
        let mut threads = Vec::new();
        let followers: Vec<Box<dyn Communicator>> = comms.drain(1..).collect();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), ModelError>>();
        for comm in followers {
            let path = path.to_path_buf();
            let ready = ready_tx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("rank-{}", comm.rank()))
                    .spawn(move || {
                        run_follower_reporting(&path, comm, ready);
                    })
                    .map_err(|e| ModelError::Io(e.to_string()))?,
            );
        }
        let leader = comms.pop().expect("one communicator left");
        let model = RankModel::load(path, leader.rank(), world)?;
        let context_length = model.config().context_length;
        for _ in 1..threads.len() + 1 {
            ready_rx.recv().map_err(|_| ModelError::Io("a rank thread died while loading".into()))??;
        }
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(limits.max_queued);
        let stats = Arc::new(GroupStats::default());
        let st = stats.clone();
        let tok = tokenizer.clone();
        threads.push(
            std::thread::Builder::new()
                .name("rank-0".into())
                .spawn(move || {
                    Leader {
                        model,
                        comm: leader,
                        tokenizer: tok,
                        limits,
                        stats: st,
                        rx,
                        waiting: VecDeque::new(),
                        running: Vec::new(),
                        free: Vec::new(),
                        next_id: 1,
                    }
                    .run();
                })
                .map_err(|e| ModelError::Io(e.to_string()))?,
        );
        Ok(Self { jobs, tokenizer, stats, context_length, world, threads })
    }

    /// The tokenizer (for prompts and chat templates).
    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    /// The context window.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Ranks in the group.
    pub fn world_size(&self) -> usize {
        self.world
    }

    /// Scheduler counters.
    pub fn stats(&self) -> &GroupStats {
        &self.stats
    }

    /// Queues a generation; its events arrive on the returned receiver. Dropping
    /// the receiver cancels the generation.
    pub fn submit(&self, prompt: Vec<u32>, params: SamplingParams) -> Result<UnboundedReceiver<Event>, ModelError> {
        params.validate().map_err(ModelError::Input)?;
        if prompt.is_empty() {
            return Err(ModelError::Input("the prompt is empty".into()));
        }
        if prompt.len() >= self.context_length {
            return Err(ModelError::Input(format!(
                "the prompt has {} tokens; the context window is {}",
                prompt.len(),
                self.context_length
            )));
        }
        if prompt.len() + params.max_tokens > self.context_length {
            return Err(ModelError::Input(format!(
                "max_tokens {} plus the prompt's {} tokens exceed the context window of {}",
                params.max_tokens,
                prompt.len(),
                self.context_length
            )));
        }
        let (tx, rx) = unbounded_channel();
        match self.jobs.try_send(Job {
            prompt,
            params,
            events: tx,
            span: tracing::Span::current(),
            submitted: Instant::now(),
        }) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(ModelError::Busy("the model queue is full; retry later".into())),
            Err(TrySendError::Disconnected(_)) => Err(ModelError::Io("the model group has stopped".into())),
        }
    }
}

impl Drop for ModelGroup {
    fn drop(&mut self) {
        // Closing the job channel makes rank 0 broadcast Shutdown and exit.
        let (dead, _) = std::sync::mpsc::sync_channel(1);
        drop(std::mem::replace(&mut self.jobs, dead));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Loads the tokenizer of a GGUF file.
pub fn load_tokenizer(path: &Path) -> Result<GgufTokenizer, ModelError> {
    let mut file = std::fs::File::open(path).map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
    let ct = candle_core::quantized::gguf_file::Content::read(&mut file)
        .map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
    GgufTokenizer::from_gguf(&ct)
}

fn run_follower_reporting(
    path: &Path,
    comm: Box<dyn Communicator>,
    ready: std::sync::mpsc::Sender<Result<(), ModelError>>,
) {
    match RankModel::load(path, comm.rank(), comm.world_size()) {
        Ok(model) => {
            let _ = ready.send(Ok(()));
            if let Err(e) = follow(model, comm.as_ref()) {
                warn!("rank stopped: {e}");
            }
        }
        Err(e) => {
            let _ = ready.send(Err(e));
        }
    }
}

/// Runs a non-leading rank (in this process or another) until the leader shuts down.
pub fn run_follower(path: &Path, comm: Box<dyn Communicator>) -> Result<(), ModelError> {
    let comm: Box<dyn Communicator> = Box::new(Traced(comm));
    let model = RankModel::load(path, comm.rank(), comm.world_size())?;
    follow(model, comm.as_ref())
}

fn follow(mut model: RankModel, comm: &dyn Communicator) -> Result<(), ModelError> {
    loop {
        let mut buf = Vec::new();
        comm.broadcast(&mut buf, 0)?;
        let cmd: Command =
            serde_json::from_slice(&buf).map_err(|e| ModelError::Io(format!("bad step command: {e}")))?;
        match cmd {
            Command::Shutdown => return Ok(()),
            Command::Step { steps, free } => {
                for s in free {
                    model.free(s);
                }
                if !steps.is_empty() {
                    let _span = info_span!("model.step", rank = comm.rank(), seqs = steps.len()).entered();
                    model.forward(&steps, comm)?;
                }
            }
        }
    }
}

struct Leader {
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
}

impl Leader {
    fn admit(&mut self, job: Job) {
        let id = self.next_id;
        self.next_id += 1;
        let span = info_span!(parent: &job.span, "model.generate", seq = id, prompt_tokens = job.prompt.len(), completion_tokens = tracing::field::Empty, finish = tracing::field::Empty);
        self.waiting.push_back(Seq {
            span,
            submitted: job.submitted,
            id,
            sampler: Sampler::new(job.params.clone()),
            params: job.params,
            prompt: job.prompt,
            cached: 0,
            generated: Vec::new(),
            events: job.events,
            emitted: 0,
        });
    }

    fn broadcast(&self, cmd: &Command) -> Result<(), ModelError> {
        let mut buf = serde_json::to_vec(cmd).map_err(|e| ModelError::Io(e.to_string()))?;
        self.comm.broadcast(&mut buf, 0)?;
        Ok(())
    }

    fn run(mut self) {
        loop {
            // Admit: block when idle, otherwise take whatever has arrived.
            if self.waiting.is_empty() && self.running.is_empty() {
                match self.rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(job) => self.admit(job),
                    Err(RecvTimeoutError::Timeout) => {
                        if !self.free.is_empty() && self.step().is_err() {
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
            }
        }
        let _ = self.broadcast(&Command::Shutdown);
    }

    /// Builds and runs one step, then samples and streams.
    fn step(&mut self) -> Result<(), ModelError> {
        // Cancelled requests (receiver dropped) leave now.
        for s in self.running.iter().chain(self.waiting.iter()) {
            if s.events.is_closed() {
                self.free.push(s.id);
            }
        }
        self.running.retain(|s| !s.events.is_closed());
        self.waiting.retain(|s| !s.events.is_closed());

        let mut steps = Vec::new();
        let mut budget = self.limits.max_batched_tokens;
        for s in &self.running {
            steps.push(SeqStep {
                seq: s.id,
                tokens: vec![*s.generated.last().expect("running sequences have a token")],
                start: s.cached,
            });
            budget = budget.saturating_sub(1);
        }
        // Prompt chunks of waiting sequences, in arrival order.
        let mut prefilling = 0;
        for s in self.waiting.iter() {
            if budget == 0 || steps.len() >= self.limits.max_batch_size {
                break;
            }
            let take = (s.prompt.len() - s.cached).min(budget);
            steps.push(SeqStep { seq: s.id, tokens: s.prompt[s.cached..s.cached + take].to_vec(), start: s.cached });
            budget -= take;
            prefilling += 1;
        }
        let free = std::mem::take(&mut self.free);
        for id in &free {
            self.model.free(*id);
        }
        self.broadcast(&Command::Step { steps: steps.clone(), free })?;
        if steps.is_empty() {
            self.stats.cached_sequences.store(self.model.cached_sequences(), Ordering::Relaxed);
            self.record_gauges();
            return Ok(());
        }
        let started = Instant::now();
        let logits = {
            let step_span = info_span!(
                "model.step",
                rank = 0,
                seqs = steps.len(),
                decode = self.running.len(),
                prefill = prefilling
            );
            // A step serves many requests: it links to each sequence's span instead of having one parent.
            for s in self.running.iter().chain(self.waiting.iter().take(prefilling)) {
                step_span.follows_from(&s.span);
            }
            // One prefill span per prompt chunk, as a child of its request.
            let _prefill_spans: Vec<tracing::Span> = steps[self.running.len()..]
                .iter()
                .filter_map(|st| {
                    let seq = self.waiting.iter().find(|s| s.id == st.seq)?;
                    Some(info_span!(parent: &seq.span, "model.prefill", tokens = st.tokens.len(), start = st.start))
                })
                .collect();
            let _entered = step_span.enter();
            self.model.forward(&steps, self.comm.as_ref())?
        };
        debug!(seqs = steps.len(), ms = started.elapsed().as_millis() as u64, "step");
        let prompt_tokens: usize = steps[self.running.len()..].iter().map(|s| s.tokens.len()).sum();
        metrics::histogram!("tessera_model_step_duration_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("tessera_model_step_sequences").record(steps.len() as f64);
        metrics::counter!("tessera_model_prompt_tokens_total").increment(prompt_tokens as u64);
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        self.stats.max_batch_seen.fetch_max(steps.len(), Ordering::Relaxed);

        // Advance running sequences, then the prompt chunks.
        let n_running = self.running.len();
        let mut finished = Vec::new();
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
            let history: Vec<u32> = seq.prompt.iter().chain(seq.generated.iter()).copied().collect();
            let token = seq.sampler.sample(&logits[i], &history);
            if seq.generated.is_empty() {
                metrics::histogram!("tessera_model_time_to_first_token_seconds")
                    .record(seq.submitted.elapsed().as_secs_f64());
            }
            seq.generated.push(token);
            metrics::counter!("tessera_model_generated_tokens_total").increment(1);
            if let Some(reason) = advance(seq, token, &self.tokenizer) {
                finished.push((seq.id, reason));
            }
        }
        // Prompts done: waiting → running.
        let mut still_waiting = VecDeque::new();
        for s in self.waiting.drain(..) {
            if s.cached == s.prompt.len() && !s.generated.is_empty() {
                self.running.push(s);
            } else {
                still_waiting.push_back(s);
            }
        }
        self.waiting = still_waiting;
        for (id, reason) in finished {
            if let Some(pos) = self.running.iter().position(|s| s.id == id) {
                let s = self.running.remove(pos);
                s.span.record("completion_tokens", s.generated.len());
                s.span.record("finish", reason.as_str());
                metrics::counter!("tessera_model_requests_total", "finish" => reason.as_str()).increment(1);
                let _ = s.events.send(Event::Done {
                    finish: reason,
                    prompt_tokens: s.prompt.len(),
                    completion_tokens: s.generated.len(),
                });
                self.free.push(id);
            }
        }
        self.stats.cached_sequences.store(self.model.cached_sequences(), Ordering::Relaxed);
        self.record_gauges();
        Ok(())
    }

    /// Queue, batch and KV-cache gauges after a step.
    fn record_gauges(&self) {
        let cached_tokens: usize = self.running.iter().chain(self.waiting.iter()).map(|s| s.cached).sum();
        metrics::gauge!("tessera_model_waiting_requests").set(self.waiting.len() as f64);
        metrics::gauge!("tessera_model_running_requests").set(self.running.len() as f64);
        metrics::gauge!("tessera_model_kv_cache_sequences").set(self.model.cached_sequences() as f64);
        metrics::gauge!("tessera_model_kv_cache_tokens").set(cached_tokens as f64);
    }
}

/// Streams the text that `token` makes final; returns why the sequence ends, if it does.
fn advance(seq: &mut Seq, token: u32, tokenizer: &GgufTokenizer) -> Option<FinishReason> {
    let eog = tokenizer.end_of_generation.contains(&token);
    let visible: Vec<u32> = if eog { seq.generated[..seq.generated.len() - 1].to_vec() } else { seq.generated.clone() };
    let text = tokenizer.decode(&visible).unwrap_or_default();
    // A stop sequence ends the text just before it.
    let stop_at = seq.params.stop.iter().filter_map(|s| text.find(s.as_str())).min();
    let (final_len, reason) = if let Some(at) = stop_at {
        (at, Some(FinishReason::Stop))
    } else if eog {
        (text.len(), Some(FinishReason::Eos))
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
    let _ = seq.events.send(Event::Token { id: token, text: delta });
    reason
}
