//! Cluster mode: `tessera node` (actors of some roles, registered in etcd) and
//! `tessera coordinator` (the public API over the nodes etcd lists), plus the
//! `tessera status` client command.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use tessera_coordinator::placement::leader;
use tessera_coordinator::{node_watch, Catalog, NodeSet};
use tessera_node::membership;
use tessera_node::Node;
use tessera_proto::shutdown::Shutdown;
use tessera_proto::v1 as pb;
use tessera_types::NodeRecord;
use tessera_types::NodeRole;
use tokio::sync::watch;
use tracing::info;

use crate::client::{connect, rpc};
use crate::server::{
    base_http_app, build_coordinator, build_node_config, check_listen, shutdown_signal, spawn_grpc, spawn_http,
    stop_background, with_coordinator_routes, CoordinatorOpts, Guards, NodeOpts, MAX_MESSAGE_BYTES,
};
use crate::{parse_addr, ServerArg};

/// Arguments of `tessera node`.
#[derive(Args, Debug)]
pub struct NodeArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Node id, unique in the cluster (e.g. the pod name).
    #[arg(long, env = "TESSERA_NODE_ID")]
    id: String,
    /// Roles, comma-separated: loader, embedder, shard, model, session.
    #[arg(long, value_delimiter = ',', default_value = "loader,embedder,shard,model,session")]
    roles: Vec<String>,
    /// gRPC listen address of the internal Node service.
    #[arg(long, env = "TESSERA_GRPC", value_parser = parse_addr)]
    grpc: SocketAddr,
    /// Address coordinators use to reach this node (host:port); default: --grpc.
    #[arg(long, env = "TESSERA_ADVERTISE")]
    advertise: Option<String>,
    /// HTTP listen address for /healthz, /readyz and /metrics (off when absent).
    #[arg(long, env = "TESSERA_HTTP", value_parser = parse_addr)]
    http: Option<SocketAddr>,
    /// Where this node's shards, sessions and saved indexes live.
    #[arg(long, env = "TESSERA_DATA_DIR")]
    data_dir: PathBuf,
    /// Membership lease TTL in seconds: a node that stops renewing it is removed after this long.
    #[arg(long, default_value_t = 5)]
    lease_ttl: u64,
    /// Tensor-parallel ranks of a model group spread over node processes (1: all ranks in this process, see --tp).
    #[arg(long, default_value_t = 1)]
    model_world: usize,
    /// This process's rank in that group: 0 serves the model (role `model`), others only compute.
    #[arg(long, default_value_t = 0)]
    model_rank: usize,
    /// Where rank 0 listens for the other ranks (host:port), with --model-world above 1.
    #[arg(long, value_parser = parse_addr)]
    model_group: Option<SocketAddr>,
    /// File holding the group's shared secret (>= 16 bytes), the same on every
    /// rank: joining ranks and rank 0 prove it to each other.
    #[arg(long, env = "TESSERA_MODEL_GROUP_SECRET_FILE")]
    model_group_secret_file: Option<std::path::PathBuf>,
    /// mTLS on the Node listener: --tls-cert, --tls-key and --tls-ca together.
    #[command(flatten)]
    tls: crate::tls::TlsArgs,
    #[command(flatten)]
    node: NodeOpts,
}

/// Arguments of `tessera coordinator`.
#[derive(Args, Debug)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// gRPC listen address of the public Tessera service.
    #[arg(long, env = "TESSERA_GRPC", value_parser = parse_addr)]
    grpc: SocketAddr,
    /// HTTP listen address (/healthz, /readyz, /metrics, the status page, the OpenAI API under /v1).
    #[arg(long, env = "TESSERA_HTTP", value_parser = parse_addr)]
    http: SocketAddr,
    /// Allow listening on addresses other than loopback without --api-keys.
    #[arg(long, env = "TESSERA_INSECURE_LISTEN_ANY")]
    insecure_listen_any: bool,
    /// API key file: one `KEY TENANT ROLE` per line (roles admin, read-write,
    /// read-only; `#` comments); re-read on SIGHUP.
    #[arg(long, env = "TESSERA_API_KEYS_FILE")]
    api_keys: Option<std::path::PathBuf>,
    /// TLS on the public listeners (--tls-cert, --tls-key); with --tls-ca the
    /// same certificate is shown to the nodes, whose certificates the CA checks.
    #[command(flatten)]
    tls: crate::tls::TlsArgs,
    #[command(flatten)]
    coordinator: CoordinatorOpts,
}

