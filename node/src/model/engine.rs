//! The model group: one OS thread per tensor-parallel rank.
//!
//! Every rank runs on its own thread (a `ModelRankActor` in DESIGN.md's terms:
//! it owns its weight shard and its part of every KV cache, and handles one
//! command at a time). Rank 0 runs the [`Scheduler`](super::scheduler), which
//! admits requests from the bounded queue this group's [`ModelGroup::submit`]
//! feeds and broadcasts each step; the other ranks follow the broadcast
//! commands ([`run_follower`]).
use std::path::Path;
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tracing::{info_span, warn};

use super::adapter::LoraAdapter;
use super::comm::{Communicator, LocalGroup, Traced};
use super::constraint::{ConstraintCompiler, ConstraintError, Guide};
use super::decoder::{RankModel, SeqStep};
use super::prefix_cache::PrefixOps;
use super::sampler::SamplingParams;
use super::scheduler::Scheduler;
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
    /// Bytes of KV cache (rank 0's share) kept for prompt prefixes that later
    /// requests reuse (`prefix_cache`); 0 turns reuse off.
    pub prefix_cache_bytes: usize,
}

/// The default prefix budget: 256 MiB, about 11,000 positions of SmolLM2's
/// cache (30 layers, 3 k/v heads of 64, f16 keys and values).
pub const PREFIX_CACHE_BYTES: usize = 256 << 20;

impl Default for EngineLimits {
    fn default() -> Self {
        Self { max_batch_size: 16, max_batched_tokens: 512, max_queued: 64, prefix_cache_bytes: PREFIX_CACHE_BYTES }
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
pub(super) struct Job {
    pub(super) prompt: Vec<u32>,
    pub(super) params: SamplingParams,
    /// The compiled constraint, when the request has one.
    pub(super) guide: Option<Guide>,
    pub(super) events: UnboundedSender<Event>,
    /// The adapter it runs with (an id of [`ModelGroup::load_adapter`]).
    pub(super) adapter: Option<u32>,
    /// The submitting request's span: the sequence's spans are its children.
    pub(super) span: tracing::Span,
    pub(super) submitted: Instant,
}

/// What rank 0 broadcasts before each step.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Command {
    Step {
        steps: Vec<SeqStep>,
        free: Vec<u64>,
        /// Applied before `free` and the step (see `RankModel::apply_prefix_ops`).
        #[serde(default)]
        prefix: PrefixOps,
        /// Applied first of all: adapters loaded since the last step (so a
        /// sequence that uses one in this step finds it on every rank) and
        /// adapters no sequence uses any more.
        #[serde(default)]
        adapters: AdapterOps,
    },
    Shutdown,
}

/// Adapter loads and unloads travelling with a step command.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct AdapterOps {
    pub(super) load: Vec<(u32, LoraAdapter)>,
    pub(super) unload: Vec<u32>,
}

impl AdapterOps {
    pub(super) fn is_empty(&self) -> bool {
        self.load.is_empty() && self.unload.is_empty()
    }

    /// Applies them to one rank's model: loads, then unloads.
    pub(super) fn apply(&self, model: &mut RankModel) -> Result<(), ModelError> {
        for (id, adapter) in &self.load {
            model.load_adapter(*id, adapter)?;
        }
        for id in &self.unload {
            model.unload_adapter(*id);
        }
        Ok(())
    }
}

/// Requests to rank 0 that are not generations (they do not wait in the
/// bounded job queue behind generations).
pub(super) enum Control {
    /// Load an adapter as `id`; the reply says whether rank 0 accepted it.
    LoadAdapter { id: u32, adapter: Box<LoraAdapter>, reply: std::sync::mpsc::Sender<Result<(), ModelError>> },
    /// Unload adapter `id` once no sequence uses it.
    UnloadAdapter { id: u32 },
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
    /// Bytes of weights rank 0 streams per decode step (its matrices and the output head).
    pub weight_bytes: AtomicUsize,
    /// Requests that started from a kept prompt prefix (`prefix_cache`).
    pub prefix_hits: AtomicUsize,
    /// Prompt tokens those requests did not prefill.
    pub prefix_tokens_reused: AtomicUsize,
}

