//! The server roles: `tessera up` here; `tessera node` and `tessera coordinator`
//! in [`crate::cluster`]. They share the pieces below: option groups, the node
//! and coordinator builders, the HTTP app (health, metrics, OpenAI API, status
//! page) and the gRPC server (tracing, metrics, health, reflection).
//!
//! `tessera up` is a coordinator and one node in one process. The coordinator
//! reaches the node through the internal `Node` gRPC service on the same
//! listener (loopback), so this mode crosses the same boundary as a cluster.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use axum::http::StatusCode;
use axum::routing::get;
use clap::Args;
use tessera_coordinator::auth::KeyFile;
use tessera_coordinator::chain::PromptLibrary;
use tessera_coordinator::{Catalog, Coordinator, CoordinatorConfig, NodeSet};
use tessera_node::model::ModelSpec;
use tessera_node::service::NodeService;
use tessera_node::{Node, NodeConfig};
use tessera_proto::shutdown::Shutdown;
use tessera_types::{MemoryKind, NodeRole};
use tokio::sync::watch;
use tracing::info;

use crate::parse_addr;

pub use tessera_types::limits::MAX_MESSAGE_BYTES;

/// Options of the coordinator role (`up`, `coordinator`).
#[derive(Args, Debug, Clone)]
pub struct CoordinatorOpts {
    /// Shards of collections created implicitly by ingest.
    #[arg(long, default_value_t = 2)]
    default_shards: u32,
    /// Largest top_k a search may ask for.
    #[arg(long, default_value_t = 1000)]
    max_top_k: u32,
    /// Folder of prompt templates (NAME.j2, NAME.jinja or NAME.txt) added to the defaults (qa, condense, summarize).
    #[arg(long, env = "TESSERA_TEMPLATES")]
    templates: Option<PathBuf>,
    /// Session memory kind when a request does not say: buffer, window, tokens or summary.
    #[arg(long, default_value = "window")]
    memory: String,
    /// Turns kept by window memory (and verbatim by summary memory).
    #[arg(long, default_value_t = 4)]
    memory_window: u32,
    /// History token budget of tokens memory.
    #[arg(long, default_value_t = 1024)]
    memory_tokens: u32,
    /// Replicas of a shard that must hold a write before it is acknowledged: majority, all or one.
    #[arg(long, default_value = "majority")]
    write_acks: String,
    /// Requests in progress per public listener (gRPC and HTTP each) before new
    /// ones are refused with RESOURCE_EXHAUSTED / 429.
    #[arg(long, env = "TESSERA_MAX_CONCURRENT_REQUESTS", default_value_t = 512)]
    pub max_concurrent_requests: usize,
}

/// Options of the node role (`up`, `node`).
#[derive(Args, Debug, Clone)]
pub struct NodeOpts {
    /// Folder with the models (see scripts/fetch-models.sh).
    #[arg(long, env = "TESSERA_MODELS", default_value = "./models")]
    pub models: PathBuf,
    /// Embedder: texts per forward pass.
    #[arg(long, default_value_t = 32)]
    max_batch_size: usize,
    /// Embedder: padded tokens per forward pass.
    #[arg(long, default_value_t = 4096)]
    max_batch_tokens: usize,
    /// Tensor-parallel world size of the model groups (ranks as threads): `N`
    /// for every model, or `NAME=N` for one (repeatable).
    #[arg(long = "tp", env = "TESSERA_TP", value_delimiter = ',', default_value = "1")]
    tp: Vec<String>,
    /// A GGUF chat model: `NAME=PATH`, or `PATH` (named after its file stem);
    /// repeat it to serve several, the first is the default (also called
    /// `default`). Without it: the SmolLM2 GGUF under --models, skipped with a
    /// warning when absent.
    #[arg(long = "model", env = "TESSERA_MODEL")]
    model: Vec<String>,
    /// A LoRA adapter (PEFT folder) served beside the default model as
    /// `NAME` (`model` in requests); repeatable.
    #[arg(long = "adapter", value_name = "NAME=DIR")]
    adapter: Vec<String>,
    /// Model: sequences decoded together in one step.
    #[arg(long, default_value_t = 16)]
    max_running: usize,
    /// Model: tokens (decode + prompt chunks) in one step.
    #[arg(long, default_value_t = 512)]
    max_step_tokens: usize,
    /// Model: requests waiting before new ones get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 64)]
    max_queued: usize,
    /// Model: MiB of KV cache kept for prompt prefixes that later requests
    /// reuse (system prompt, template head, a chat's earlier turns); 0 turns
    /// reuse off.
    #[arg(long, env = "TESSERA_PREFIX_CACHE_MB", default_value_t = 256)]
    prefix_cache_mb: usize,
    /// Seconds a session actor may stay idle before it is passivated (its history stays on disk).
    #[arg(long, default_value_t = 300)]
    session_idle_secs: u64,
}