/// Arguments of `tessera status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print JSON: {"nodes":[{"id","address","roles","alive"}],"collections":[{"name","replication","shards":[{"shard","replicas","primary","epoch","applied_sequence","replica_sequences"}]}],"models":[{"node","name","tensor_parallel","context_length","default"}]}.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: ServerArg,
}

/// Where etcd is and, when its authentication is on, who we are to it.
#[derive(Args, Debug)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated (http://host:2379,...).
    #[arg(long, env = "TESSERA_ETCD", value_delimiter = ',', required = true)]
    etcd: Vec<String>,
    /// etcd user (with etcd's authentication enabled).
    #[arg(long, env = "TESSERA_ETCD_USER", requires = "etcd_password_file")]
    etcd_user: Option<String>,
    /// File holding that user's password (not a flag, so it stays out of `ps`).
    #[arg(long, env = "TESSERA_ETCD_PASSWORD_FILE", requires = "etcd_user")]
    etcd_password_file: Option<std::path::PathBuf>,
    /// PEM CA that signed etcd's certificate (for https:// endpoints).
    #[arg(long, env = "TESSERA_ETCD_CA")]
    etcd_ca: Option<std::path::PathBuf>,
    /// PEM client certificate for etcd's --client-cert-auth (needs --etcd-key).
    #[arg(long, env = "TESSERA_ETCD_CERT", requires = "etcd_key")]
    etcd_cert: Option<std::path::PathBuf>,
    /// PEM private key of --etcd-cert.
    #[arg(long, env = "TESSERA_ETCD_KEY", requires = "etcd_cert")]
    etcd_key: Option<std::path::PathBuf>,
}

