//! The internal `Node` gRPC service: how coordinators reach a node's actors.
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tessera_proto::convert;
use tessera_proto::v1 as pb;
use tessera_types::NodeRole;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::model::adapter::files::AdapterFiles;
use crate::model::served::Lookup;
use crate::model::{ChatMessage, Event};
use crate::session::SessionRegistry;

/// The stream type of Generate.
pub type GenerateStream = Pin<Box<dyn Stream<Item = Result<pb::GenerateChunk, Status>> + Send>>;
/// The stream type of FineTune.
pub type FineTuneStream = Pin<Box<dyn Stream<Item = Result<pb::FineTuneProgress, Status>> + Send>>;

mod errors;

pub use errors::{adapter_status, finetune_status, loader_status, model_status, session_status, shard_status};

/// The wire form of an adapter of model `model` on node `node`.
fn adapter_pb(a: &crate::model::adapter::registry::AdapterInfo, model: &str, node: &str) -> pb::AdapterInfo {
    pb::AdapterInfo {
        name: a.name.clone(),
        path: a.dir.display().to_string(),
        model: model.to_string(),
        resident: a.resident,
        rank: a.rank as u32,
        alpha: a.alpha,
        targets: a.targets.iter().map(|t| t.module().to_string()).collect(),
        node: node.to_string(),
    }
}

use crate::convert::{
    filter_from_pb, hit_pb, parse_metadata, sampling_from_pb, shard_ref, stats_pb, writes_from_pb, writes_to_pb,
};
use crate::load::{Document, FileJob, SplitSpec};
use crate::node::Node;
use crate::shard::{ShardError, ShardQuery};

/// Most hits one shard search may ask for (the coordinator's own limit is lower).
const MAX_SHARD_TOP_K: usize = 10_000;

/// Serves [`pb::node_server::Node`] over a [`Node`].
#[derive(Clone)]
pub struct NodeService {
    node: Arc<Node>,
    replication: crate::replication::Replication,
    /// One fine-tuning job at a time: it takes every core it is given.
    finetune: Arc<tokio::sync::Semaphore>,
}

impl NodeService {
    /// Wraps a started node.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node, replication: Default::default(), finetune: Arc::new(tokio::sync::Semaphore::new(1)) }
    }

    /// The tonic server for this service, with message limits raised for ingest.
    pub fn into_server(self, max_message_bytes: usize) -> pb::node_server::NodeServer<Self> {
        pb::node_server::NodeServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }

    fn sessions(&self) -> Result<&SessionRegistry, Status> {
        self.node.sessions.as_ref().ok_or_else(|| Status::failed_precondition("this node has no session role"))
    }

    fn shards(&self) -> Result<&crate::shard::ShardRegistry, Status> {
        self.node.shards.as_ref().ok_or_else(|| Status::failed_precondition("this node has no shard role"))
    }

    /// The served model `name` names ("" / "default": the first): NOT_FOUND
    /// with the served names when it names none, FAILED_PRECONDITION when the
    /// node serves no model at all.
    fn model(&self, name: &str) -> Result<Arc<crate::model::ModelServing>, Status> {
        Ok(self.model_and_adapter(name)?.0)
    }

    /// The served model and adapter `name` names: a model (no adapter) or an
    /// adapter of one; errors as [`NodeService::model`].
    fn model_and_adapter(&self, name: &str) -> Result<(Arc<crate::model::ModelServing>, Option<String>), Status> {
        self.node.models.resolve(name).map_err(|e| match e {
            Lookup::NoModel => Status::failed_precondition(
                "no model is loaded on this node (role 'model' with a GGUF; run scripts/fetch-models.sh)",
            ),
            Lookup::Unknown(served) => {
                let name: String = name.chars().take(200).collect();
                Status::not_found(format!("model '{name}' is not served here (served: {})", served.join(", ")))
            }
        })
    }
}

/// The `Node` RPCs: each checks the role, converts the request, asks the actor.
#[tonic::async_trait]
impl pb::node_server::Node for NodeService {
    type GenerateStream = GenerateStream;
    type FineTuneStream = FineTuneStream;