/// A running model group (all ranks in this process, or rank 0 of a TCP group).
pub struct ModelGroup {
    jobs: SyncSender<Job>,
    control: std::sync::mpsc::Sender<Control>,
    next_adapter: std::sync::atomic::AtomicU32,
    tokenizer: Arc<GgufTokenizer>,
    constraints: Arc<ConstraintCompiler>,
    stats: Arc<GroupStats>,
    context_length: usize,
    config: super::decoder::DecoderConfig,
    world: usize,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ModelGroup {
    /// Loads `path` split over `world` ranks, each a thread of this process;
    /// its metrics are labelled with the file stem.
    pub fn start_local(path: &Path, world: usize, limits: EngineLimits) -> Result<Self, ModelError> {
        Self::start(path, local_comms(world), limits)
    }

    /// Starts rank 0 with `comms[0]` and, in this process, the ranks of `comms[1..]`
    /// (empty when they run elsewhere, e.g. TCP followers in other processes);
    /// its metrics are labelled with the file stem.
    pub fn start(path: &Path, comms: Vec<Box<dyn Communicator>>, limits: EngineLimits) -> Result<Self, ModelError> {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_string();
        Self::start_named(&stem, path, comms, limits)
    }

    /// [`ModelGroup::start`] for the model served as `name`: the `model` label
    /// of its metrics, so several groups in one process keep their own series.
    pub fn start_named(
        name: &str,
        path: &Path,
        comms: Vec<Box<dyn Communicator>>,
        limits: EngineLimits,
    ) -> Result<Self, ModelError> {
        let mut comms: Vec<Box<dyn Communicator>> =
            comms.into_iter().map(|c| Box::new(Traced(c)) as Box<dyn Communicator>).collect();
        if comms.is_empty() {
            return Err(ModelError::Config("a model group needs at least one rank".into()));
        }
        let tokenizer = Arc::new(load_tokenizer(path)?);
        let world = comms[0].world_size();
        let threads_per_rank = rank_threads(comms.len());
        let mut threads = Vec::new();
        let followers: Vec<Box<dyn Communicator>> = comms.drain(1..).collect();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), ModelError>>();
        for comm in followers {
            let path = path.to_path_buf();
            let ready = ready_tx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("rank-{}", comm.rank()))
                    .spawn(move || match rank_pool(threads_per_rank) {
                        Ok(pool) => pool.install(|| run_follower_reporting(&path, comm, ready)),
                        Err(e) => {
                            let _ = ready.send(Err(e));
                        }
                    })
                    .map_err(|e| ModelError::Io(e.to_string()))?,
            );
        }
        let leader = comms.pop().expect("one communicator left");
        let model = RankModel::load(path, leader.rank(), world)?;
        let context_length = model.config().context_length;
        let config = model.config().clone();
        for _ in 1..threads.len() + 1 {
            ready_rx.recv().map_err(|_| ModelError::Io("a rank thread died while loading".into()))??;
        }
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(limits.max_queued);
        let (control, control_rx) = std::sync::mpsc::channel::<Control>();
        let stats = Arc::new(GroupStats::default());
        let weight_bytes = model.weight_bytes();
        stats.weight_bytes.store(weight_bytes, std::sync::atomic::Ordering::Relaxed);
        super::metrics::register_at_zero(name, weight_bytes);
        let label = name.to_string();
        let st = stats.clone();
        let tok = tokenizer.clone();
        threads.push(
            std::thread::Builder::new()
                .name("rank-0".into())
                .spawn(move || {
                    let scheduler = Scheduler::new(model, leader, tok, limits, st, (rx, control_rx), label);
                    match rank_pool(threads_per_rank) {
                        Ok(pool) => pool.install(|| scheduler.run()),
                        Err(e) => warn!("rank 0 cannot start its thread pool: {e}"),
                    }
                })
                .map_err(|e| ModelError::Io(e.to_string()))?,
        );
        let constraints = Arc::new(ConstraintCompiler::new(tokenizer.clone(), name));
        // The grammar engine's walk over the vocabulary (0.16 s for SmolLM2's
        // 49k tokens, 1.2 s for Gemma's 262k) happens now, off the request
        // path, not inside the first constrained request's gRPC handler.
        let warm = constraints.clone();
        let _ = std::thread::Builder::new().name("constraint-engine".into()).spawn(move || warm.prepare());
        Ok(Self {
            jobs,
            control,
            next_adapter: std::sync::atomic::AtomicU32::new(1),
            tokenizer,
            constraints,
            stats,
            context_length,
            config,
            world,
            threads,
        })
    }

    /// The tokenizer (for prompts and chat templates).
    pub fn tokenizer(&self) -> &GgufTokenizer {
        &self.tokenizer
    }

    /// The context window.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The model's shape (what an adapter must fit).
    pub fn config(&self) -> &super::decoder::DecoderConfig {
        &self.config
    }

    /// Ranks in the group.
    pub fn world_size(&self) -> usize {
        self.world
    }

    /// Scheduler counters.
    pub fn stats(&self) -> &GroupStats {
        &self.stats
    }

    /// The group's constraint compiler (its cache of compiled grammars).
    pub fn constraints(&self) -> &ConstraintCompiler {
        &self.constraints
    }

    /// Queues a generation; its events arrive on the returned receiver. Dropping
    /// the receiver cancels the generation.
    pub fn submit(&self, prompt: Vec<u32>, params: SamplingParams) -> Result<UnboundedReceiver<Event>, ModelError> {
        self.submit_with_adapter(prompt, params, None)
    }

    /// Loads `adapter` on every rank; its id is what
    /// [`ModelGroup::submit_with_adapter`] takes. Blocks until rank 0 has
    /// checked it (between two steps); the other ranks load it with the next
    /// step command, before any sequence can use it.
    pub fn load_adapter(&self, adapter: LoraAdapter) -> Result<u32, ModelError> {
        let id = self.next_adapter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (reply, answer) = std::sync::mpsc::channel();
        self.control
            .send(Control::LoadAdapter { id, adapter: Box::new(adapter), reply })
            .map_err(|_| ModelError::Io("the model group has stopped".into()))?;
        answer.recv().map_err(|_| ModelError::Io("the model group has stopped".into()))??;
        Ok(id)
    }

    /// Unloads adapter `id` once the sequences that use it have ended.
    pub fn unload_adapter(&self, id: u32) {
        let _ = self.control.send(Control::UnloadAdapter { id });
    }

    /// [`ModelGroup::submit`] running with adapter `adapter` (None: the base).
    pub fn submit_with_adapter(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
        adapter: Option<u32>,
    ) -> Result<UnboundedReceiver<Event>, ModelError> {
        params.validate().map_err(|e| ModelError::Input(e.to_string()))?;
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
        // Compiled here, on the submitting thread, so a bad schema is refused
        // before the request queues and rank 0 never waits on a compile.
        let guide = match &params.constraint {
            Some(c) => Some(self.constraints.guide(c).map_err(|e| match e {
                ConstraintError::Invalid(m) => ModelError::Input(m),
                ConstraintError::Failed(m) => ModelError::Unsupported(format!("constrained decoding: {m}")),
            })?),
            None => None,
        };
        let (tx, rx) = unbounded_channel();
        match self.jobs.try_send(Job {
            prompt,
            params,
            guide,
            events: tx,
            adapter,
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

/// Communicators of a `world`-rank group of threads in this process.
pub fn local_comms(world: usize) -> Vec<Box<dyn Communicator>> {
    LocalGroup::new(world).into_iter().map(|c| Box::new(c) as Box<dyn Communicator>).collect()
}

/// Tells candle's CPU thread pool (which runs the matmuls of weight types
/// without a kernel here, e.g. Q4_K and Q6_K) to park as soon as a matmul
/// ends instead of spinning 25 000 pauses first: that spinning holds a core
/// the rank's own pool needs for the next kernel (measured on Gemma 3 270M,
/// 2 cores: decode 28.6 → 31.9 tokens/s). A `CANDLE_BARRIER_POOL_SPIN_LIMIT`
/// already in the environment wins. Call it at the start of `main`, before
/// other threads exist (it sets an environment variable).
pub fn park_candle_threads_between_matmuls() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
    }
}

/// Threads for each of `ranks` ranks running in this process: the cores
/// divided between them (at least one each).
fn rank_threads(ranks: usize) -> usize {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    (cores / ranks.max(1)).max(1)
}

/// A rank's own thread pool. The rank's loop runs inside it (`install`), on
/// one of its workers, so every matmul's parallel work starts from a worker of
/// the same pool: no hand-off from an outside thread into a pool and back per
/// kernel, and ranks in one process do not compete for one global pool. (The
/// spawning thread only waits; rayon's `use_current_thread` would save that
/// thread but leaks a local pool's registry, one per model group started.)
fn rank_pool(threads: usize) -> Result<rayon::ThreadPool, ModelError> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("rank-worker-{i}"))
        .build()
        .map_err(|e| ModelError::Config(format!("thread pool: {e}")))
}

/// Runs a non-leading rank (in this process or another) until the leader shuts down.
pub fn run_follower(path: &Path, comm: Box<dyn Communicator>) -> Result<(), ModelError> {
    rank_pool(rank_threads(1))?.install(|| run_follower_in_pool(path, comm))
}

fn run_follower_in_pool(path: &Path, comm: Box<dyn Communicator>) -> Result<(), ModelError> {
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
            Command::Step { steps, free, prefix, adapters } => {
                adapters.apply(&mut model)?;
                model.apply_prefix_ops(&prefix)?;
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