/// Arguments of `tessera up`.
#[derive(Args, Debug)]
pub struct UpArgs {
    /// Where sled data and saved indexes live.
    #[arg(long, env = "TESSERA_DATA_DIR", default_value = "./tessera-data")]
    data_dir: PathBuf,
    /// gRPC listen address (public Tessera service, health, reflection; the
    /// internal Node service listens on a loopback port of its own).
    #[arg(long, env = "TESSERA_GRPC", default_value = "127.0.0.1:50051", value_parser = parse_addr)]
    grpc: SocketAddr,
    /// HTTP listen address (/healthz, /readyz, /metrics, the status page, the OpenAI API under /v1).
    #[arg(long, env = "TESSERA_HTTP", default_value = "127.0.0.1:8080", value_parser = parse_addr)]
    http: SocketAddr,
    /// Allow listening on addresses other than loopback without --api-keys.
    #[arg(long, env = "TESSERA_INSECURE_LISTEN_ANY")]
    insecure_listen_any: bool,
    /// API key file: one `KEY TENANT ROLE` per line (roles admin, read-write,
    /// read-only; `#` comments); re-read on SIGHUP.
    #[arg(long, env = "TESSERA_API_KEYS_FILE")]
    api_keys: Option<PathBuf>,
    /// TLS on the public gRPC and HTTP listeners.
    #[command(flatten)]
    tls: crate::tls::ListenTlsArgs,
    #[command(flatten)]
    coordinator: CoordinatorOpts,
    #[command(flatten)]
    node: NodeOpts,
}

/// Refuses public addresses unless `allowed` (API keys are on, or
/// --insecure-listen-any says the operator knows that without keys anyone who
/// can reach the port can read, write and drop every collection).
pub fn check_listen(addrs: &[SocketAddr], allowed: bool) -> anyhow::Result<()> {
    for addr in addrs.iter().filter(|a| !a.ip().is_loopback()) {
        anyhow::ensure!(
            allowed,
            "{addr} is not a loopback address and no --api-keys file is given; \
             listen on 127.0.0.1, give --api-keys, or pass --insecure-listen-any to serve anyone who can reach it"
        );
    }
    Ok(())
}

/// The coordinator over `nodes` and `catalog`, with the templates and defaults of `opts`.
pub fn build_coordinator(
    opts: &CoordinatorOpts,
    catalog: Catalog,
    nodes: NodeSet,
    shutdown: &Shutdown,
) -> anyhow::Result<Coordinator> {
    let mut prompts = PromptLibrary::with_defaults();
    if let Some(dir) = &opts.templates {
        let added = prompts.load_dir(dir).with_context(|| format!("loading templates from {}", dir.display()))?;
        info!(templates = ?added, "user prompt templates loaded");
    }
    let default_memory = MemoryKind::parse(&opts.memory, opts.memory_window, opts.memory_tokens, &MemoryKind::Buffer)
        .map_err(|e| anyhow::anyhow!("--memory: {e}"))?;
    let config = CoordinatorConfig {
        default_shards: opts.default_shards,
        max_top_k: opts.max_top_k,
        default_memory,
        write_acks: tessera_coordinator::WriteAcks::parse(&opts.write_acks)
            .map_err(|e| anyhow::anyhow!("--write-acks: {e}"))?,
        ..Default::default()
    };
    Ok(Coordinator::with_prompts(config, catalog, nodes, prompts).with_shutdown(shutdown.clone()))
}