async fn etcd(args: &EtcdArgs) -> anyhow::Result<etcd_client::Client> {
    let endpoints = &args.etcd;
    let mut opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
    if let (Some(user), Some(file)) = (&args.etcd_user, &args.etcd_password_file) {
        let password = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        opts = opts.with_user(user.clone(), password.trim_end_matches(['\n', '\r']).to_string());
    }
    let read = |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    if args.etcd_ca.is_some() || args.etcd_cert.is_some() {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &args.etcd_ca {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&args.etcd_cert, &args.etcd_key) {
            tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        opts = opts.with_tls(tls);
    } else if endpoints.iter().any(|e| e.starts_with("https://")) {
        anyhow::bail!("https:// etcd endpoints need --etcd-ca (the CA that signed etcd's certificate)");
    }
    let mut client = etcd_client::Client::connect(endpoints, Some(opts))
        .await
        .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
    // `connect` succeeds without a server; one call proves it is there (and that we may use it).
    client.status().await.with_context(|| format!("etcd at {} does not answer", endpoints.join(",")))?;
    Ok(client)
}

/// Runs `tessera node` until SIGINT or SIGTERM.
pub async fn node(args: NodeArgs) -> anyhow::Result<()> {
    let telemetry = crate::telemetry::init(&format!("tessera-node-{}", args.id))?;
    let roles = NodeRole::parse_list(&args.roles)?;
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let tls = crate::tls::Tls::cluster(&args.tls)?;
    if let Some(t) = &tls {
        anyhow::ensure!(t.has_ca(), "a node with --tls-cert needs --tls-ca: it accepts Node calls only from clients whose certificate that CA signed");
        // Replication and shard transfers call other nodes as this node.
        tessera_proto::client::use_tls(t.grpc_client().context("client TLS settings")?);
    }
    let client = etcd(&args.etcd).await?;
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
    let http_task = match args.http {
        Some(addr) => Some(
            spawn_http(
                addr,
                base_http_app(ready.clone(), telemetry.metrics.clone()),
                Guards::internal(),
                None,
                stop_rx.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let grpc = tokio::net::TcpListener::bind(args.grpc).await.with_context(|| format!("binding gRPC {}", args.grpc))?;
    let local = grpc.local_addr()?;
    let mut config = build_node_config(&args.node, &args.data_dir, &args.id, roles.clone())?;
    if args.model_world > 1 {
        let addr = args.model_group.context("--model-world above 1 needs --model-group ADDR")?;
        anyhow::ensure!(args.model_rank < args.model_world, "--model-rank must be below --model-world");
        anyhow::ensure!(
            config.models.first().is_none_or(|m| m.tp == 1),
            "--tp and --model-world cannot be combined for the first model (it runs over the group)"
        );
        anyhow::ensure!(roles.contains(&NodeRole::Model), "a model group rank needs the 'model' role");
        let secret_file = args
            .model_group_secret_file
            .as_ref()
            .context("--model-world above 1 needs --model-group-secret-file (the same secret on every rank)")?;
        let bytes = std::fs::read(secret_file).with_context(|| format!("reading {}", secret_file.display()))?;
        let secret = tessera_node::model::tcp::GroupSecret::new(&bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
        config.model_group =
            Some(tessera_node::node::RemoteGroup { rank: args.model_rank, world: args.model_world, addr, secret });
    }
    let shutdown = Shutdown::new();
    let node = Node::start(config, &shutdown).await.context("starting the node")?;
    // Mutual TLS: only holders of a certificate the cluster CA signed may call
    // the Node service (it writes, drops and dumps shards).
    let grpc_tls = tls.as_ref().map(|t| t.grpc_server(true)).transpose()?;
    let grpc_task = spawn_grpc(grpc, None, Some(node.clone()), Guards::internal(), grpc_tls, stop_rx.clone()).await?;

    let advertise = args.advertise.clone().unwrap_or_else(|| local.to_string());
    let scheme = if tls.is_some() { "https" } else { "http" };
    anyhow::ensure!(
        tls.is_none() || !advertise.starts_with("http://"),
        "--advertise {advertise} is plaintext but this node serves TLS: give host:port or https://host:port"
    );
    let address = if advertise.starts_with("http") { advertise } else { format!("{scheme}://{advertise}") };
    // A model rank other than 0 computes for its group but serves no model requests itself.
    let served: Vec<NodeRole> =
        roles.iter().filter(|r| !(args.model_rank > 0 && **r == NodeRole::Model)).copied().collect();
    let record = NodeRecord { id: args.id.clone(), address: address.clone(), roles: served };
    membership::join(client.clone(), record, Duration::from_secs(args.lease_ttl), node.write_fence.clone(), &shutdown)
        .await
        .context("joining the cluster")?;
    ready.store(true, Ordering::SeqCst);
    info!(id = %args.id, grpc = %local, advertise = %address, roles = ?args.roles, "tessera node: serving");

    shutdown_signal().await;
    info!("shutting down");
    ready.store(false, Ordering::SeqCst);
    membership::leave(client, &args.id).await;
    let _ = stop_tx.send(true);
    let _ = grpc_task.await;
    if let Some(t) = http_task {
        let _ = t.await;
    }
    stop_background(&shutdown).await;
    node.shutdown().await;
    info!("stopped cleanly");
    telemetry.shutdown();
    Ok(())
}

/// Runs `tessera coordinator` until SIGINT or SIGTERM.
pub async fn coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    let telemetry = crate::telemetry::init("tessera-coordinator")?;
    check_listen(&[args.grpc, args.http], args.insecure_listen_any || args.api_keys.is_some())?;
    let tls = crate::tls::Tls::cluster(&args.tls)?;
    if let Some(client_tls) = tls.as_ref().and_then(|t| t.grpc_client()) {
        tessera_proto::client::use_tls(client_tls);
    }
    let client = etcd(&args.etcd).await?;
    let nodes = NodeSet::empty(MAX_MESSAGE_BYTES);
    let shutdown = Shutdown::new();
    let revision = node_watch::load_nodes(&client, &nodes).await.context("reading membership")?;
    let (left_tx, mut left_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    shutdown.spawn(node_watch::follow_nodes(client.clone(), nodes.clone(), revision, left_tx));
    let catalog = Catalog::open_etcd(client.clone(), &shutdown).await.context("reading the catalog")?;
    let coordinator = build_coordinator(&args.coordinator, catalog, nodes.clone(), &shutdown)?;
    let keys = args.api_keys.as_deref().map(|p| crate::auth::keys(p, &shutdown)).transpose()?;
    // Placement changes (failover, replica rebuild) are made by one coordinator: the elected leader.
    let me = format!("coordinator-{}-{}", args.grpc, std::process::id());
    let leadership = leader::campaign(client.clone(), me, Duration::from_secs(5), &shutdown);
    let failover = coordinator.clone();
    shutdown.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3));
        loop {
            tokio::select! {
                left = left_rx.recv() => {
                    let Some(id) = left else { break };
                    if leadership.is_leader() {
                        failover.fail_over(&id).await;
                    }
                }
                _ = tick.tick() => {
                    if leadership.is_leader() {
                        failover.reconcile().await;
                        // Scale-out: spread replicas onto new nodes, one move at a time.
                        failover.rebalance_step().await;
                    }
                }
            }
        }
    });

    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);
    let app = with_coordinator_routes(base_http_app(ready.clone(), telemetry.metrics.clone()), &coordinator);
    let guards = Guards::public(keys, &args.coordinator);
    let http_tls = tls.as_ref().map(|t| t.http_acceptor());
    let http_task = spawn_http(args.http, app, guards.clone(), http_tls, stop_rx.clone()).await?;
    let grpc = tokio::net::TcpListener::bind(args.grpc).await.with_context(|| format!("binding gRPC {}", args.grpc))?;
    let local = grpc.local_addr()?;
    let grpc_tls = tls.as_ref().map(|t| t.grpc_server(false)).transpose()?;
    let grpc_task = spawn_grpc(grpc, Some(coordinator), None, guards, grpc_tls, stop_rx.clone()).await?;
    ready.store(true, Ordering::SeqCst);
    info!(grpc = %local, http = %args.http, nodes = nodes.all().len(), "tessera coordinator: serving");

    shutdown_signal().await;
    info!("shutting down");
    ready.store(false, Ordering::SeqCst);
    let _ = stop_tx.send(true);
    let _ = grpc_task.await;
    let _ = http_task.await;
    stop_background(&shutdown).await;
    info!("stopped cleanly");
    telemetry.shutdown();
    Ok(())
}

