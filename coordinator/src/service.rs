//! The public `Tessera` gRPC service.
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::future::try_join_all;
use futures::stream::{self, StreamExt, TryStreamExt};
use tessera_proto::v1 as pb;
use tokio::sync::Mutex;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use tessera_node::memory::{validate_session_id, MemoryKind, SessionState, StoredMessage};

use crate::catalog::{shard_for, validate_name, Catalog, CatalogError, CollectionMeta, ShardPlacement};
use crate::chain::PromptLibrary;
use crate::merge::{merge_top_k, mmr, reciprocal_rank_fusion, Scored};
use crate::nodes::{NodeRef, NodeSet};

/// Limits and defaults of the public API.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Largest `top_k` (and MMR `fetch_k`) a search may ask for.
    pub max_top_k: u32,
    /// Largest query, in bytes.
    pub max_query_bytes: usize,
    /// Shards of a collection created without a shard count (also on first ingest).
    pub default_shards: u32,
    /// Most shards a collection may have.
    pub max_shards: u32,
    /// Texts per embedding RPC during ingest.
    pub embed_batch: usize,
    /// Embedding RPCs in flight per ingest.
    pub embed_parallelism: usize,
    /// Texts one Embed request may carry.
    pub max_embed_texts: usize,
    /// Largest prompt (or sum of chat message contents) of Generate, in bytes.
    pub max_prompt_bytes: usize,
    /// Largest question of Ask, in bytes.
    pub max_question_bytes: usize,
    /// Chunks retrieved for Ask when the request does not say.
    pub ask_top_k: u32,
    /// Largest `max_tokens` of an Ask answer.
    pub max_answer_tokens: u32,
    /// Memory kind of sessions when the request does not say.
    pub default_memory: MemoryKind,
    /// History messages shown to the question-condensing step.
    pub condense_history_messages: usize,
    /// Length of a session summary, in tokens.
    pub summary_max_tokens: u32,
    /// Replicas that must hold a write before it is acknowledged.
    pub write_acks: WriteAcks,
    /// Deadline of one shard search or stats call to a node (then the next replica is tried).
    pub read_deadline: std::time::Duration,
    /// Deadline of one shard write (replication to followers included).
    pub write_deadline: std::time::Duration,
}

/// A request that the node must answer within `deadline` (gRPC `grpc-timeout`).
fn with_deadline<T>(message: T, deadline: std::time::Duration) -> Request<T> {
    let mut r = Request::new(message);
    r.set_timeout(deadline);
    r
}

/// How many replicas of a shard must hold a write before the client is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteAcks {
    /// More than half of the shard's replicas (the default).
    #[default]
    Majority,
    /// Every replica.
    All,
    /// The primary alone.
    One,
}