/// A node configuration from `opts`, for `roles`, with data under `data_dir`.
pub fn build_node_config(
    opts: &NodeOpts,
    data_dir: &Path,
    id: &str,
    roles: Vec<NodeRole>,
) -> anyhow::Result<NodeConfig> {
    let mut config = NodeConfig::embedded(data_dir.to_path_buf(), opts.models.clone());
    config.id = id.to_string();
    config.roles = roles;
    config.batch.max_batch_size = opts.max_batch_size;
    config.batch.max_batch_tokens = opts.max_batch_tokens;
    config.engine = tessera_node::model::EngineLimits {
        max_batch_size: opts.max_running.max(1),
        max_batched_tokens: opts.max_step_tokens.max(1),
        max_queued: opts.max_queued.max(1),
        prefix_cache_bytes: opts.prefix_cache_mb.saturating_mul(1 << 20),
    };
    config.session_idle = std::time::Duration::from_secs(opts.session_idle_secs.max(1));
    // PDFs are parsed by this same binary in a child process (see main's
    // SANDBOX_ARG branch), so a hostile file costs one file, not the server.
    config.loader_sandbox = Some(
        tessera_node::load::Sandbox::this_executable(tessera_node::load::SandboxLimits::default())
            .map_err(|e| anyhow::anyhow!("cannot locate this executable for the loader sandbox: {e}"))?,
    );
    config.models = model_specs(opts, config.has(NodeRole::Model))?;
    for a in &opts.adapter {
        let (name, dir) = a.split_once('=').ok_or_else(|| anyhow::anyhow!("--adapter {a}: expected NAME=DIR"))?;
        let name = name.trim();
        ModelSpec::validate_name(name).map_err(|e| anyhow::anyhow!("--adapter {a}: {e}"))?;
        anyhow::ensure!(!config.adapters.iter().any(|(n, _)| n == name), "two adapters are named '{name}'");
        config.adapters.push((name.to_string(), PathBuf::from(dir.trim())));
    }
    Ok(config)
}

/// The models `--model` and `--tp` ask for (see [`NodeOpts`]), checked: names
/// valid and distinct, files present, every `--tp NAME=N` naming a model.
fn model_specs(opts: &NodeOpts, model_role: bool) -> anyhow::Result<Vec<ModelSpec>> {
    let (mut all_tp, mut named_tp) = (1usize, Vec::<(String, usize)>::new());
    for t in &opts.tp {
        let parse = |n: &str| -> anyhow::Result<usize> {
            let n: usize = n.trim().parse().map_err(|_| anyhow::anyhow!("--tp {t}: expected N or NAME=N"))?;
            anyhow::ensure!(n >= 1, "--tp must be at least 1");
            Ok(n)
        };
        match t.split_once('=') {
            Some((name, n)) => named_tp.push((name.trim().to_string(), parse(n)?)),
            None => all_tp = parse(t)?,
        }
    }
    let mut specs: Vec<ModelSpec> = Vec::new();
    for m in &opts.model {
        let mut spec = match m.split_once('=') {
            Some((name, path)) => {
                ModelSpec::validate_name(name.trim()).map_err(|e| anyhow::anyhow!("--model {m}: {e}"))?;
                ModelSpec { name: name.trim().to_string(), path: PathBuf::from(path.trim()), tp: all_tp }
            }
            None => {
                let spec = ModelSpec::from_path(PathBuf::from(m.trim()), all_tp);
                ModelSpec::validate_name(&spec.name)
                    .map_err(|e| anyhow::anyhow!("--model {m}: {e}; name it with --model NAME=PATH"))?;
                spec
            }
        };
        anyhow::ensure!(spec.path.exists(), "model file {} does not exist", spec.path.display());
        anyhow::ensure!(!specs.iter().any(|s| s.name == spec.name), "two models are named '{}'", spec.name);
        if let Some((_, n)) = named_tp.iter().find(|(name, _)| *name == spec.name) {
            spec.tp = *n;
        }
        specs.push(spec);
    }
    if specs.is_empty() {
        let default = opts.models.join(tessera_node::node::DEFAULT_MODEL);
        if default.exists() {
            specs.push(ModelSpec::from_path(default, all_tp));
        } else if model_role {
            tracing::warn!(path = %default.display(), "no chat model found; Generate is unavailable (run scripts/fetch-models.sh)");
        }
    }
    if let Some((name, _)) = named_tp.iter().find(|(name, _)| !specs.iter().any(|s| s.name == *name)) {
        anyhow::bail!("--tp {name}=N names no --model");
    }
    Ok(specs)
}

