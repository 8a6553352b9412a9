//! What the cluster looks like now: nodes with their roles and health,
//! collections with their shards and where they live, model groups. Served as
//! JSON at `GET /status.json` and as a self-refreshing page at `GET /`.
use std::time::Duration;

use axum::extract::State;
use axum::response::Html;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tessera_proto::v1 as pb;
use tessera_types::NodeRole;

use crate::catalog::CollectionMeta;
use crate::coordinator::Coordinator;

/// How long one node may take to answer the status probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A node as the status page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// Node id.
    pub id: String,
    /// Where the coordinator reaches it.
    pub address: String,
    /// Roles it serves.
    pub roles: Vec<String>,
    /// It answered the probe.
    pub healthy: bool,
    /// Why not, when it did not.
    pub error: Option<String>,
    /// Embedding model, when it embeds.
    pub embedder: Option<String>,
    /// Shard replicas it hosts.
    pub shards: usize,
}

/// A shard's placement (from the catalog) and its primary's applied sequence.
#[derive(Debug, Clone, Serialize)]
pub struct PlacementStatus {
    /// Shard number.
    pub shard: u32,
    /// Node ids holding replicas, the primary first.
    pub replicas: Vec<String>,
    /// The node ordering writes.
    pub primary: String,
    /// Placement epoch.
    pub epoch: u64,
    /// Writes the primary has applied (None when it did not answer).
    pub applied_sequence: Option<u64>,
    /// Applied sequence of each replica that answered.
    pub replica_sequences: std::collections::BTreeMap<String, u64>,
}

/// A shard replica's place and counters.
#[derive(Debug, Clone, Serialize)]
pub struct ShardStatus {
    /// Shard number.
    pub shard: u32,
    /// Node hosting it.
    pub node: String,
    /// Chunks stored.
    pub chunks: u64,
    /// Documents stored.
    pub documents: u64,
    /// Writes applied (the shard's sequence number).
    pub sequence: u64,
}

/// A collection with its shards.
#[derive(Debug, Clone, Serialize)]
pub struct CollectionStatus {
    /// Name.
    pub name: String,
    /// Vector dimension.
    pub dimension: u32,
    /// Replicas per shard.
    pub replication: u32,
    /// Documents over all shards.
    pub documents: u64,
    /// Chunks over all shards.
    pub chunks: u64,
    /// Each shard replica found on a live node.
    pub shards: Vec<ShardStatus>,
    /// Where each shard is meant to live.
    pub placement: Vec<PlacementStatus>,
}

/// A model group.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    /// Node of rank 0.
    pub node: String,
    /// Model name.
    pub name: String,
    /// Ranks.
    pub tensor_parallel: u32,
    /// Context window, tokens.
    pub context_length: u32,
    /// Sequences holding KV cache now.
    pub cached_sequences: u32,
    /// Forward steps run.
    pub steps: u64,
    /// The node's first model (what "default" names there).
    pub default: bool,
}

/// See the module documentation.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// Binary version.
    pub version: &'static str,
    /// Every node the coordinator knows.
    pub nodes: Vec<NodeStatus>,
    /// Every collection.
    pub collections: Vec<CollectionStatus>,
    /// Model groups.
    pub models: Vec<ModelStatus>,
}

/// What one node said to the status probe, or why it said nothing.
type Probe = (String, String, Result<pb::NodeInfo, String>);

/// Nodes, models and shard replicas found by probing.
#[derive(Default)]
struct Probed {
    nodes: Vec<NodeStatus>,
    models: Vec<ModelStatus>,
    replicas: Vec<(String, pb::ShardStats)>,
}

fn down(id: String, address: String, error: String) -> NodeStatus {
    NodeStatus { id, address, roles: vec![], healthy: false, error: Some(error), embedder: None, shards: 0 }
}

/// Sorts probe answers into node, model and replica lists.
fn sort_probes(answers: Vec<Probe>) -> Probed {
    let mut out = Probed::default();
    for (id, url, info) in answers {
        let info = match info {
            Ok(info) => info,
            Err(e) => {
                out.nodes.push(down(id, url, e));
                continue;
            }
        };
        for (i, m) in info.models.iter().enumerate() {
            out.models.push(ModelStatus {
                node: id.clone(),
                name: m.name.clone(),
                tensor_parallel: m.tensor_parallel,
                context_length: m.context_length,
                cached_sequences: m.cached_sequences,
                steps: m.steps,
                default: i == 0,
            });
        }
        out.nodes.push(NodeStatus {
            id: id.clone(),
            address: url,
            roles: info.roles.clone(),
            healthy: true,
            error: None,
            embedder: (!info.embedder.is_empty()).then(|| info.embedder.clone()),
            shards: info.shards.len(),
        });
        out.replicas.extend(info.shards.into_iter().map(|s| (id.clone(), s)));
    }
    out
}

/// The replicas of `meta` found on live nodes, by shard then node.
fn shard_statuses(meta: &CollectionMeta, replicas: &[(String, pb::ShardStats)]) -> Vec<ShardStatus> {
    let mut shards: Vec<ShardStatus> = replicas
        .iter()
        .filter(|(_, s)| s.shard.as_ref().is_some_and(|r| r.collection == meta.name))
        .map(|(node, s)| ShardStatus {
            shard: s.shard.as_ref().map(|r| r.shard).unwrap_or(0),
            node: node.clone(),
            chunks: s.chunks,
            documents: s.documents,
            sequence: s.sequence,
        })
        .collect();
    shards.sort_by(|a, b| (a.shard, &a.node).cmp(&(b.shard, &b.node)));
    shards
}

