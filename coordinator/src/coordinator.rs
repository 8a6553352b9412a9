//! The [`Coordinator`] value and what every concern shares: its parts, node
//! picking by role with failover, collection lookup.
//!
//! The operations themselves are split by concern, each file an `impl
//! Coordinator` block: `collections`, `ingest`, `search`, `sessions`,
//! `generate`, `placement/` (failover, rebalance), `ask/` (the RAG chain); `grpc` is the
//! thin `Tessera` service over them.
use std::sync::Arc;
use std::time::Duration;

use tessera_proto::client::NodeClient;
use tessera_proto::shutdown::Shutdown;
use tessera_types::NodeRole;
use tokio::sync::Mutex;
use tonic::{Code, Request};

use crate::catalog::{validate_name, Catalog, CollectionMeta};
use crate::chain::PromptLibrary;
use crate::config::CoordinatorConfig;
use crate::error::{CoordinatorError, Result};
use crate::nodes::{NodeRef, NodeSet};

/// Routes the public API over the nodes: validates requests, sends loading,
/// embedding, shard, model and session work to nodes over the internal `Node`
/// service, merges what comes back and runs the chains. Holds no data of its own
/// beyond the catalog handle; cloning shares everything.
#[derive(Clone)]
pub struct Coordinator {
    pub(crate) config: CoordinatorConfig,
    pub(crate) catalog: Catalog,
    pub(crate) nodes: NodeSet,
    /// Serialises collection create and drop in this process (the catalog's
    /// compare-and-swap covers other coordinators).
    pub(crate) create_lock: Arc<Mutex<()>>,
    pub(crate) prompts: Arc<PromptLibrary>,
    /// Background jobs (session summaries) stop with the process.
    pub(crate) background: Shutdown,
}

/// A request that the node must answer within `deadline` (gRPC `grpc-timeout`).
pub(crate) fn with_deadline<T>(message: T, deadline: Duration) -> Request<T> {
    let mut r = Request::new(message);
    r.set_timeout(deadline);
    r
}

impl Coordinator {
    /// A coordinator over `nodes`, keeping its catalog in `catalog`.
    pub fn new(config: CoordinatorConfig, catalog: Catalog, nodes: NodeSet) -> Self {
        Self::with_prompts(config, catalog, nodes, PromptLibrary::with_defaults())
    }

    /// As [`Coordinator::new`], with a template library (defaults plus user templates).
    pub fn with_prompts(config: CoordinatorConfig, catalog: Catalog, nodes: NodeSet, prompts: PromptLibrary) -> Self {
        Self {
            config,
            catalog,
            nodes,
            create_lock: Arc::default(),
            prompts: Arc::new(prompts),
            background: Shutdown::new(),
        }
    }

    /// Runs this coordinator's background jobs under `shutdown` (the process's
    /// stop signal), so stopping the process ends and awaits them.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.background = shutdown;
        self
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

    /// A node serving `role`, round robin.
    pub(crate) fn role_node(&self, role: NodeRole) -> Result<NodeRef> {
        self.nodes
            .pick(role)
            .ok_or_else(|| CoordinatorError::unavailable(format!("no node with the '{role}' role is available")))
    }

    /// Calls a node serving `role` (round robin); when it is unreachable or gone
    /// (`UNAVAILABLE`, e.g. a node that died and has not left membership yet), the
    /// call is retried on the next node with that role. Other errors are returned.
    pub(crate) async fn on_role<T, F, Fut>(&self, role: NodeRole, call: F) -> Result<T>
    where
        F: Fn(NodeClient) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.on_role_passing(role, &[Code::Unavailable], call).await
    }

    /// [`Coordinator::on_role`], moving on to the next node on any of the
    /// codes in `next_on` (a model node that does not serve the named model
    /// answers NOT_FOUND, and another may serve it).
    pub(crate) async fn on_role_passing<T, F, Fut>(&self, role: NodeRole, next_on: &[Code], call: F) -> Result<T>
    where
        F: Fn(NodeClient) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.on_role_passing_at(role, next_on, call).await.map(|(r, _)| r)
    }

    /// [`Coordinator::on_role_passing`], also saying which node answered.
    pub(crate) async fn on_role_passing_at<T, F, Fut>(
        &self,
        role: NodeRole,
        next_on: &[Code],
        call: F,
    ) -> Result<(T, String)>
    where
        F: Fn(NodeClient) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let first = self.role_node(role)?;
        let mut order = vec![first.clone()];
        order.extend(self.nodes.with_role(role).into_iter().filter(|n| n.id != first.id));
        let mut last = None;
        for node in order {
            match call(node.client.clone()).await {
                Ok(r) => return Ok((r.into_inner(), node.id.clone())),
                Err(s) if next_on.contains(&s.code()) => last = Some(CoordinatorError::node(&node, s)),
                Err(s) => return Err(CoordinatorError::node(&node, s)),
            }
        }
        Err(last.unwrap_or_else(|| CoordinatorError::unavailable(format!("no node with the '{role}' role answered"))))
    }

    /// The catalog record of an existing collection.
    pub(crate) fn collection(&self, name: &str) -> Result<CollectionMeta> {
        validate_name(name)?;
        self.catalog
            .get(name)?
            .ok_or_else(|| CoordinatorError::not_found(format!("collection '{name}' does not exist")))
    }
}