/// `/healthz` and `/readyz` (503 until `ready`), `/metrics`, and request metrics/traces on every route.
pub fn base_http_app(ready: Arc<AtomicBool>, metrics: metrics_exporter_prometheus::PrometheusHandle) -> axum::Router {
    let health = move || {
        let ready = ready.clone();
        async move {
            if ready.load(Ordering::SeqCst) {
                (StatusCode::OK, "ok\n")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
            }
        }
    };
    axum::Router::new()
        .route("/healthz", get(health.clone()))
        .route("/readyz", get(health))
        .route("/metrics", get(move || std::future::ready(metrics.render())))
}

/// Adds the coordinator's routes (OpenAI API, status page) to an app.
pub fn with_coordinator_routes(app: axum::Router, coordinator: &Coordinator) -> axum::Router {
    app.merge(tessera_coordinator::openai::router(coordinator.clone()))
        .merge(tessera_coordinator::status::router(coordinator.clone()))
}

/// What stands in front of a listener's handlers: API keys and the cap on
/// requests in progress.
#[derive(Clone)]
pub struct Guards {
    /// Keys to check (None: requests are not authenticated).
    pub keys: Option<Arc<KeyFile>>,
    /// Requests in progress.
    pub cap: crate::limit::ConcurrencyCapLayer,
}

impl Guards {
    /// For listeners only other Tessera processes call (and probes).
    pub fn internal() -> Self {
        Self { keys: None, cap: crate::limit::ConcurrencyCapLayer::unlimited() }
    }

    /// For a public listener.
    pub fn public(keys: Option<Arc<KeyFile>>, opts: &CoordinatorOpts) -> Self {
        Self { keys, cap: crate::limit::ConcurrencyCapLayer::new(opts.max_concurrent_requests) }
    }
}

/// Serves an HTTP app until `stop` changes.
pub async fn spawn_http(
    addr: SocketAddr,
    app: axum::Router,
    guards: Guards,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding HTTP {addr}"))?;
    // Observed outermost, so refused requests are counted and traced too; keys
    // are checked before a request takes one of the capped slots.
    let app = app
        .layer(axum::middleware::from_fn_with_state(guards.cap.http(), crate::limit::http_cap))
        .layer(axum::middleware::from_fn_with_state(guards.keys, crate::auth::http_auth))
        .layer(axum::middleware::from_fn(crate::telemetry::http_observe));
    let stopped = async move {
        let _ = stop.changed().await;
    };
    Ok(match tls {
        None => tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stopped).await }),
        Some(acceptor) => {
            let listener = crate::tls::TlsListener::new(listener, acceptor)?;
            tokio::spawn(async move { axum::serve(listener, app).with_graceful_shutdown(stopped).await })
        }
    })
}

/// Serves gRPC on `listener` with health, reflection, tracing and metrics until `stop` changes.
pub async fn spawn_grpc(
    listener: tokio::net::TcpListener,
    coordinator: Option<Coordinator>,
    node: Option<Arc<Node>>,
    guards: Guards,
    tls: Option<tonic::transport::ServerTlsConfig>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<Result<(), tonic::transport::Error>>> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    if coordinator.is_some() {
        health_reporter.set_serving::<tessera_proto::v1::tessera_server::TesseraServer<Coordinator>>().await;
    }
    if node.is_some() {
        health_reporter.set_serving::<tessera_proto::v1::node_server::NodeServer<NodeService>>().await;
    }
    // Reflection advertises only what this listener serves (the descriptor set
    // holds both services).
    let mut reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tessera_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health");
    if coordinator.is_some() {
        reflection = reflection.with_service_name("tessera.v1.Tessera");
    }
    if node.is_some() {
        reflection = reflection.with_service_name("tessera.v1.Node");
    }
    let reflection = reflection.build_v1()?;
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls).context("gRPC TLS settings")?;
    }
    let router = server
        .trace_fn(crate::telemetry::grpc_span)
        .layer(crate::telemetry::GrpcMetricsLayer)
        .layer(crate::auth::GrpcAuthLayer::new(guards.keys))
        .layer(guards.cap)
        .add_service(health_service)
        .add_service(reflection)
        .add_optional_service(coordinator.map(|c| c.into_server(MAX_MESSAGE_BYTES)))
        .add_optional_service(node.map(|n| NodeService::new(n).into_server(MAX_MESSAGE_BYTES)));
    Ok(tokio::spawn(
        // No Nagle: small RPC answers would otherwise wait for the peer's delayed ACK (~40 ms a hop).
        router.serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                let _ = stop.changed().await;
            },
        ),
    ))
}