/// `tessera status`.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let mut c = connect(&args.server).await?;
    let s = rpc(c.cluster_status(pb::ClusterStatusRequest {}).await)?;
    if args.json {
        let nodes: Vec<_> = s
            .nodes
            .iter()
            .map(|n| json!({"id": n.id, "address": n.address, "roles": n.roles, "alive": n.alive, "error": n.error}))
            .collect();
        let collections: Vec<_> = s
            .collections
            .iter()
            .map(|c| {
                let shards: Vec<_> = c
                    .shards
                    .iter()
                    .map(|p| {
                        json!({"shard": p.shard, "replicas": p.replicas, "primary": p.primary, "epoch": p.epoch,
                                    "applied_sequence": p.applied_sequence, "replica_sequences": p.replica_sequences})
                    })
                    .collect();
                json!({"name": c.name, "replication": c.replication, "shards": shards})
            })
            .collect();
        let models: Vec<_> = s
            .models
            .iter()
            .map(|m| {
                json!({"node": m.node, "name": m.name, "tensor_parallel": m.tensor_parallel,
                       "context_length": m.context_length, "default": m.default})
            })
            .collect();
        println!("{}", json!({"nodes": nodes, "collections": collections, "models": models}));
        return Ok(());
    }
    println!("{:<16} {:<28} {:<6} ROLES", "NODE", "ADDRESS", "ALIVE");
    for n in &s.nodes {
        println!("{:<16} {:<28} {:<6} {}", n.id, n.address, if n.alive { "yes" } else { "no" }, n.roles.join(","));
    }
    if !s.models.is_empty() {
        println!(
            "
{:<32} {:<16} {:<4} {:<9} DEFAULT",
            "MODEL", "NODE", "TP", "CONTEXT"
        );
        for m in &s.models {
            let default = if m.default { "yes" } else { "" };
            println!("{:<32} {:<16} {:<4} {:<9} {default}", m.name, m.node, m.tensor_parallel, m.context_length);
        }
    }
    for c in &s.collections {
        println!("\ncollection {} (replication {})", c.name, c.replication);
        for p in &c.shards {
            println!(
                "  shard {:<3} primary {:<12} replicas {:<24} epoch {:<4} applied {}",
                p.shard,
                p.primary,
                p.replicas.join(","),
                p.epoch,
                p.applied_sequence
            );
        }
    }
    Ok(())
}