impl WriteAcks {
    /// Parses "majority", "all" or "one".
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "majority" => Ok(Self::Majority),
            "all" => Ok(Self::All),
            "one" => Ok(Self::One),
            other => Err(format!("write acks must be majority, all or one, not '{other}'")),
        }
    }

    /// Acknowledgements needed with `replicas` replicas.
    pub fn needed(self, replicas: usize) -> usize {
        match self {
            Self::Majority => replicas / 2 + 1,
            Self::All => replicas.max(1),
            Self::One => 1,
        }
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            max_top_k: 1000,
            max_query_bytes: 16 * 1024,
            default_shards: 2,
            max_shards: 256,
            embed_batch: 32,
            embed_parallelism: 4,
            max_embed_texts: 1024,
            max_prompt_bytes: 256 * 1024,
            max_question_bytes: 8 * 1024,
            ask_top_k: 4,
            max_answer_tokens: 4096,
            default_memory: MemoryKind::Window { turns: 4 },
            condense_history_messages: 4,
            summary_max_tokens: 160,
            write_acks: WriteAcks::Majority,
            read_deadline: std::time::Duration::from_secs(10),
            write_deadline: std::time::Duration::from_secs(30),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct Coordinator {
    pub(crate) config: CoordinatorConfig,
    catalog: Catalog,
    nodes: NodeSet,
    create_lock: Arc<Mutex<()>>,
    pub(crate) prompts: Arc<PromptLibrary>,
}

fn catalog_status(e: CatalogError) -> Status {
    Status::internal(e.to_string())
}

fn node_status(node: &NodeRef, s: Status) -> Status {
    Status::new(s.code(), format!("node {}: {}", node.id, s.message()))
}

/// Spreads a new collection's shards over the shard nodes: shard `s` on the node
/// `(h + s + k) mod n` for replica `k`, where `h` is the name's hash, so that
/// collections with few shards do not all start on the same node.
fn place(name: &str, shards: u32, replication: u32, nodes: &[NodeRef]) -> Vec<ShardPlacement> {
    let n = nodes.len().max(1);
    let start = shard_for(name, n as u32) as usize;
    (0..shards as usize)
        .map(|s| {
            let replicas: Vec<String> =
                (0..replication as usize).map(|k| nodes[(start + s + k) % n].id.clone()).collect();
            ShardPlacement { primary: replicas[0].clone(), replicas, epoch: 1 }
        })
        .collect()
}

fn session_from_pb(s: pb::SessionState) -> SessionState {
    SessionState {
        session: s.session,
        messages: s
            .messages
            .into_iter()
            .map(|m| StoredMessage { seq: m.seq, role: m.role, content: m.content, unix_ms: m.unix_ms })
            .collect(),
        summary: s.summary,
        summarized_upto: s.summarized_upto,
    }
}

fn to_scored(h: pb::ShardHit) -> Option<Scored> {
    let hit = h.hit?;
    Some(Scored {
        chunk_id: hit.chunk_id,
        doc_id: hit.doc_id,
        score: hit.score,
        text: hit.text,
        metadata_json: hit.metadata_json,
        vector: h.vector,
    })
}

fn info_pb(meta: &CollectionMeta, chunks: u64, documents: u64) -> pb::CollectionInfo {
    pb::CollectionInfo {
        name: meta.name.clone(),
        dimension: meta.dimension,
        metric: meta.metric.clone(),
        shards: meta.shards,
        replication: meta.replication,
        embedder: meta.embedder.clone(),
        chunks,
        documents,
    }
}

impl Coordinator {
    /// A coordinator over `nodes`, keeping its catalog in `catalog`.
    pub fn new(config: CoordinatorConfig, catalog: Catalog, nodes: NodeSet) -> Self {
        Self::with_prompts(config, catalog, nodes, PromptLibrary::with_defaults())
    }

    /// As [`Coordinator::new`], with a template library (defaults plus user templates).
    pub fn with_prompts(config: CoordinatorConfig, catalog: Catalog, nodes: NodeSet, prompts: PromptLibrary) -> Self {
        Self { config, catalog, nodes, create_lock: Arc::default(), prompts: Arc::new(prompts) }
    }

    /// The nodes this coordinator routes to.
    pub fn nodes(&self) -> &NodeSet {
        &self.nodes
    }

    /// The collection catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Limits and defaults in force.
    pub fn config(&self) -> &CoordinatorConfig {
        &self.config
    }

    /// The template library.
    pub fn prompts(&self) -> &PromptLibrary {
        &self.prompts
    }

    /// Information on the node that serves the model (name, context length).
    pub async fn model_info(&self) -> Result<Option<pb::ModelInfo>, Status> {
        let node = self.role_node("model")?;
        let info = node.client.clone().info(pb::NodeInfoRequest {}).await.map_err(|s| node_status(&node, s))?;
        Ok(info.into_inner().model)
    }

    /// The embedding model's name ("" when no node embeds).
    pub async fn embedder_name(&self) -> Result<Option<String>, Status> {
        let node = self.role_node("embedder")?;
        let info = node.client.clone().info(pb::NodeInfoRequest {}).await.map_err(|s| node_status(&node, s))?;
        let name = info.into_inner().embedder;
        Ok((!name.is_empty()).then_some(name))
    }

    /// Validates a generation request and starts it on the model node.
    pub async fn generate_checked(
        &self,
        req: pb::GenerateRequest,
    ) -> Result<tonic::Streaming<pb::GenerateChunk>, Status> {
        if req.prompt.is_empty() && req.messages.is_empty() {
            return Err(Status::invalid_argument("give a prompt or chat messages"));
        }
        if req.prompt.len() + req.messages.iter().map(|m| m.content.len()).sum::<usize>() > self.config.max_prompt_bytes
        {
            return Err(Status::invalid_argument(format!("the prompt is over {} bytes", self.config.max_prompt_bytes)));
        }
        self.model_stream(req).await
    }

    pub(crate) fn session_node(&self, session: &str) -> Result<NodeRef, Status> {
        self.nodes.for_session(session).ok_or_else(|| Status::unavailable("no session node is available"))
    }

    pub(crate) async fn session_load(&self, session: &str) -> Result<SessionState, Status> {
        let node = self.session_node(session)?;
        let s = node
            .client
            .clone()
            .session_load(pb::GetSessionRequest { session: session.to_string() })
            .await
            .map_err(|s| node_status(&node, s))?
            .into_inner();
        Ok(session_from_pb(s))
    }

    pub(crate) async fn session_append(
        &self,
        session: &str,
        messages: Vec<pb::ChatMessage>,
    ) -> Result<SessionState, Status> {
        let node = self.session_node(session)?;
        let s = node
            .client
            .clone()
            .session_append(pb::SessionAppendRequest { session: session.to_string(), messages })
            .await
            .map_err(|s| node_status(&node, s))?
            .into_inner();
        Ok(session_from_pb(s))
    }

    /// Token counts of texts (as chat prompts with `chat`) and the model's context
    /// length (0 when there was nothing to count, so no call was made).
    pub(crate) async fn count_tokens(&self, texts: Vec<String>, chat: bool) -> Result<(Vec<usize>, usize), Status> {
        if texts.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let node = self.role_node("model")?;
        let r = node
            .client
            .clone()
            .count_tokens(pb::CountTokensRequest { texts, chat })
            .await
            .map_err(|s| node_status(&node, s))?
            .into_inner();
        Ok((r.counts.into_iter().map(|c| c as usize).collect(), r.context_length as usize))
    }

    /// The model node's token stream for a generation request.
    pub async fn model_stream(&self, req: pb::GenerateRequest) -> Result<tonic::Streaming<pb::GenerateChunk>, Status> {
        let node = self.role_node("model")?;
        Ok(node.client.clone().generate(req).await.map_err(|s| node_status(&node, s))?.into_inner())
    }

    /// A whole greedy generation (chains' internal steps).
    pub(crate) async fn generate_text(
        &self,
        prompt: String,
        max_tokens: u32,
        stop: Vec<String>,
    ) -> Result<(String, String), Status> {
        let req = pb::GenerateRequest { prompt, max_tokens, temperature: Some(0.0), stop, ..Default::default() };
        let mut stream = self.model_stream(req).await?;
        let mut text = String::new();
        while let Some(chunk) = stream.message().await? {
            text.push_str(&chunk.text);
            if !chunk.finish_reason.is_empty() {
                return Ok((text, chunk.finish_reason));
            }
        }
        Ok((text, String::new()))
    }

    /// The tonic server for this service.
    pub fn into_server(self, max_message_bytes: usize) -> pb::tessera_server::TesseraServer<Self> {
        pb::tessera_server::TesseraServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }

    /// The node that serves a shard: its placement's primary (catalogs from before
    /// placement existed: shard `s` on shard node `s mod n`).
    fn node_for_shard(&self, meta: &CollectionMeta, shard: u32) -> Result<NodeRef, Status> {
        match meta.placement.get(shard as usize) {
            Some(p) => self.nodes.get(&p.primary).ok_or_else(|| {
                Status::unavailable(format!(
                    "shard {shard} of '{}' is on node '{}', which is not alive",
                    meta.name, p.primary
                ))
            }),
            None => {
                let nodes = self.nodes.with_role("shard");
                if nodes.is_empty() {
                    return Err(Status::unavailable("no shard node is available"));
                }
                Ok(nodes[shard as usize % nodes.len()].clone())
            }
        }
    }

    /// The shard's replicas that are alive, primary first (reads try them in order).
    fn read_nodes(&self, meta: &CollectionMeta, shard: u32) -> Result<Vec<NodeRef>, Status> {
        match meta.placement.get(shard as usize) {
            Some(p) => {
                let mut order = vec![p.primary.clone()];
                order.extend(p.replicas.iter().filter(|r| **r != p.primary).cloned());
                let alive: Vec<NodeRef> = order.iter().filter_map(|id| self.nodes.get(id)).collect();
                if alive.is_empty() {
                    return Err(Status::unavailable(format!(
                        "no replica of shard {shard} of '{}' is alive (replicas: {})",
                        meta.name,
                        p.replicas.join(", ")
                    )));
                }
                Ok(alive)
            }
            None => Ok(vec![self.node_for_shard(meta, shard)?]),
        }
    }

    /// After a node left membership: every shard it was primary of gets a new
    /// primary, the alive replica that has applied the most writes, and every
    /// replica it held is rebuilt on a spare shard node (the one holding the
    /// fewest replicas) by a snapshot transfer, each change bumping the placement
    /// epoch. The change is a compare-and-swap on the catalog record, so when
    /// several coordinators react to the same loss one wins and the others see
    /// its result. Without a spare, the lost node stays a replica and catches up
    /// from the new primary's log when it returns.
    pub async fn fail_over(&self, lost: &str) {
        for meta in self.catalog.list().unwrap_or_default() {
            let mut updated = meta.clone();
            let mut changed = false;
            for (shard, p) in updated.placement.iter_mut().enumerate() {
                if p.primary != lost {
                    continue;
                }
                let req = pb::ShardStatsRequest {
                    shard: Some(pb::ShardRef { collection: meta.name.clone(), shard: shard as u32 }),
                };
                let mut best: Option<(u64, String)> = None;
                for id in p.replicas.iter().filter(|r| r.as_str() != lost) {
                    let Some(node) = self.nodes.get(id) else { continue };
                    if let Ok(Ok(s)) = tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        node.client.clone().get_shard_stats(req.clone()),
                    )
                    .await
                    {
                        let seq = s.into_inner().sequence;
                        if best.as_ref().is_none_or(|(b, _)| seq > *b) {
                            best = Some((seq, id.clone()));
                        }
                    }
                }
                match best {
                    Some((seq, id)) => {
                        info!(collection = %meta.name, shard, from = lost, to = %id, sequence = seq, epoch = p.epoch + 1, "shard primary failed over");
                        metrics::counter!("tessera_shard_failovers_total").increment(1);
                        p.primary = id;
                        p.epoch += 1;
                        changed = true;
                    }
                    None => tracing::warn!(collection = %meta.name, shard, "primary lost and no other replica answers"),
                }
            }
            // Rebuild the lost replica on a spare shard node: snapshot from the
            // primary, then the spare replaces the lost node in the placement. It
            // gets later writes by replication (log catch-up on the next write).
            let load = self.replica_counts();
            for (shard, p) in updated.placement.iter_mut().enumerate() {
                if !p.replicas.iter().any(|r| r == lost) {
                    continue;
                }
                let Some(source) = self.nodes.get(&p.primary) else { continue };
                let Some(spare) = self
                    .nodes
                    .with_role("shard")
                    .into_iter()
                    .filter(|n| !p.replicas.contains(&n.id))
                    .min_by_key(|n| load.get(&n.id).copied().unwrap_or(0))
                else {
                    continue;
                };
                let req = pb::ShardTransferRequest {
                    shard: Some(pb::ShardRef { collection: meta.name.clone(), shard: shard as u32 }),
                    source_url: source.url.clone(),
                };
                match spare.client.clone().shard_transfer(req).await {
                    Ok(stats) => {
                        info!(collection = %meta.name, shard, lost, spare = %spare.id, sequence = stats.get_ref().sequence, "replica rebuilt on a spare node");
                        metrics::counter!("tessera_shard_transfers_total").increment(1);
                        for r in p.replicas.iter_mut() {
                            if r == lost {
                                *r = spare.id.clone();
                            }
                        }
                        p.epoch += 1;
                        changed = true;
                    }
                    Err(e) => {
                        tracing::warn!(collection = %meta.name, shard, spare = %spare.id, error = %e.message(), "shard transfer failed; the replica stays missing")
                    }
                }
            }
            if changed {
                match self.catalog.compare_and_put(&meta, &updated).await {
                    Ok(true) => {}
                    Ok(false) => info!(collection = %meta.name, "placement changed meanwhile by another coordinator"),
                    Err(e) => tracing::warn!(collection = %meta.name, error = %e, "storing the new placement failed"),
                }
            }
        }
    }

    /// Calls a node serving `role` (round robin); when it is unreachable or gone
    /// (`UNAVAILABLE`, e.g. a node that died and has not left membership yet), the
    /// call is retried on the next node with that role. Other errors are returned.
    async fn on_role<T, F, Fut>(&self, role: &str, call: F) -> Result<T, Status>
    where
        F: Fn(crate::nodes::NodeClientT) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let first = self.role_node(role)?;
        let mut order = vec![first.clone()];
        order.extend(self.nodes.with_role(role).into_iter().filter(|n| n.id != first.id));
        let mut last = None;
        for node in order {
            match call(node.client.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if s.code() == tonic::Code::Unavailable => last = Some(node_status(&node, s)),
                Err(s) => return Err(node_status(&node, s)),
            }
        }
        Err(last.unwrap_or_else(|| Status::unavailable(format!("no node with the '{role}' role answered"))))
    }

    /// Fails over every node that holds placed replicas but is not in membership
    /// (idempotent; the placement leader runs it on every leave and periodically,
    /// so a leave missed while there was no leader is still handled).
    pub async fn reconcile(&self) {
        let mut lost: Vec<String> = self
            .catalog
            .list()
            .unwrap_or_default()
            .iter()
            .flat_map(|m| m.placement.iter().flat_map(|p| p.replicas.iter().cloned()))
            .filter(|id| self.nodes.get(id).is_none())
            .collect();
        lost.sort();
        lost.dedup();
        for id in lost {
            self.fail_over(&id).await;
        }
    }

    /// Scale-out: moves one shard replica from the shard node holding the most
    /// replicas to the one holding the fewest (when they differ by two or more).
    /// The move adds before it removes: the target gets a snapshot transfer and
    /// joins the placement as an extra replica (new epoch), the move waits until
    /// it has applied as many writes as the primary, then the source leaves the
    /// placement (new epoch; it hands over the primary role if it had it) and its
    /// copy is dropped. Reads keep working throughout. Returns whether it moved one.
    pub async fn rebalance_step(&self) -> bool {
        let alive: Vec<NodeRef> = self.nodes.with_role("shard");
        if alive.len() < 2 {
            return false;
        }
        let counts = self.replica_counts();
        let mut load: Vec<(usize, String)> =
            alive.iter().map(|n| (counts.get(&n.id).copied().unwrap_or(0), n.id.clone())).collect();
        load.sort();
        let (low, high) = (load[0].clone(), load[load.len() - 1].clone());
        if high.0 < low.0 + 2 {
            return false;
        }
        let (from, to) = (high.1, low.1);
        for meta in self.catalog.list().unwrap_or_default() {
            for (shard, p) in meta.placement.iter().enumerate() {
                if p.replicas.contains(&from) && !p.replicas.contains(&to) {
                    match self.move_replica(&meta, shard as u32, &from, &to).await {
                        Ok(()) => return true,
                        Err(e) => {
                            tracing::warn!(collection = %meta.name, shard, from = %from, to = %to, error = %e.message(), "replica move failed");
                            return false;
                        }
                    }
                }
            }
        }
        false
    }

    async fn move_replica(&self, meta: &CollectionMeta, shard: u32, from: &str, to: &str) -> Result<(), Status> {
        let shard_ref = pb::ShardRef { collection: meta.name.clone(), shard };
        let p = meta.placement.get(shard as usize).ok_or_else(|| Status::internal("no placement"))?.clone();
        let primary = self.nodes.get(&p.primary).ok_or_else(|| Status::unavailable("the primary is not alive"))?;
        let target = self.nodes.get(to).ok_or_else(|| Status::unavailable("the target left"))?;
        target
            .client
            .clone()
            .shard_transfer(pb::ShardTransferRequest {
                shard: Some(shard_ref.clone()),
                source_url: primary.url.clone(),
            })
            .await?;
        // 1. The target joins as an extra replica: it gets every later write.
        let mut grown = meta.clone();
        grown.placement[shard as usize].replicas.push(to.to_string());
        grown.placement[shard as usize].epoch += 1;
        if !self.catalog.compare_and_put(meta, &grown).await.map_err(catalog_status)? {
            return Err(Status::aborted("placement changed meanwhile"));
        }
        // 2. Wait until it has applied as many writes as the primary.
        let stats = pb::ShardStatsRequest { shard: Some(shard_ref.clone()) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let a = primary.client.clone().get_shard_stats(stats.clone()).await?.into_inner().sequence;
            let b = target.client.clone().get_shard_stats(stats.clone()).await?.into_inner().sequence;
            if b >= a {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(Status::deadline_exceeded(format!(
                    "{to} did not catch up ({b} of {a}); it stays an extra replica"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        // 3. The source leaves the placement.
        let mut moved = grown.clone();
        let pl = &mut moved.placement[shard as usize];
        pl.replicas.retain(|r| r != from);
        if pl.primary == from {
            pl.primary = to.to_string();
        }
        pl.epoch += 1;
        let epoch = pl.epoch;
        if !self.catalog.compare_and_put(&grown, &moved).await.map_err(catalog_status)? {
            return Err(Status::aborted("placement changed meanwhile"));
        }
        info!(collection = %meta.name, shard, from, to, epoch, "shard replica moved");
        metrics::counter!("tessera_shard_moves_total").increment(1);
        if let Some(old) = self.nodes.get(from) {
            let _ = old.client.clone().drop_shard(pb::DropShardRequest { shard: Some(shard_ref) }).await;
        }
        Ok(())
    }

    /// Shard replicas placed on each node, over all collections.
    fn replica_counts(&self) -> std::collections::HashMap<String, usize> {
        let mut counts = std::collections::HashMap::new();
        for meta in self.catalog.list().unwrap_or_default() {
            for id in meta.placement.iter().flat_map(|p| p.replicas.iter()) {
                *counts.entry(id.clone()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// A node serving `role`, round robin.
    fn role_node(&self, role: &str) -> Result<NodeRef, Status> {
        self.nodes.pick(role).ok_or_else(|| Status::unavailable(format!("no node with the '{role}' role is available")))
    }

    pub(crate) fn collection(&self, name: &str) -> Result<CollectionMeta, Status> {
        validate_name(name).map_err(Status::invalid_argument)?;
        self.catalog
            .get(name)
            .map_err(catalog_status)?
            .ok_or_else(|| Status::not_found(format!("collection '{name}' does not exist")))
    }

    /// Creates a collection and opens its shards; `if_missing` makes an existing
    /// one a success (used by ingest).
    async fn create(
        &self,
        name: &str,
        shards: u32,
        replication: u32,
        if_missing: bool,
    ) -> Result<CollectionMeta, Status> {
        validate_name(name).map_err(Status::invalid_argument)?;
        let shards = if shards == 0 { self.config.default_shards } else { shards };
        if shards > self.config.max_shards {
            return Err(Status::invalid_argument(format!("shards must be at most {}", self.config.max_shards)));
        }
        let replication = replication.max(1);
        let shard_nodes = self.nodes.with_role("shard");
        if replication as usize > shard_nodes.len() {
            return Err(Status::failed_precondition(format!(
                "replication {replication} needs at least {replication} shard nodes; this deployment has {}",
                shard_nodes.len()
            )));
        }
        let _guard = self.create_lock.lock().await;
        if let Some(existing) = self.catalog.get(name).map_err(catalog_status)? {
            return if if_missing {
                Ok(existing)
            } else {
                Err(Status::already_exists(format!("collection '{name}' already exists")))
            };
        }
        let node = self.role_node("embedder")?;
        let info =
            node.client.clone().info(pb::NodeInfoRequest {}).await.map_err(|s| node_status(&node, s))?.into_inner();
        if info.dimension == 0 {
            return Err(Status::failed_precondition("no embedder is available to fix the collection's dimension"));
        }
        let meta = CollectionMeta {
            name: name.to_string(),
            dimension: info.dimension,
            metric: "cosine".into(),
            shards,
            replication,
            embedder: info.embedder,
            placement: place(name, shards, replication, &shard_nodes),
        };
        for (shard, p) in meta.placement.iter().enumerate() {
            for id in &p.replicas {
                let node = self.nodes.get(id).ok_or_else(|| Status::unavailable(format!("node '{id}' left")))?;
                node.client
                    .clone()
                    .open_shard(pb::OpenShardRequest {
                        shard: Some(pb::ShardRef { collection: name.into(), shard: shard as u32 }),
                        dimension: meta.dimension,
                    })
                    .await
                    .map_err(|s| node_status(&node, s))?;
            }
        }
        if !self.catalog.create(&meta).await.map_err(catalog_status)? {
            // Another coordinator created it meanwhile (the catalog create is a compare-and-swap).
            let existing = self.collection(name)?;
            return if if_missing {
                Ok(existing)
            } else {
                Err(Status::already_exists(format!("collection '{name}' already exists")))
            };
        }
        info!(collection = name, shards, "collection created");
        Ok(meta)
    }

    async fn counts(&self, meta: &CollectionMeta) -> (u64, u64) {
        let mut chunks = 0;
        let mut documents = 0;
        for shard in 0..meta.shards {
            let req = pb::ShardStatsRequest { shard: Some(pb::ShardRef { collection: meta.name.clone(), shard }) };
            for node in self.read_nodes(meta, shard).unwrap_or_default() {
                if let Ok(s) =
                    node.client.clone().get_shard_stats(with_deadline(req.clone(), self.config.read_deadline)).await
                {
                    let s = s.into_inner();
                    chunks += s.chunks;
                    documents += s.documents;
                    break;
                }
            }
        }
        (chunks, documents)
    }

    /// Sends each shard its document writes, all shards in parallel; answers once every
    /// shard has made its writes durable.
    async fn write_shards(
        &self,
        meta: &CollectionMeta,
        per_shard: BTreeMap<u32, Vec<pb::DocumentWrite>>,
    ) -> Result<Vec<pb::ShardWriteResponse>, Status> {
        let collection = meta.name.as_str();
        let writes = per_shard.into_iter().map(|(shard, writes)| async move {
            let node = self.node_for_shard(meta, shard)?;
            let shard_ref = pb::ShardRef { collection: collection.to_string(), shard };
            let (followers, replicas, epoch) = match meta.placement.get(shard as usize) {
                Some(p) => (
                    p.replicas
                        .iter()
                        .filter(|r| **r != p.primary)
                        .filter_map(|r| self.nodes.get(r).map(|n| n.url))
                        .collect::<Vec<_>>(),
                    p.replicas.len(),
                    p.epoch,
                ),
                None => (vec![], 1, 0),
            };
            let min_acks = self.config.write_acks.needed(replicas) as u32;
            if min_acks as usize > followers.len() + 1 {
                return Err(Status::unavailable(format!(
                    "shard {shard} of '{collection}' has {} of {replicas} replicas alive; a write needs {min_acks}",
                    followers.len() + 1
                )));
            }
            let resp = node
                .client
                .clone()
                .shard_write(with_deadline(
                    pb::ShardWriteRequest { shard: Some(shard_ref), writes, follower_urls: followers, min_acks, epoch },
                    self.config.write_deadline,
                ))
                .await
                .map_err(|s| node_status(&node, s))?;
            Ok::<_, Status>(resp.into_inner())
        });
        try_join_all(writes).await
    }

    /// Search after validation: fan out to every shard, merge, fuse, re-rank.
    /// `query_vector` skips the embedding step when the caller has one.
    pub(crate) async fn search_hits(
        &self,
        req: &pb::SearchRequest,
        meta: &CollectionMeta,
        query_vector: Option<Vec<f32>>,
    ) -> Result<Vec<Scored>, Status> {
        let max = self.config.max_top_k;
        let lambda = if req.mmr_lambda == 0.0 { 0.5 } else { req.mmr_lambda };
        let mode = pb::SearchMode::try_from(req.mode)
            .map_err(|_| Status::invalid_argument(format!("unknown search mode {}", req.mode)))?;
        let mode = if mode == pb::SearchMode::Unspecified { pb::SearchMode::Vector } else { mode };
        let wants_vector = matches!(mode, pb::SearchMode::Vector | pb::SearchMode::Hybrid) || req.mmr;
        let query_vector = match query_vector {
            Some(v) => v,
            None if wants_vector => {
                self.embed_texts(vec![req.query.clone()]).await?.vectors.pop().map(|v| v.values).unwrap_or_default()
            }
            None => Vec::new(),
        };
        let top_k = req.top_k as usize;
        let fetch = if req.mmr {
            (if req.fetch_k == 0 { 4 * req.top_k } else { req.fetch_k.max(req.top_k) }).min(max)
        } else {
            req.top_k
        };
        // MMR needs vector candidates, whatever the mode asks for first.
        let shard_mode = if req.mmr && mode == pb::SearchMode::Bm25 { pb::SearchMode::Hybrid } else { mode };

        let searches = (0..meta.shards).map(|shard| {
            let request = pb::ShardSearchRequest {
                shard: Some(pb::ShardRef { collection: meta.name.clone(), shard }),
                vector: query_vector.clone(),
                query: req.query.clone(),
                top_k: fetch,
                filter: req.filter.clone(),
                mode: shard_mode as i32,
                with_vectors: req.mmr,
            };
            async move {
                // Primary first; a failed replica is retried on the next one.
                let mut last = None;
                for node in self.read_nodes(meta, shard)? {
                    match node
                        .client
                        .clone()
                        .shard_search(with_deadline(request.clone(), self.config.read_deadline))
                        .await
                    {
                        Ok(resp) => return Ok::<_, Status>(resp.into_inner()),
                        Err(s) => last = Some(node_status(&node, s)),
                    }
                }
                Err(last.unwrap_or_else(|| Status::unavailable(format!("shard {shard} has no replica"))))
            }
        });
        let per_shard = try_join_all(searches).await?;
        let mut vector_lists = Vec::new();
        let mut bm25_lists = Vec::new();
        for r in per_shard {
            vector_lists.push(r.vector_hits.into_iter().filter_map(to_scored).collect::<Vec<_>>());
            bm25_lists.push(r.bm25_hits.into_iter().filter_map(to_scored).collect::<Vec<_>>());
        }
        let fetch = fetch as usize;
        let mut hits = match mode {
            pb::SearchMode::Bm25 => merge_top_k(bm25_lists, fetch),
            pb::SearchMode::Hybrid => {
                let v = merge_top_k(vector_lists, fetch);
                let b = merge_top_k(bm25_lists, fetch);
                reciprocal_rank_fusion(&[v, b], fetch)
            }
            _ => merge_top_k(vector_lists, fetch),
        };
        if let Some(min) = req.min_score {
            hits.retain(|h| h.score >= min);
        }
        if req.mmr {
            hits = mmr(&query_vector, hits, top_k, lambda);
        }
        hits.truncate(top_k);
        Ok(hits)
    }

    /// Embeds texts over the nodes, in parallel batches, keeping order; the answer
    /// also carries the embedder's dimension and model name.
    pub(crate) async fn embed_texts(&self, texts: Vec<String>) -> Result<pb::EmbedResponse, Status> {
        let batches: Vec<Vec<String>> = texts.chunks(self.config.embed_batch.max(1)).map(|c| c.to_vec()).collect();
        let results: Vec<pb::EmbedResponse> = stream::iter(batches.into_iter().map(|batch| async move {
            self.on_role("embedder", |mut client| {
                let texts = batch.clone();
                async move { client.embed_batch(pb::EmbedRequest { texts }).await }
            })
            .await
        }))
        .buffered(self.config.embed_parallelism.max(1))
        .try_collect()
        .await?;
        let mut all = pb::EmbedResponse::default();
        for r in results {
            all.dimension = r.dimension;
            all.model = r.model;
            all.vectors.extend(r.vectors);
        }
        Ok(all)
    }
}

/// The stream type of Generate.
pub type GenerateStream = Pin<Box<dyn futures::Stream<Item = Result<pb::GenerateChunk, Status>> + Send>>;
/// The stream type of Ask.
pub type AskStream = Pin<Box<dyn futures::Stream<Item = Result<pb::AskChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::tessera_server::Tessera for Coordinator {
    type GenerateStream = GenerateStream;
    type AskStream = AskStream;

    #[instrument(skip_all, name = "Tessera/Ask", fields(collection = %req.get_ref().collection, session = %req.get_ref().session))]
    async fn ask(&self, req: Request<pb::AskRequest>) -> Result<Response<AskStream>, Status> {
        let rx = Coordinator::ask(self, req.into_inner()).await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[instrument(skip_all, name = "Tessera/ClusterStatus")]
    async fn cluster_status(
        &self,
        _req: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        Ok(Response::new(Coordinator::cluster_status(self).await.to_pb()))
    }

    #[instrument(skip_all, name = "Tessera/ListSessions")]
    async fn list_sessions(
        &self,
        _req: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let mut sessions = Vec::new();
        for node in self.nodes.all() {
            match node.client.clone().session_list(pb::ListSessionsRequest {}).await {
                Ok(r) => sessions.extend(r.into_inner().sessions),
                Err(s) if s.code() == tonic::Code::FailedPrecondition => {} // no session role
                Err(s) => return Err(node_status(&node, s)),
            }
        }
        sessions.sort_by(|a, b| a.session.cmp(&b.session));
        Ok(Response::new(pb::ListSessionsResponse { sessions }))
    }

    #[instrument(skip_all, name = "Tessera/GetSession", fields(session = %req.get_ref().session))]
    async fn get_session(&self, req: Request<pb::GetSessionRequest>) -> Result<Response<pb::SessionState>, Status> {
        let session = req.into_inner().session;
        validate_session_id(&session).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let node = self.session_node(&session)?;
        let state = node
            .client
            .clone()
            .session_load(pb::GetSessionRequest { session: session.clone() })
            .await
            .map_err(|s| node_status(&node, s))?
            .into_inner();
        if state.messages.is_empty() {
            return Err(Status::not_found(format!("session '{session}' does not exist")));
        }
        Ok(Response::new(state))
    }

    #[instrument(skip_all, name = "Tessera/ClearSession", fields(session = %req.get_ref().session))]
    async fn clear_session(
        &self,
        req: Request<pb::ClearSessionRequest>,
    ) -> Result<Response<pb::ClearSessionResponse>, Status> {
        let session = req.into_inner().session;
        validate_session_id(&session).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let node = self.session_node(&session)?;
        let r = node
            .client
            .clone()
            .session_clear(pb::ClearSessionRequest { session })
            .await
            .map_err(|s| node_status(&node, s))?;
        Ok(Response::new(r.into_inner()))
    }

    #[instrument(skip_all, name = "Tessera/Generate", fields(max_tokens = req.get_ref().max_tokens))]
    async fn generate(&self, req: Request<pb::GenerateRequest>) -> Result<Response<GenerateStream>, Status> {
        let mut upstream = self.generate_checked(req.into_inner()).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            // When the client goes away `send` fails; dropping `upstream` then
            // cancels the node's stream, which cancels the generation.
            loop {
                let item = match upstream.message().await {
                    Ok(Some(chunk)) => Ok(chunk),
                    Ok(None) => break,
                    Err(status) => Err(status),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    #[instrument(skip_all, name = "Tessera/CreateCollection", fields(collection = %req.get_ref().name))]
    async fn create_collection(
        &self,
        req: Request<pb::CreateCollectionRequest>,
    ) -> Result<Response<pb::CollectionInfo>, Status> {
        let req = req.into_inner();
        let meta = self.create(&req.name, req.shards, req.replication, false).await?;
        Ok(Response::new(info_pb(&meta, 0, 0)))
    }

    #[instrument(skip_all, name = "Tessera/ListCollections")]
    async fn list_collections(
        &self,
        _req: Request<pb::ListCollectionsRequest>,
    ) -> Result<Response<pb::ListCollectionsResponse>, Status> {
        let mut collections = Vec::new();
        for meta in self.catalog.list().map_err(catalog_status)? {
            let (chunks, documents) = self.counts(&meta).await;
            collections.push(info_pb(&meta, chunks, documents));
        }
        Ok(Response::new(pb::ListCollectionsResponse { collections }))
    }

    #[instrument(skip_all, name = "Tessera/DropCollection", fields(collection = %req.get_ref().name))]
    async fn drop_collection(
        &self,
        req: Request<pb::DropCollectionRequest>,
    ) -> Result<Response<pb::DropCollectionResponse>, Status> {
        let meta = self.collection(&req.into_inner().name)?;
        let _guard = self.create_lock.lock().await;
        for shard in 0..meta.shards {
            let node = self.node_for_shard(&meta, shard)?;
            node.client
                .clone()
                .drop_shard(pb::DropShardRequest { shard: Some(pb::ShardRef { collection: meta.name.clone(), shard }) })
                .await
                .map_err(|s| node_status(&node, s))?;
        }
        let dropped = self.catalog.remove(&meta.name).await.map_err(catalog_status)?;
        Ok(Response::new(pb::DropCollectionResponse { dropped }))
    }

    #[instrument(skip_all, name = "Tessera/Ingest", fields(collection = %req.get_ref().collection, files = req.get_ref().files.len(), documents = req.get_ref().documents.len()))]
    async fn ingest(&self, req: Request<pb::IngestRequest>) -> Result<Response<pb::IngestResponse>, Status> {
        let req = req.into_inner();
        validate_name(&req.collection).map_err(Status::invalid_argument)?;
        if req.files.is_empty() && req.documents.is_empty() {
            return Err(Status::invalid_argument("nothing to ingest: give files or documents"));
        }
        let (chunk_size, chunk_overlap) = match req.chunk_size {
            0 => (1000, if req.chunk_overlap == 0 { 200 } else { req.chunk_overlap }),
            n => (n, req.chunk_overlap),
        };
        if chunk_overlap >= chunk_size {
            return Err(Status::invalid_argument(format!(
                "chunk_overlap ({chunk_overlap}) must be smaller than chunk_size ({chunk_size})"
            )));
        }
        let meta = self.create(&req.collection, 0, 0, true).await?;

        let load = pb::LoadAndSplitRequest {
            files: req.files,
            documents: req.documents,
            chunk_size,
            chunk_overlap,
            splitter: req.splitter,
        };
        let loaded = self
            .on_role("loader", |mut client| {
                let load = load.clone();
                async move { client.load_and_split(load).await }
            })
            .await?;
        let errors = loaded.errors;
        let texts: Vec<String> =
            loaded.documents.iter().flat_map(|d| d.chunks.iter().map(|c| c.text.clone())).collect();
        let mut vectors = self.embed_texts(texts).await?.vectors.into_iter().map(|v| v.values);

        let mut per_shard: BTreeMap<u32, Vec<pb::DocumentWrite>> = BTreeMap::new();
        for doc in loaded.documents {
            let chunks = doc
                .chunks
                .into_iter()
                .map(|chunk| pb::ChunkWithVector { vector: vectors.next().unwrap_or_default(), chunk: Some(chunk) })
                .collect();
            per_shard.entry(shard_for(&doc.doc_id, meta.shards)).or_default().push(pb::DocumentWrite {
                doc_id: doc.doc_id,
                delete: false,
                chunks,
            });
        }
        let outcomes = self.write_shards(&meta, per_shard).await?;
        let documents = outcomes.iter().map(|o| o.documents).sum();
        let chunks = outcomes.iter().map(|o| o.chunks).sum();
        info!(documents, chunks, errors = errors.len(), "ingested");
        Ok(Response::new(pb::IngestResponse { documents, chunks, errors }))
    }

    #[instrument(skip_all, name = "Tessera/Delete", fields(collection = %req.get_ref().collection))]
    async fn delete(&self, req: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let req = req.into_inner();
        let meta = self.collection(&req.collection)?;
        if req.doc_ids.is_empty() || req.doc_ids.iter().any(|d| d.is_empty()) {
            return Err(Status::invalid_argument("give one or more non-empty document ids"));
        }
        let mut per_shard: BTreeMap<u32, Vec<pb::DocumentWrite>> = BTreeMap::new();
        for doc_id in req.doc_ids {
            per_shard.entry(shard_for(&doc_id, meta.shards)).or_default().push(pb::DocumentWrite {
                doc_id,
                delete: true,
                chunks: vec![],
            });
        }
        let outcomes = self.write_shards(&meta, per_shard).await?;
        Ok(Response::new(pb::DeleteResponse {
            documents: outcomes.iter().map(|o| o.documents).sum(),
            chunks: outcomes.iter().map(|o| o.chunks).sum(),
        }))
    }

    #[instrument(skip_all, name = "Tessera/Search", fields(collection = %req.get_ref().collection, top_k = req.get_ref().top_k))]
    async fn search(&self, req: Request<pb::SearchRequest>) -> Result<Response<pb::SearchResponse>, Status> {
        let req = req.into_inner();
        let max = self.config.max_top_k;
        if req.query.trim().is_empty() {
            return Err(Status::invalid_argument("query must not be empty"));
        }
        if req.query.len() > self.config.max_query_bytes {
            return Err(Status::invalid_argument(format!(
                "query is {} bytes, over the limit of {}",
                req.query.len(),
                self.config.max_query_bytes
            )));
        }
        if req.top_k == 0 || req.top_k > max {
            return Err(Status::invalid_argument(format!("top_k must be between 1 and {max}, got {}", req.top_k)));
        }
        if req.fetch_k > max {
            return Err(Status::invalid_argument(format!("fetch_k must be at most {max}")));
        }
        let lambda = if req.mmr_lambda == 0.0 { 0.5 } else { req.mmr_lambda };
        if !(0.0..=1.0).contains(&lambda) {
            return Err(Status::invalid_argument("mmr_lambda must be between 0 and 1"));
        }
        if req.filter.as_ref().is_some_and(|f| f.must.iter().any(|c| c.key.is_empty() || c.values_json.is_empty())) {
            return Err(Status::invalid_argument("each filter condition needs a key and at least one value"));
        }
        let meta = self.collection(&req.collection)?;
        let hits = self.search_hits(&req, &meta, None).await?;
        let hits = hits
            .into_iter()
            .map(|h| pb::Hit {
                doc_id: h.doc_id,
                chunk_id: h.chunk_id,
                score: h.score,
                text: h.text,
                metadata_json: h.metadata_json,
            })
            .collect();
        Ok(Response::new(pb::SearchResponse { hits }))
    }

    #[instrument(skip_all, name = "Tessera/Embed", fields(texts = req.get_ref().texts.len()))]
    async fn embed(&self, req: Request<pb::EmbedRequest>) -> Result<Response<pb::EmbedResponse>, Status> {
        let texts = req.into_inner().texts;
        if texts.is_empty() {
            return Err(Status::invalid_argument("give at least one text to embed"));
        }
        if texts.len() > self.config.max_embed_texts {
            return Err(Status::invalid_argument(format!("at most {} texts per request", self.config.max_embed_texts)));
        }
        Ok(Response::new(self.embed_texts(texts).await?))
    }
}
