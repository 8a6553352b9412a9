//! A node: the actors of one process, started from a [`NodeConfig`].
use std::path::PathBuf;
use std::sync::Arc;

use tessera_proto::shutdown::Shutdown;
use tessera_types::NodeRole;
use thiserror::Error;
use tracing::info;

use crate::embed::{spawn_embedder, BatchLimits, BertEmbedder, EmbedError, EmbedderHandle};
use crate::load::LoaderPool;
use crate::model::{EngineLimits, ModelError, ModelServing, ModelSpec, ServedModels};
use crate::session::{SessionError, SessionRegistry};
use crate::shard::{ShardError, ShardRegistry};

/// The default chat model, relative to the models folder.
pub const DEFAULT_MODEL: &str = "SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

/// What a node runs and where it keeps its data.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Node id (shown in status, used in cluster mode).
    pub id: String,
    /// Roles this node serves.
    pub roles: Vec<NodeRole>,
    /// Directory for sled data and saved indexes.
    pub data_dir: PathBuf,
    /// The sentence-transformers folder of the embedding model.
    pub embedder_dir: PathBuf,
    /// Embedder batching.
    pub batch: BatchLimits,
    /// Concurrent loader jobs.
    pub loader_workers: usize,
    /// Largest file or document accepted, in bytes.
    pub max_document_bytes: usize,
    /// Where PDFs (and any parser that can recurse or decompress without bound)
    /// are parsed; None parses in this process, which a hostile file can abort.
    pub loader_sandbox: Option<crate::load::Sandbox>,
    /// The GGUF models of the `model` role, each its own group; the first is
    /// the default (and the one a group over processes runs).
    pub models: Vec<ModelSpec>,
    /// LoRA adapters to serve from the start (`--adapter NAME=DIR`), on the
    /// default model.
    pub adapters: Vec<(String, PathBuf)>,
    /// Model scheduler bounds.
    pub engine: EngineLimits,
    /// Session role: how long a session actor may stay idle before it is stopped.
    pub session_idle: std::time::Duration,
    /// A model group spanning processes: (this process's rank, world size, the
    /// address rank 0 listens on for the other ranks). None: all ranks in this process.
    pub model_group: Option<RemoteGroup>,
}

/// This process's place in a model group that spans processes.
#[derive(Debug, Clone)]
pub struct RemoteGroup {
    /// This process's rank (0 serves; others only compute).
    pub rank: usize,
    /// Ranks in the group.
    pub world: usize,
    /// Where rank 0 listens for the others.
    pub addr: std::net::SocketAddr,
    /// What every rank must prove to join (see `model::tcp`).
    pub secret: crate::model::tcp::GroupSecret,
}

impl NodeConfig {
    /// All roles that the data path needs, data under `data_dir`, models under `models_dir`.
    pub fn embedded(data_dir: PathBuf, models_dir: PathBuf) -> Self {
        Self {
            id: "local".into(),
            roles: NodeRole::ALL.to_vec(),
            data_dir,
            embedder_dir: models_dir.join("all-MiniLM-L6-v2"),
            batch: BatchLimits::default(),
            loader_workers: 2,
            max_document_bytes: 32 * 1024 * 1024,
            loader_sandbox: None,
            models: vec![ModelSpec::from_path(models_dir.join(DEFAULT_MODEL), 1)],
            adapters: Vec::new(),
            engine: EngineLimits::default(),
            session_idle: std::time::Duration::from_secs(300),
            model_group: None,
        }
    }

    /// Whether this node serves `role`.
    pub fn has(&self, role: NodeRole) -> bool {
        self.roles.contains(&role)
    }
}