    #[instrument(skip_all, name = "Node/FineTune", fields(out = %req.get_ref().out))]
    async fn fine_tune(&self, req: Request<pb::FineTuneRequest>) -> Result<Response<FineTuneStream>, Status> {
        let req = req.into_inner();
        let model = self.model(&req.model)?;
        let name = if req.adapter_name.is_empty() {
            std::path::Path::new(&req.out).file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string()
        } else {
            req.adapter_name.clone()
        };
        crate::model::ModelSpec::validate_name(&name)
            .map_err(|e| Status::invalid_argument(format!("adapter name (set adapter_name): {e}")))?;
        if self.node.models.name_taken(&name) && !model.has_adapter(&name) {
            return Err(Status::already_exists(format!("'{name}' already names a model or another model's adapter")));
        }
        let job = crate::convert::finetune_job_from_pb(&req, model.path().to_path_buf(), model.name())?;
        let permit = self
            .finetune
            .clone()
            .try_acquire_owned()
            .map_err(|_| Status::resource_exhausted("a fine-tuning job is already running on this node"))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::FineTuneProgress, Status>>(64);
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            let _permit = permit;
            // A client that goes away stops the job after its current step
            // (with a checkpoint), as Ctrl-C does locally.
            let stop = std::sync::atomic::AtomicBool::new(false);
            let send = |m: pb::FineTuneProgress| {
                if tx.blocking_send(Ok(m)).is_err() {
                    stop.store(true, std::sync::atomic::Ordering::Relaxed);
                }
            };
            let result = job.run(
                &mut |p| send(crate::convert::prepared_pb(p)),
                &mut |p| send(crate::convert::step_pb(p)),
                &stop,
            );
            match result {
                Ok(summary) => {
                    let served = if summary.interrupted {
                        String::new()
                    } else {
                        match model.load_adapter(&name, &summary.out) {
                            Ok(_) => name.clone(),
                            Err(e) => {
                                let _ = tx.blocking_send(Err(adapter_status(e)));
                                return;
                            }
                        }
                    };
                    tracing::info!(adapter = %served, steps = summary.steps, "fine-tuning finished");
                    send(crate::convert::summary_pb(&summary, &served));
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(finetune_status(e)));
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[instrument(skip_all, name = "Node/Generate", fields(max_tokens = req.get_ref().max_tokens, model = %req.get_ref().model))]
    async fn generate(&self, req: Request<pb::GenerateRequest>) -> Result<Response<GenerateStream>, Status> {
        let (model, adapter) = self.model_and_adapter(&req.get_ref().model)?;
        let req = req.into_inner();
        let messages: Vec<ChatMessage> =
            convert::chat_messages(&req.messages).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let ids = model.prompt_ids(&req.prompt, &messages, req.raw).map_err(model_status)?;
        let params = sampling_from_pb(&req);
        let mut events = if params.constraint.is_some() || adapter.is_some() {
            // Compiling a schema (ms; the first request after start may wait
            // for the grammar engine's build, ~1 s on a 262k vocabulary) and
            // loading an adapter that is not resident run on a blocking
            // thread, not on the runtime's worker.
            let span = tracing::Span::current();
            tokio::task::spawn_blocking(move || span.in_scope(|| model.generate_with(ids, params, adapter.as_deref())))
                .await
                .map_err(|e| Status::internal(format!("starting the generation: {e}")))?
        } else {
            model.generate(ids, params)
        }
        .map_err(model_status)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::GenerateChunk, Status>>(64);
        tokio::spawn(async move {
            // Dropping `events` (when the client goes away and `tx` fails) cancels the generation.
            while let Some(event) = events.recv().await {
                let chunk = match event {
                    Event::Token { id, text } => pb::GenerateChunk { text, token_ids: vec![id], ..Default::default() },
                    Event::Done { finish, prompt_tokens, completion_tokens } => pb::GenerateChunk {
                        finish_reason: finish.as_str().to_string(),
                        usage: Some(pb::Usage {
                            prompt_tokens: prompt_tokens as u32,
                            completion_tokens: completion_tokens as u32,
                        }),
                        ..Default::default()
                    },
                    Event::Error(e) => {
                        let _ = tx.send(Err(Status::internal(e))).await;
                        return;
                    }
                };
                let last = !chunk.finish_reason.is_empty();
                if tx.send(Ok(chunk)).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[instrument(skip_all, name = "Node/Info")]
    async fn info(&self, _req: Request<pb::NodeInfoRequest>) -> Result<Response<pb::NodeInfo>, Status> {
        let mut shards = Vec::new();
        if let Some(reg) = &self.node.shards {
            for ((c, s), st) in reg.list().await {
                shards.push(stats_pb(&c, s, st));
            }
        }
        let (embedder, dimension) = match &self.node.embedder {
            Some(e) => (e.model().name().to_string(), e.model().dimension() as u32),
            None => (String::new(), 0),
        };
        let models: Vec<pb::ModelInfo> = self
            .node
            .models
            .all()
            .iter()
            .map(|m| {
                use std::sync::atomic::Ordering::Relaxed;
                let g = m.group();
                pb::ModelInfo {
                    name: m.name().to_string(),
                    tensor_parallel: g.world_size() as u32,
                    context_length: g.context_length() as u32,
                    cached_sequences: g.stats().cached_sequences.load(Relaxed) as u32,
                    steps: g.stats().steps.load(Relaxed) as u64,
                    max_batch_seen: g.stats().max_batch_seen.load(Relaxed) as u32,
                    parent: String::new(),
                }
            })
            .collect();
        // Adapters are listed as models whose parent is their base.
        let mut models = models;
        for m in self.node.models.all() {
            for a in m.adapters() {
                let base = models.iter().find(|b| b.name == m.name()).cloned().unwrap_or_default();
                models.push(pb::ModelInfo { name: a.name, parent: m.name().to_string(), ..base });
            }
        }
        Ok(Response::new(pb::NodeInfo {
            id: self.node.config.id.clone(),
            // Roles actually served: `model` only with a model loaded (not on a rank > 0 of a group).
            roles: convert::role_names(
                &self
                    .node
                    .config
                    .roles
                    .iter()
                    .copied()
                    .filter(|r| *r != NodeRole::Model || !self.node.models.is_empty())
                    .collect::<Vec<_>>(),
            ),
            embedder,
            dimension,
            shards,
            model: models.first().cloned(),
            models,
        }))
    }

    #[instrument(skip_all, name = "Node/LoadAndSplit")]
    async fn load_and_split(
        &self,
        req: Request<pb::LoadAndSplitRequest>,
    ) -> Result<Response<pb::LoadAndSplitResponse>, Status> {
        let loader =
            self.node.loader.as_ref().ok_or_else(|| Status::failed_precondition("this node has no loader role"))?;
        let req = req.into_inner();
        let mut errors = Vec::new();
        let mut files = Vec::new();
        for f in req.files {
            match parse_metadata(&f.metadata_json) {
                Ok(metadata) => files.push(FileJob {
                    doc_id: if f.doc_id.is_empty() { f.name.clone() } else { f.doc_id },
                    name: f.name,
                    content: f.content,
                    metadata,
                }),
                Err(e) => errors.push(pb::IngestError { source: f.name, message: e.message().to_string() }),
            }
        }
        let mut documents = Vec::new();
        for d in req.documents {
            match parse_metadata(&d.metadata_json) {
                Ok(metadata) => {
                    let mut doc = Document::new(d.id.clone(), "text/plain", d.text);
                    doc.source = if d.source.is_empty() { d.id } else { d.source };
                    doc.metadata = metadata;
                    documents.push(doc);
                }
                Err(e) => errors.push(pb::IngestError { source: d.id, message: e.message().to_string() }),
            }
        }
        let spec = SplitSpec {
            kind: req.splitter,
            chunk_size: req.chunk_size as usize,
            chunk_overlap: req.chunk_overlap as usize,
        };
        let outcome = loader.load_and_split(files, documents, spec).await.map_err(loader_status)?;
        errors.extend(outcome.errors.into_iter().map(|(source, message)| pb::IngestError { source, message }));
        let documents = outcome
            .documents
            .into_iter()
            .map(|d| pb::LoadedDocument {
                doc_id: d.document.id,
                source: d.document.source,
                mime: d.document.mime,
                metadata_json: serde_json::Value::Object(d.document.metadata).to_string(),
                chunks: d
                    .chunks
                    .into_iter()
                    .map(|c| pb::Chunk {
                        chunk_id: c.id,
                        doc_id: c.doc_id,
                        text: c.text,
                        metadata_json: serde_json::Value::Object(c.metadata).to_string(),
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::LoadAndSplitResponse { documents, errors }))
    }

    #[instrument(skip_all, name = "Node/EmbedBatch", fields(texts))]
    async fn embed_batch(&self, req: Request<pb::EmbedRequest>) -> Result<Response<pb::EmbedResponse>, Status> {
        let embedder =
            self.node.embedder.as_ref().ok_or_else(|| Status::failed_precondition("this node has no embedder role"))?;
        let texts = req.into_inner().texts;
        tracing::Span::current().record("texts", texts.len());
        let vectors = embedder.embed(texts).await.map_err(Status::unavailable)?;
        Ok(Response::new(pb::EmbedResponse {
            vectors: vectors.into_iter().map(|values| pb::Vector { values }).collect(),
            dimension: embedder.model().dimension() as u32,
            model: embedder.model().name().to_string(),
        }))
    }

    #[instrument(skip_all, name = "Node/OpenShard")]
    async fn open_shard(&self, req: Request<pb::OpenShardRequest>) -> Result<Response<pb::ShardStats>, Status> {
        let req = req.into_inner();
        let r = shard_ref(req.shard)?;
        let quantization = tessera_proto::convert::quantization(&req.quantization)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let stats = self
            .shards()?
            .open_shard(&r.collection, r.shard, req.dimension as usize, quantization)
            .await
            .map_err(shard_status)?;
        Ok(Response::new(stats_pb(&r.collection, r.shard, stats)))
    }

    #[instrument(skip_all, name = "Node/DropShard")]
    async fn drop_shard(&self, req: Request<pb::DropShardRequest>) -> Result<Response<pb::DropShardResponse>, Status> {
        let r = shard_ref(req.into_inner().shard)?;
        let dropped = self.shards()?.drop_shard(&r.collection, r.shard).await.map_err(shard_status)?;
        Ok(Response::new(pb::DropShardResponse { dropped }))
    }

    #[instrument(skip_all, name = "Node/ShardWrite")]
    async fn shard_write(
        &self,
        req: Request<pb::ShardWriteRequest>,
    ) -> Result<Response<pb::ShardWriteResponse>, Status> {
        let req = req.into_inner();
        let r = shard_ref(req.shard)?;
        let followers = req.follower_urls;
        let min_acks = req.min_acks.max(1) as usize;
        if min_acks > followers.len() + 1 {
            return Err(Status::invalid_argument(format!(
                "min_acks {min_acks} is more than the {} replicas given",
                followers.len() + 1
            )));
        }
        let wire = if followers.is_empty() { Vec::new() } else { req.writes.clone() };
        let writes = writes_from_pb(req.writes)?;
        if !self.node.write_fence.allows_writes() {
            return Err(Status::unavailable(format!(
                "node '{}' cannot prove its cluster membership (etcd lease lost); not accepting writes",
                self.node.config.id
            )));
        }
        let shard = self.shards()?.require(&r.collection, r.shard).await.map_err(shard_status)?;
        self.replication.admit_epoch(&r.collection, r.shard, req.epoch);
        let out = shard.write(writes).await.map_err(shard_status)?;
        let acks = 1 + if followers.is_empty() {
            0
        } else {
            self.replication.fan_out(&shard, &r, &followers, out.sequence, wire, req.epoch).await
        };
        if acks < min_acks {
            return Err(Status::unavailable(format!(
                "write {} of {}/{} is durable on {acks} of {} replicas, fewer than the {min_acks} required",
                out.sequence,
                r.collection,
                r.shard,
                followers.len() + 1
            )));
        }
        Ok(Response::new(pb::ShardWriteResponse {
            sequence: out.sequence,
            documents: out.documents,
            chunks: out.chunks,
            acks: acks as u32,
        }))
    }

    #[instrument(skip_all, name = "Node/ShardSnapshot")]
    async fn shard_snapshot(
        &self,
        req: Request<pb::ShardStatsRequest>,
    ) -> Result<Response<pb::ShardSnapshotResponse>, Status> {
        let r = shard_ref(req.into_inner().shard)?;
        let shard = self.shards()?.require(&r.collection, r.shard).await.map_err(shard_status)?;
        let stats = shard.stats().await.map_err(shard_status)?;
        let (sequence, writes) = shard.snapshot().await.map_err(shard_status)?;
        Ok(Response::new(pb::ShardSnapshotResponse {
            sequence,
            writes: writes_to_pb(&writes),
            dimension: stats.dimension,
            quantization: stats.quantization.to_string(),
        }))
    }

    #[instrument(skip_all, name = "Node/ShardTransfer")]
    async fn shard_transfer(&self, req: Request<pb::ShardTransferRequest>) -> Result<Response<pb::ShardStats>, Status> {
        let req = req.into_inner();
        let r = shard_ref(req.shard)?;
        let mut source = self.replication.client(&req.source_url)?;
        let snap = source
            .shard_snapshot(pb::ShardStatsRequest { shard: Some(r.clone()) })
            .await
            .map_err(|s| Status::new(s.code(), format!("snapshot from {}: {}", req.source_url, s.message())))?
            .into_inner();
        let registry = self.shards()?;
        // Checked before anything local is touched: a bad snapshot must not cost the replica.
        let quantization = tessera_proto::convert::quantization(&snap.quantization)
            .map_err(|e| Status::invalid_argument(format!("snapshot from {}: {e}", req.source_url)))?;
        // A stale local copy (this node held the shard before) is replaced, not merged.
        registry.drop_shard(&r.collection, r.shard).await.map_err(shard_status)?;
        registry
            .open_shard(&r.collection, r.shard, snap.dimension as usize, quantization)
            .await
            .map_err(shard_status)?;
        let shard = registry.require(&r.collection, r.shard).await.map_err(shard_status)?;
        let writes = writes_from_pb(snap.writes)?;
        shard.install(writes, snap.sequence).await.map_err(shard_status)?;
        let stats = shard.stats().await.map_err(shard_status)?;
        tracing::info!(collection = %r.collection, shard = r.shard, sequence = stats.sequence, documents = stats.documents, "shard replica installed from a snapshot");
        Ok(Response::new(stats_pb(&r.collection, r.shard, stats)))
    }

    #[instrument(skip_all, name = "Node/ShardReplicate", fields(sequence = req.get_ref().sequence))]
    async fn shard_replicate(
        &self,
        req: Request<pb::ShardReplicateRequest>,
    ) -> Result<Response<pb::ShardReplicateResponse>, Status> {
        let req = req.into_inner();
        let r = shard_ref(req.shard)?;
        if !self.replication.admit_epoch(&r.collection, r.shard, req.epoch) {
            return Err(Status::failed_precondition(format!(
                "write from placement epoch {} refused: a newer primary exists for {}/{}",
                req.epoch, r.collection, r.shard
            )));
        }
        let writes = writes_from_pb(req.writes)?;
        let shard = self.shards()?.require(&r.collection, r.shard).await.map_err(shard_status)?;
        match shard.replicate(writes, req.sequence).await {
            Ok(out) => Ok(Response::new(pb::ShardReplicateResponse { applied: true, sequence: out.sequence })),
            Err(ShardError::OutOfOrder { have, .. }) => {
                Ok(Response::new(pb::ShardReplicateResponse { applied: false, sequence: have }))
            }
            Err(e) => Err(shard_status(e)),
        }
    }

    #[instrument(skip_all, name = "Node/ShardSearch")]
    async fn shard_search(
        &self,
        req: Request<pb::ShardSearchRequest>,
    ) -> Result<Response<pb::ShardSearchResponse>, Status> {
        let req = req.into_inner();
        let r = shard_ref(req.shard)?;
        if let Some(f) = &req.filter {
            tessera_types::limits::check_filter(f.must.iter().map(|c| (c.key.as_str(), c.values_json.as_slice())))
                .map_err(Status::invalid_argument)?;
        }
        let query = ShardQuery {
            vector: req.vector,
            text: req.query,
            top_k: req.top_k as usize,
            filter: filter_from_pb(req.filter),
            mode: convert::search_mode(req.mode).map_err(|e| Status::invalid_argument(e.to_string()))?,
            with_vectors: req.with_vectors,
            settings: convert::search_settings(req.settings),
            exact: req.exact,
            filter_plan: crate::shard::FilterPlan::Auto,
        };
        // Coordinators check these too; a direct caller of the internal service must not
        // be able to make a shard allocate for a billion hits or score with a negative b.
        if query.top_k == 0 || query.top_k > MAX_SHARD_TOP_K {
            return Err(Status::invalid_argument(format!("top_k must be between 1 and {MAX_SHARD_TOP_K}")));
        }
        query.settings.validate().map_err(|e| Status::invalid_argument(e.to_string()))?;
        let shard = self.shards()?.require(&r.collection, r.shard).await.map_err(shard_status)?;
        let res = shard.search(query).await.map_err(shard_status)?;
        Ok(Response::new(pb::ShardSearchResponse {
            vector_hits: res.vector.into_iter().map(hit_pb).collect(),
            bm25_hits: res.bm25.into_iter().map(hit_pb).collect(),
        }))
    }

    #[instrument(skip_all, name = "Node/CountTokens", fields(texts = req.get_ref().texts.len()))]
    async fn count_tokens(
        &self,
        req: Request<pb::CountTokensRequest>,
    ) -> Result<Response<pb::CountTokensResponse>, Status> {
        let model = self.model(&req.get_ref().model)?;
        let req = req.into_inner();
        let (texts, chat) = (req.texts, req.chat);
        let counts = tokio::task::spawn_blocking(move || {
            texts
                .iter()
                .map(|t| {
                    let ids = if chat { model.prompt_ids(t, &[], false) } else { model.group().tokenizer().encode(t) };
                    ids.map(|ids| ids.len() as u32)
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|counts| (counts, model.group().context_length() as u32))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(model_status)?;
        Ok(Response::new(pb::CountTokensResponse { counts: counts.0, context_length: counts.1 }))
    }

    #[instrument(skip_all, name = "Node/SessionLoad")]
    async fn session_load(&self, req: Request<pb::GetSessionRequest>) -> Result<Response<pb::SessionState>, Status> {
        let state = self.sessions()?.load(&req.into_inner().session).await.map_err(session_status)?;
        Ok(Response::new(state.into()))
    }

    #[instrument(skip_all, name = "Node/SessionAppend", fields(messages = req.get_ref().messages.len()))]
    async fn session_append(
        &self,
        req: Request<pb::SessionAppendRequest>,
    ) -> Result<Response<pb::SessionState>, Status> {
        let req = req.into_inner();
        let messages = convert::chat_messages(&req.messages).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let state = self.sessions()?.append(&req.session, messages).await.map_err(session_status)?;
        Ok(Response::new(state.into()))
    }

    #[instrument(skip_all, name = "Node/SessionSummarize")]
    async fn session_summarize(
        &self,
        req: Request<pb::SessionSummaryRequest>,
    ) -> Result<Response<pb::SessionState>, Status> {
        let req = req.into_inner();
        let state =
            self.sessions()?.summarize(&req.session, req.summary, req.summarized_upto).await.map_err(session_status)?;
        Ok(Response::new(state.into()))
    }

    #[instrument(skip_all, name = "Node/SessionList")]
    async fn session_list(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        use tessera_types::limits::{DEFAULT_SESSIONS_PAGE, MAX_SESSIONS_PAGE};
        let req = req.into_inner();
        let size = if req.page_size == 0 { DEFAULT_SESSIONS_PAGE } else { req.page_size };
        if size > MAX_SESSIONS_PAGE {
            return Err(Status::invalid_argument(format!("page_size must be at most {MAX_SESSIONS_PAGE}")));
        }
        let page = self.sessions()?.list_page(&req.prefix, &req.page_token, size as usize).map_err(session_status)?;
        let next_page_token = if page.len() == size as usize {
            page.last().map(|s| s.session.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        let sessions = page.into_iter().map(pb::SessionInfo::from).collect();
        Ok(Response::new(pb::ListSessionsResponse { sessions, next_page_token }))
    }

    #[instrument(skip_all, name = "Node/SessionClear")]
    async fn session_clear(
        &self,
        req: Request<pb::ClearSessionRequest>,
    ) -> Result<Response<pb::ClearSessionResponse>, Status> {
        let messages = self.sessions()?.clear(&req.into_inner().session).await.map_err(session_status)?;
        Ok(Response::new(pb::ClearSessionResponse { cleared: messages > 0, messages }))
    }

    #[instrument(skip_all, name = "Node/LoadAdapter", fields(name = %req.get_ref().name))]
    async fn load_adapter(&self, req: Request<pb::LoadAdapterRequest>) -> Result<Response<pb::AdapterInfo>, Status> {
        let req = req.into_inner();
        crate::model::ModelSpec::validate_name(&req.name).map_err(Status::invalid_argument)?;
        let files = req.files.filter(|f| !f.config_json.is_empty() || !f.weights.is_empty());
        if req.path.is_empty() && files.is_none() {
            return Err(Status::invalid_argument("give the adapter's folder (path)"));
        }
        let model = self.model(&req.model)?;
        if self.node.models.name_taken(&req.name) && !model.has_adapter(&req.name) {
            return Err(Status::already_exists(format!(
                "'{}' already names a model or another model's adapter",
                req.name
            )));
        }
        let name = req.name.clone();
        let served = model.clone();
        let data_dir = self.node.config.data_dir.clone();
        let path = req.path.clone();
        let info = tokio::task::spawn_blocking(move || {
            // A copy sent by the coordinator is written under this node's data dir first.
            let dir = match files {
                Some(f) if path.is_empty() => {
                    let files = AdapterFiles { config_json: f.config_json, weights: f.weights };
                    crate::model::adapter::files::write_copy(&data_dir, &name, &files, |d| served.check_adapter(d))?
                }
                _ => std::path::PathBuf::from(&path),
            };
            served.load_adapter(&name, &dir)
        })
        .await
        .map_err(|e| Status::internal(format!("loading the adapter: {e}")))?
        .map_err(adapter_status)?;
        tracing::info!(adapter = %info.name, model = model.name(), rank = info.rank, "adapter loaded");
        Ok(Response::new(adapter_pb(&info, model.name(), &self.node.config.id)))
    }

    #[instrument(skip_all, name = "Node/UnloadAdapter", fields(name = %req.get_ref().name))]
    async fn unload_adapter(
        &self,
        req: Request<pb::UnloadAdapterRequest>,
    ) -> Result<Response<pb::UnloadAdapterResponse>, Status> {
        let name = req.into_inner().name;
        let unloaded = self.node.models.all().iter().filter(|m| m.unload_adapter(&name)).count();
        if unloaded == 0 {
            let name: String = name.chars().take(200).collect();
            return Err(Status::not_found(format!("no adapter '{name}' on this node")));
        }
        Ok(Response::new(pb::UnloadAdapterResponse { nodes: 1 }))
    }

    #[instrument(skip_all, name = "Node/ListAdapters")]
    async fn list_adapters(
        &self,
        _req: Request<pb::ListAdaptersRequest>,
    ) -> Result<Response<pb::ListAdaptersResponse>, Status> {
        let adapters = self
            .node
            .models
            .all()
            .iter()
            .flat_map(|m| m.adapters().into_iter().map(|a| adapter_pb(&a, m.name(), &self.node.config.id)))
            .collect();
        Ok(Response::new(pb::ListAdaptersResponse { adapters }))
    }

    #[instrument(skip_all, name = "Node/ReadAdapter", fields(name = %req.get_ref().name))]
    async fn read_adapter(&self, req: Request<pb::ReadAdapterRequest>) -> Result<Response<pb::AdapterFiles>, Status> {
        let name = req.into_inner().name;
        let found = self
            .node
            .models
            .all()
            .iter()
            .find_map(|m| m.adapters().into_iter().find(|a| a.name == name).map(|a| (a.dir, m.name().to_string())));
        // Not loaded (unloaded since): the copy this node keeps in its data dir, if any.
        let kept = || {
            let dir = crate::model::adapter::files::copy_dir(&self.node.config.data_dir, &name)?;
            dir.is_dir().then_some((dir, String::new()))
        };
        let Some((dir, model)) = found.or_else(kept) else {
            let name: String = name.chars().take(200).collect();
            return Err(Status::not_found(format!("this node has no adapter '{name}'")));
        };
        let files = tokio::task::spawn_blocking(move || crate::model::adapter::files::read_folder(&dir))
            .await
            .map_err(|e| Status::internal(format!("reading the adapter: {e}")))?
            .map_err(adapter_status)?;
        Ok(Response::new(pb::AdapterFiles { config_json: files.config_json, weights: files.weights, model }))
    }

    #[instrument(skip_all, name = "Node/GetShardStats")]
    async fn get_shard_stats(&self, req: Request<pb::ShardStatsRequest>) -> Result<Response<pb::ShardStats>, Status> {
        let r = shard_ref(req.into_inner().shard)?;
        let shard = self.shards()?.require(&r.collection, r.shard).await.map_err(shard_status)?;
        let stats = shard.stats().await.map_err(shard_status)?;
        Ok(Response::new(stats_pb(&r.collection, r.shard, stats)))
    }
}
