//! The embedder actor: one model, many callers, batched by a token budget.
//!
//! Requests are tokenized on arrival and their texts queued. While no forward
//! pass runs, the actor takes texts from the front of the queue until the padded
//! batch would exceed `max_batch_tokens` or `max_batch_size`, and runs the pass on
//! a blocking thread. Texts that arrive meanwhile wait and form the next batch,
//! so concurrent requests share passes without any timer-based waiting.
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokenizers::Encoding;
use tracing::{debug, info_span, warn, Instrument};

use super::{BertEmbedder, EmbedError};

/// Bounds of one forward pass.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Texts per pass.
    pub max_batch_size: usize,
    /// Padded tokens per pass (texts × longest text).
    pub max_batch_tokens: usize,
    /// Texts waiting in the queue before new requests are refused.
    pub max_queued: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self { max_batch_size: 32, max_batch_tokens: 8192, max_queued: 100_000 }
    }
}

/// Messages the embedder understands.
pub enum EmbedderMsg {
    /// Embed these texts; the reply holds one vector per text, in order.
    Embed(Vec<String>, RpcReplyPort<Result<Vec<Vec<f32>>, String>>),
    /// A forward pass finished (sent by the actor to itself).
    BatchDone(Vec<(u64, usize)>, Result<Vec<Vec<f32>>, String>),
}

/// The actor type; its state holds the queue.
pub struct EmbedderActor;

struct Pending {
    results: Vec<Option<Vec<f32>>>,
    remaining: usize,
    reply: RpcReplyPort<Result<Vec<Vec<f32>>, String>>,
}

/// Queue and in-flight bookkeeping.
pub struct EmbedderState {
    model: Arc<BertEmbedder>,
    limits: BatchLimits,
    queue: VecDeque<(u64, usize, Encoding)>,
    pending: HashMap<u64, Pending>,
    next_request: u64,
    busy: bool,
}

impl Actor for EmbedderActor {
    type Msg = EmbedderMsg;
    type State = EmbedderState;
    type Arguments = (Arc<BertEmbedder>, BatchLimits);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (model, limits): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(EmbedderState {
            model,
            limits,
            queue: VecDeque::new(),
            pending: HashMap::new(),
            next_request: 0,
            busy: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            EmbedderMsg::Embed(texts, reply) => {
                let _span = info_span!("embedder.enqueue", texts = texts.len()).entered();
                if texts.is_empty() {
                    let _ = reply.send(Ok(Vec::new()));
                    return Ok(());
                }
                if state.queue.len() + texts.len() > state.limits.max_queued {
                    let _ = reply.send(Err(format!("embedder queue full ({} texts waiting)", state.queue.len())));
                    return Ok(());
                }
                let encodings = match state.model.encode(&texts) {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                        return Ok(());
                    }
                };
                let id = state.next_request;
                state.next_request += 1;
                for (i, enc) in encodings.into_iter().enumerate() {
                    state.queue.push_back((id, i, enc));
                }
                state.pending.insert(id, Pending { results: vec![None; texts.len()], remaining: texts.len(), reply });
            }
            EmbedderMsg::BatchDone(items, result) => {
                state.busy = false;
                match result {
                    Ok(vectors) => {
                        for ((id, i), v) in items.into_iter().zip(vectors) {
                            if let Some(p) = state.pending.get_mut(&id) {
                                p.results[i] = Some(v);
                                p.remaining -= 1;
                                if p.remaining == 0 {
                                    if let Some(p) = state.pending.remove(&id) {
                                        let out = p.results.into_iter().map(Option::unwrap_or_default).collect();
                                        let _ = p.reply.send(Ok(out));
                                    }
                                }
                            }
                        }
                    }
                    Err(message) => {
                        warn!(%message, "embedding batch failed");
                        for (id, _) in items {
                            if let Some(p) = state.pending.remove(&id) {
                                let _ = p.reply.send(Err(message.clone()));
                            }
                            state.queue.retain(|(q, _, _)| *q != id);
                        }
                    }
                }
            }
        }
        start_batch(myself, state);
        Ok(())
    }
}

/// Starts the next forward pass if none is running and texts are waiting.
fn start_batch(myself: ActorRef<EmbedderMsg>, state: &mut EmbedderState) {
    if state.busy || state.queue.is_empty() {
        return;
    }
    let mut batch: Vec<(u64, usize, Encoding)> = Vec::new();
    let mut longest = 0;
    while let Some((_, _, enc)) = state.queue.front() {
        let len = enc.get_ids().len().max(longest);
        if !batch.is_empty()
            && (batch.len() + 1 > state.limits.max_batch_size
                || len * (batch.len() + 1) > state.limits.max_batch_tokens)
        {
            break;
        }
        longest = len;
        if let Some(item) = state.queue.pop_front() {
            batch.push(item);
        }
    }
    state.busy = true;
    let model = state.model.clone();
    let span = info_span!("embedder.batch", size = batch.len(), padded_tokens = longest * batch.len());
    metrics::histogram!("tessera_embedder_batch_size").record(batch.len() as f64);
    metrics::histogram!("tessera_embedder_batch_padded_tokens_size").record((longest * batch.len()) as f64);
    metrics::gauge!("tessera_embedder_queue_depth").set(state.queue.len() as f64);
    let started = std::time::Instant::now();
    tokio::spawn(
        async move {
            let items: Vec<(u64, usize)> = batch.iter().map(|(id, i, _)| (*id, *i)).collect();
            let result = tokio::task::spawn_blocking(move || {
                let encodings: Vec<&Encoding> = batch.iter().map(|(_, _, e)| e).collect();
                model.embed_encodings(&encodings).map_err(|e: EmbedError| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(format!("embedding task failed: {e}")));
            debug!("batch done");
            metrics::histogram!("tessera_embedder_batch_duration_seconds").record(started.elapsed().as_secs_f64());
            metrics::counter!("tessera_embedder_texts_total").increment(items.len() as u64);
            if let Err(e) = myself.cast(EmbedderMsg::BatchDone(items, result)) {
                warn!("embedder gone before its batch finished: {e}");
            }
        }
        .instrument(span),
    );
}

/// A cheap, cloneable handle to a running embedder.
#[derive(Clone)]
pub struct EmbedderHandle {
    actor: ActorRef<EmbedderMsg>,
    model: Arc<BertEmbedder>,
}

impl EmbedderHandle {
    /// Embeds texts through the actor (batched with whatever else is waiting).
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, String> {
        match self.actor.call(|reply| EmbedderMsg::Embed(texts, reply), None).await {
            Ok(ractor::rpc::CallResult::Success(r)) => r,
            Ok(_) => Err("embedder did not answer".into()),
            Err(e) => Err(format!("embedder unavailable: {e}")),
        }
    }

    /// The model behind the actor (for its dimension, name and tokenizer).
    pub fn model(&self) -> &Arc<BertEmbedder> {
        &self.model
    }

    /// Stops the actor.
    pub fn stop(&self) {
        self.actor.stop(None);
    }
}

/// Spawns an embedder actor for `model`.
pub async fn spawn_embedder(
    model: Arc<BertEmbedder>,
    limits: BatchLimits,
) -> Result<EmbedderHandle, ActorProcessingErr> {
    let (actor, _join) = Actor::spawn(None, EmbedderActor, (model.clone(), limits)).await?;
    Ok(EmbedderHandle { actor, model })
}