/// Where each shard of `meta` is meant to live, with the sequences its replicas report.
fn placement_statuses(meta: &CollectionMeta, shards: &[ShardStatus], nodes: &[NodeStatus]) -> Vec<PlacementStatus> {
    (0..meta.shards)
        .map(|shard| {
            let (replicas, primary, epoch) = match meta.placement.get(shard as usize) {
                Some(p) => (p.replicas.clone(), p.primary.clone(), p.epoch),
                // Catalogs from before placement: shard s on shard node s mod n.
                None => {
                    let ids: Vec<String> = nodes
                        .iter()
                        .filter(|n| n.roles.iter().any(|r| r == NodeRole::Shard.as_str()))
                        .map(|n| n.id.clone())
                        .collect();
                    let id = if ids.is_empty() { String::new() } else { ids[shard as usize % ids.len()].clone() };
                    (vec![id.clone()], id, 0)
                }
            };
            let applied_sequence = shards.iter().find(|s| s.shard == shard && s.node == primary).map(|s| s.sequence);
            let replica_sequences = shards
                .iter()
                .filter(|s| s.shard == shard && replicas.contains(&s.node))
                .map(|s| (s.node.clone(), s.sequence))
                .collect();
            PlacementStatus { shard, replicas, primary, epoch, applied_sequence, replica_sequences }
        })
        .collect()
}

/// A collection's status: counts from each shard's primary.
fn collection_status(
    meta: CollectionMeta,
    replicas: &[(String, pb::ShardStats)],
    nodes: &[NodeStatus],
) -> CollectionStatus {
    let shards = shard_statuses(&meta, replicas);
    let placement = placement_statuses(&meta, &shards, nodes);
    let primaries: Vec<&ShardStatus> =
        placement.iter().filter_map(|p| shards.iter().find(|s| s.shard == p.shard && s.node == p.primary)).collect();
    CollectionStatus {
        documents: primaries.iter().map(|s| s.documents).sum(),
        chunks: primaries.iter().map(|s| s.chunks).sum(),
        name: meta.name,
        dimension: meta.dimension,
        replication: meta.replication,
        shards,
        placement,
    }
}

impl Coordinator {
    /// Probes every node (2 s each, in parallel) and reads the catalog.
    pub async fn cluster_status(&self) -> ClusterStatus {
        let probes = self.nodes().all().into_iter().map(|n| async move {
            let mut client = n.client.clone();
            let info = match tokio::time::timeout(PROBE_TIMEOUT, client.info(pb::NodeInfoRequest {})).await {
                Ok(Ok(r)) => Ok(r.into_inner()),
                Ok(Err(s)) => Err(s.message().to_string()),
                Err(_) => Err("no answer within 2 s".to_string()),
            };
            (n.id, n.url, info)
        });
        let Probed { mut nodes, models, replicas } = sort_probes(futures::future::join_all(probes).await);
        let catalog = self.catalog().list().unwrap_or_default();
        // Nodes that hold placed shards but are not registered (crashed, cut off) are shown as down.
        for id in catalog.iter().flat_map(|m| m.placement.iter().flat_map(|p| p.replicas.iter())) {
            if !nodes.iter().any(|n| &n.id == id) {
                let why = "not registered in the cluster (no live membership lease)".to_string();
                nodes.push(down(id.clone(), String::new(), why));
            }
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        let collections = catalog.into_iter().map(|meta| collection_status(meta, &replicas, &nodes)).collect();
        ClusterStatus { version: env!("CARGO_PKG_VERSION"), nodes, collections, models }
    }
}

/// `GET /` (the page) and `GET /status.json`.
pub fn router(coordinator: Coordinator) -> Router {
    Router::new()
        .route("/", get(|| async { Html(include_str!("status.html")) }))
        .route("/status.json", get(status_json))
        .with_state(coordinator)
}

async fn status_json(State(c): State<Coordinator>) -> Json<ClusterStatus> {
    Json(c.cluster_status().await)
}

impl ClusterStatus {
    /// The gRPC form (`tessera status`).
    pub fn to_pb(&self) -> pb::ClusterStatusResponse {
        pb::ClusterStatusResponse {
            nodes: self
                .nodes
                .iter()
                .map(|n| pb::NodeState {
                    id: n.id.clone(),
                    address: n.address.clone(),
                    roles: n.roles.clone(),
                    alive: n.healthy,
                    error: n.error.clone().unwrap_or_default(),
                })
                .collect(),
            collections: self
                .collections
                .iter()
                .map(|c| pb::CollectionPlacement {
                    name: c.name.clone(),
                    replication: c.replication,
                    shards: c
                        .placement
                        .iter()
                        .map(|p| pb::ShardState {
                            shard: p.shard,
                            replicas: p.replicas.clone(),
                            primary: p.primary.clone(),
                            epoch: p.epoch,
                            applied_sequence: p.applied_sequence.unwrap_or(0),
                            replica_sequences: p.replica_sequences.clone().into_iter().collect(),
                        })
                        .collect(),
                })
                .collect(),
            models: self
                .models
                .iter()
                .map(|m| pb::ModelPlacement {
                    node: m.node.clone(),
                    name: m.name.clone(),
                    tensor_parallel: m.tensor_parallel,
                    context_length: m.context_length,
                    default: m.default,
                })
                .collect(),
        }
    }
}