/// Why a node could not start.
#[derive(Debug, Error)]
pub enum NodeError {
    /// The embedding model failed to load.
    #[error("embedder: {0}")]
    Embed(#[from] EmbedError),
    /// Shard storage failed to open.
    #[error("shards: {0}")]
    Shard(#[from] ShardError),
    /// An actor failed to start.
    #[error("actor: {0}")]
    Actor(String),
    /// The model failed to load.
    #[error("model: {0}")]
    Model(#[from] ModelError),
    /// Session storage failed to open.
    #[error("sessions: {0}")]
    Memory(#[from] SessionError),
}

/// The running node.
pub struct Node {
    /// Its configuration.
    pub config: NodeConfig,
    /// The embedder, when the node has that role.
    pub embedder: Option<EmbedderHandle>,
    /// Hosted shards (empty registry unless the node has the shard role).
    pub shards: Option<ShardRegistry>,
    /// The loader pool, when the node has that role.
    pub loader: Option<LoaderPool>,
    /// The model groups by name (empty without the model role or a model).
    pub models: ServedModels,
    /// Session memory, when the node has the session role.
    pub sessions: Option<SessionRegistry>,
    /// Whether shard writes are allowed (cluster mode: while the membership lease is certain).
    pub write_fence: crate::membership::WriteFence,
}

impl Node {
    /// Loads the model and opens the shards the configuration asks for; the
    /// node's background tasks run under `shutdown`.
    pub async fn start(config: NodeConfig, shutdown: &Shutdown) -> Result<Arc<Self>, NodeError> {
        let embedder = if config.has(NodeRole::Embedder) || config.has(NodeRole::Loader) {
            let dir = config.embedder_dir.clone();
            let model = tokio::task::spawn_blocking(move || BertEmbedder::load(&dir))
                .await
                .map_err(|e| NodeError::Actor(e.to_string()))??;
            info!(model = model.name(), dimension = model.dimension(), "embedding model loaded");
            Some(spawn_embedder(Arc::new(model), config.batch).await.map_err(|e| NodeError::Actor(e.to_string()))?)
        } else {
            None
        };
        let loader = config.has(NodeRole::Loader).then(|| {
            let tokenizer = embedder.as_ref().map(|e| e.model().tokenizer().clone());
            LoaderPool::new(config.loader_workers, tokenizer, config.max_document_bytes, config.loader_sandbox.clone())
        });
        let shards =
            if config.has(NodeRole::Shard) { Some(ShardRegistry::open(&config.data_dir).await?) } else { None };
        let embedder = if config.has(NodeRole::Embedder) { embedder } else { None };
        let models = start_models(&config).await?;
        let sessions = if config.has(NodeRole::Session) {
            std::fs::create_dir_all(&config.data_dir).map_err(|e| NodeError::Actor(e.to_string()))?;
            Some(SessionRegistry::open(&config.data_dir.join("sessions.sled"), config.session_idle, shutdown)?)
        } else {
            None
        };
        Ok(Arc::new(Self { config, embedder, shards, loader, models, sessions, write_fence: Default::default() }))
    }

    /// Flushes shards and saves their indexes; stops the actors.
    pub async fn shutdown(&self) {
        if let Some(shards) = &self.shards {
            shards.close_all().await;
        }
        if let Some(e) = &self.embedder {
            e.stop();
        }
        if let Some(s) = &self.sessions {
            s.shutdown().await;
        }
        info!("node stopped");
    }
}

/// The model role: every configured model, each its own group, in order.
/// With a group over processes the first model runs there and the others
/// locally; on a rank other than 0 the first computes only (not served here).
async fn start_models(config: &NodeConfig) -> Result<ServedModels, NodeError> {
    if !config.has(NodeRole::Model) {
        return Ok(ServedModels::default());
    }
    // A rank > 0 of a group over processes serves nothing (membership does not
    // list it as a model node), so it runs only its rank of the first model.
    let follower = config.model_group.as_ref().is_some_and(|g| g.rank > 0);
    if follower && config.models.len() > 1 {
        tracing::warn!("this process is rank > 0 of a model group: models after the first are not started");
    }
    let mut groups = Vec::new();
    for (i, spec) in config.models.iter().enumerate().take(if follower { 1 } else { usize::MAX }) {
        let group = if i == 0 { config.model_group.clone() } else { None };
        if let Some(serving) = start_model(spec, group, config.engine).await? {
            groups.push(serving);
        }
    }
    let served = ServedModels::new(groups);
    if !config.adapters.is_empty() {
        let Some(base) = served.all().first().cloned() else {
            return Err(NodeError::Model(ModelError::Config("--adapter needs a model to run on".into())));
        };
        for (name, dir) in &config.adapters {
            if served.name_taken(name) {
                return Err(NodeError::Model(ModelError::Config(format!("--adapter {name}: the name is taken"))));
            }
            let (b, n, d) = (base.clone(), name.clone(), dir.clone());
            let info = tokio::task::spawn_blocking(move || b.load_adapter(&n, &d))
                .await
                .map_err(|e| NodeError::Actor(e.to_string()))?
                .map_err(|e| {
                    NodeError::Model(ModelError::Config(format!("--adapter {name}={}: {e}", dir.display())))
                })?;
            info!(adapter = %info.name, model = base.name(), rank = info.rank, "adapter loaded");
        }
    }
    Ok(served)
}

/// One model: a local group of `tp` ranks, rank 0 of a group over processes
/// (waits for the other ranks, then leads), or another rank of such a group
/// (computes on its own thread, serves no requests itself: None).
async fn start_model(
    spec: &ModelSpec,
    group: Option<RemoteGroup>,
    limits: EngineLimits,
) -> Result<Option<Arc<ModelServing>>, NodeError> {
    let (name, path) = (spec.name.clone(), spec.path.clone());
    match group {
        Some(RemoteGroup { rank: 0, world, addr, secret }) => {
            let serving = tokio::task::spawn_blocking(move || lead_group(&name, &path, world, addr, &secret, limits))
                .await
                .map_err(|e| NodeError::Actor(e.to_string()))??;
            info!(model = serving.name(), world, "model group over processes started (rank 0)");
            Ok(Some(Arc::new(serving)))
        }
        Some(RemoteGroup { rank, world, addr, secret }) => {
            std::thread::Builder::new()
                .name(format!("model-rank-{rank}"))
                .spawn(move || follow_group(&path, rank, world, addr, &secret))
                .map_err(|e| NodeError::Actor(e.to_string()))?;
            Ok(None)
        }
        None => {
            let tp = spec.tp;
            let serving = tokio::task::spawn_blocking(move || ModelServing::load(&name, &path, tp, limits))
                .await
                .map_err(|e| NodeError::Actor(e.to_string()))??;
            info!(model = serving.name(), tp, "model group started");
            Ok(Some(Arc::new(serving)))
        }
    }
}

/// How long ranks of a group over processes wait for each other at start.
const GROUP_JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Rank 0 of a group over processes: listens for the other ranks, then leads.
fn lead_group(
    name: &str,
    path: &std::path::Path,
    world: usize,
    addr: std::net::SocketAddr,
    secret: &crate::model::tcp::GroupSecret,
    limits: EngineLimits,
) -> Result<ModelServing, ModelError> {
    let listener =
        std::net::TcpListener::bind(addr).map_err(|e| ModelError::Io(format!("model group address {addr}: {e}")))?;
    info!(%addr, world, "waiting for the other ranks of the model group");
    let comm = crate::model::tcp::TcpCommunicator::leader(listener, world, secret, GROUP_JOIN_TIMEOUT)
        .map_err(|e| ModelError::Io(e.to_string()))?;
    let group = crate::model::ModelGroup::start_named(name, path, vec![Box::new(comm)], limits)?;
    ModelServing::from_group(name, path, group)
}

/// Another rank of a group over processes: runs until rank 0 shuts the group down.
fn follow_group(
    path: &std::path::Path,
    rank: usize,
    world: usize,
    addr: std::net::SocketAddr,
    secret: &crate::model::tcp::GroupSecret,
) {
    let comm = match crate::model::tcp::TcpCommunicator::follower(addr, rank, world, secret, GROUP_JOIN_TIMEOUT) {
        Ok(c) => c,
        Err(e) => return tracing::error!(rank, %addr, error = %e, "model rank could not join its group"),
    };
    info!(rank, world, %addr, "model rank joined its group");
    if let Err(e) = crate::model::engine::run_follower(path, Box::new(comm)) {
        tracing::error!(rank, error = %e, "model rank stopped");
    }
}
