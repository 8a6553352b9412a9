//! The shard actor: one per hosted shard replica, applying writes in order.
//!
//! All access to a [`Shard`] goes through its actor, so writes are applied in
//! the order they arrive and searches never see a half-applied write. A write
//! is answered only after sled has flushed it to disk.
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::info_span;

use super::{DocWrite, Shard, ShardError, ShardQuery, ShardResults, ShardStats, WriteOutcome};

/// Logged writes with their sequence numbers, oldest first.
pub type LogEntries = Vec<(u64, Vec<DocWrite>)>;

/// Messages a shard actor understands.
pub enum ShardMsg {
    /// Apply writes; answered once durable.
    Write(Vec<DocWrite>, RpcReplyPort<Result<WriteOutcome, ShardError>>),
    /// Apply a write the primary applied at a sequence; answered once durable.
    Replicate(Vec<DocWrite>, u64, RpcReplyPort<Result<WriteOutcome, ShardError>>),
    /// All documents and the sequence they reflect (shard transfer source).
    Snapshot(RpcReplyPort<Result<(u64, Vec<DocWrite>), ShardError>>),
    /// Install a snapshot into an empty replica (shard transfer target); answered once durable.
    Install(Vec<DocWrite>, u64, RpcReplyPort<Result<WriteOutcome, ShardError>>),
    /// Logged writes after a sequence (for a replica catching up).
    LogSince(u64, RpcReplyPort<Result<LogEntries, ShardError>>),
    /// Search.
    Search(Box<ShardQuery>, RpcReplyPort<Result<ShardResults, ShardError>>),
    /// Counters.
    Stats(RpcReplyPort<ShardStats>),
    /// Flush and save the derived index; the actor stops afterwards.
    Close(RpcReplyPort<Result<(), ShardError>>),
}

/// The actor type.
pub struct ShardActor;

/// A shard and the metric labels of its replica.
pub struct ShardState {
    shard: Shard,
    collection: String,
    number: String,
}

impl ShardState {
    /// Size gauges: chunks, documents, applied sequence.
    fn record_sizes(&self) {
        let s = self.shard.stats();
        let labels = [("collection", self.collection.clone()), ("shard", self.number.clone())];
        metrics::gauge!("tessera_shard_chunks", &labels).set(s.chunks as f64);
        metrics::gauge!("tessera_shard_documents", &labels).set(s.documents as f64);
        metrics::gauge!("tessera_shard_sequence", &labels).set(s.sequence as f64);
    }
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = (Shard, String);

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (shard, name): (Shard, String),
    ) -> Result<ShardState, ActorProcessingErr> {
        let (collection, number) = name.rsplit_once('/').unwrap_or((name.as_str(), "0"));
        let state = ShardState { shard, collection: collection.to_string(), number: number.to_string() };
        state.record_sizes();
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        let started = std::time::Instant::now();
        let shard = &mut state.shard;
        match message {
            ShardMsg::Write(writes, reply) => {
                let span = info_span!("shard.write", docs = writes.len());
                let result = span.in_scope(|| shard.apply(writes));
                let result = match result {
                    Ok(outcome) => shard.store().flush().await.map(|_| outcome),
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
                metrics::histogram!("tessera_shard_write_duration_seconds").record(started.elapsed().as_secs_f64());
                state.record_sizes();
            }
            ShardMsg::Replicate(writes, sequence, reply) => {
                let span = info_span!("shard.replicate", docs = writes.len(), sequence);
                let result = span.in_scope(|| shard.apply_replicated(writes, sequence));
                let result = match result {
                    Ok(outcome) => shard.store().flush().await.map(|_| outcome),
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
                state.record_sizes();
            }
            ShardMsg::Snapshot(reply) => {
                let _span = info_span!("shard.snapshot").entered();
                let _ = reply.send(shard.snapshot());
            }
            ShardMsg::Install(writes, sequence, reply) => {
                let span = info_span!("shard.install", docs = writes.len(), sequence);
                let result = span.in_scope(|| shard.install(writes, sequence));
                let result = match result {
                    Ok(outcome) => shard.store().flush().await.map(|_| outcome),
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
                state.record_sizes();
            }
            ShardMsg::LogSince(after, reply) => {
                let _ = reply.send(shard.log_since(after));
            }
            ShardMsg::Search(query, reply) => {
                let _span = info_span!("shard.search", top_k = query.top_k).entered();
                let _ = reply.send(shard.search(&query));
                metrics::histogram!("tessera_shard_search_duration_seconds").record(started.elapsed().as_secs_f64());
            }
            ShardMsg::Stats(reply) => {
                let _ = reply.send(shard.stats());
            }
            ShardMsg::Close(reply) => {
                let _ = reply.send(shard.close());
                myself.stop(None);
            }
        }
        Ok(())
    }
}

/// A cloneable handle to a running shard actor.
#[derive(Clone)]
pub struct ShardHandle {
    actor: ActorRef<ShardMsg>,
    name: String,
}

fn unavailable(name: &str, e: impl std::fmt::Display) -> ShardError {
    ShardError::Unavailable(format!("{name}: {e}"))
}

impl ShardHandle {
    /// Spawns an actor for an opened shard.
    pub async fn spawn(name: String, shard: Shard) -> Result<Self, ShardError> {
        let (actor, _) =
            Actor::spawn(None, ShardActor, (shard, name.clone())).await.map_err(|e| unavailable(&name, e))?;
        Ok(Self { actor, name })
    }

    async fn call<T: Send + 'static>(&self, build: impl FnOnce(RpcReplyPort<T>) -> ShardMsg) -> Result<T, ShardError> {
        match self.actor.call(build, None).await {
            Ok(ractor::rpc::CallResult::Success(v)) => Ok(v),
            Ok(_) => Err(unavailable(&self.name, "no answer")),
            Err(e) => Err(unavailable(&self.name, e)),
        }
    }

    /// Applies writes; returns once they are durable.
    pub async fn write(&self, writes: Vec<DocWrite>) -> Result<WriteOutcome, ShardError> {
        self.call(|r| ShardMsg::Write(writes, r)).await?
    }

    /// Applies a replicated write at `sequence` (the next one only); returns once durable.
    pub async fn replicate(&self, writes: Vec<DocWrite>, sequence: u64) -> Result<WriteOutcome, ShardError> {
        self.call(|r| ShardMsg::Replicate(writes, sequence, r)).await?
    }

    /// All documents and their sequence.
    pub async fn snapshot(&self) -> Result<(u64, Vec<DocWrite>), ShardError> {
        self.call(ShardMsg::Snapshot).await?
    }

    /// Installs a snapshot into this empty replica.
    pub async fn install(&self, writes: Vec<DocWrite>, sequence: u64) -> Result<WriteOutcome, ShardError> {
        self.call(|r| ShardMsg::Install(writes, sequence, r)).await?
    }

    /// The logged writes after `after`.
    pub async fn log_since(&self, after: u64) -> Result<LogEntries, ShardError> {
        self.call(|r| ShardMsg::LogSince(after, r)).await?
    }

    /// Searches.
    pub async fn search(&self, query: ShardQuery) -> Result<ShardResults, ShardError> {
        self.call(|r| ShardMsg::Search(Box::new(query), r)).await?
    }

    /// Counters.
    pub async fn stats(&self) -> Result<ShardStats, ShardError> {
        self.call(ShardMsg::Stats).await
    }

    /// Flushes, saves the ANN index and stops the actor.
    pub async fn close(&self) -> Result<(), ShardError> {
        self.call(ShardMsg::Close).await?
    }
}