/// How long background tasks get to return once the stop signal is given.
const BACKGROUND_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Signals every background task to stop and waits for them (bounded).
pub async fn stop_background(shutdown: &Shutdown) {
    if !shutdown.stop(BACKGROUND_GRACE).await {
        tracing::warn!("background tasks still running after {BACKGROUND_GRACE:?}; stopping anyway");
    }
}

/// Waits for SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Runs `tessera up` until SIGINT or SIGTERM.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let telemetry = crate::telemetry::init("tessera")?;
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let ready = Arc::new(AtomicBool::new(false));

    // Listeners and the coordinator first (it reaches the node lazily), so HTTP
    // probes get an answer (503) while models load.
    check_listen(&[args.grpc, args.http], args.insecure_listen_any || args.api_keys.is_some())?;
    let tls = crate::tls::Tls::listener(&args.tls)?;
    let grpc = tokio::net::TcpListener::bind(args.grpc).await.with_context(|| format!("binding gRPC {}", args.grpc))?;
    let local = grpc.local_addr()?;
    // The internal Node service (shard writes, snapshots, transfers) is never on
    // the public listener: an ephemeral loopback port only this process dials.
    let internal = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .await
        .context("binding the internal Node listener")?;
    let internal_addr = internal.local_addr()?;
    let nodes = NodeSet::connect_lazy(&[("local".into(), format!("http://{internal_addr}"))], MAX_MESSAGE_BYTES)?;
    let catalog = Catalog::open(&args.data_dir).context("opening the collection catalog")?;
    let shutdown = Shutdown::new();
    let coordinator = build_coordinator(&args.coordinator, catalog, nodes, &shutdown)?;
    let keys = args.api_keys.as_deref().map(|p| crate::auth::keys(p, &shutdown)).transpose()?;
    if keys.is_none() {
        tracing::warn!(
            "no --api-keys: requests are not authenticated; anyone who can reach the listeners can use them"
        );
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let app = with_coordinator_routes(base_http_app(ready.clone(), telemetry.metrics.clone()), &coordinator);
    let guards = Guards::public(keys, &args.coordinator);
    let http_tls = tls.as_ref().map(|t| t.http_acceptor());
    let http_task = spawn_http(args.http, app, guards.clone(), http_tls, stop_rx.clone()).await?;

    let config = build_node_config(&args.node, &args.data_dir.join("node"), "local", NodeRole::ALL.to_vec())?;
    let node = Node::start(config, &shutdown).await.context("starting the node")?;
    // In-process and loopback-only: no TLS on the internal listener.
    let node_task = spawn_grpc(internal, None, Some(node.clone()), Guards::internal(), None, stop_rx.clone()).await?;
    let grpc_tls = tls.as_ref().map(|t| t.grpc_server(false)).transpose()?;
    let grpc_task = spawn_grpc(grpc, Some(coordinator), None, guards, grpc_tls, stop_rx.clone()).await?;
    ready.store(true, Ordering::SeqCst);
    info!(grpc = %local, http = %args.http, internal = %internal_addr, tls = tls.is_some(), data_dir = %args.data_dir.display(), "tessera up: serving");

    shutdown_signal().await;
    info!("shutting down");
    ready.store(false, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    let _ = grpc_task.await;
    let _ = http_task.await;
    let _ = node_task.await;
    stop_background(&shutdown).await;
    node.shutdown().await;
    info!("stopped cleanly");
    telemetry.shutdown();
    Ok(())
}
