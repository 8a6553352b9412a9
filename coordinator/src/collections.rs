//! Collections: create (also on first ingest), list with counts, drop.
use tessera_proto::v1 as pb;
use tessera_types::{NodeRole, Quantization, SearchSettings};
use tracing::{info, warn};

use crate::catalog::{validate_name, CollectionMeta};
use crate::coordinator::{with_deadline, Coordinator};
use crate::error::{CoordinatorError, Result};
use crate::placement::place;
use crate::tenancy::Scope;

impl Coordinator {
    /// Creates a collection and opens its shards on the nodes its placement
    /// names; `if_missing` makes an existing one a success (used by ingest).
    pub(crate) async fn create(
        &self,
        name: &str,
        shards: u32,
        replication: u32,
        settings: SearchSettings,
        quantization: Quantization,
        if_missing: bool,
    ) -> Result<CollectionMeta> {
        validate_name(name)?;
        settings.validate().map_err(|e| CoordinatorError::invalid(e.to_string()))?;
        let shards = if shards == 0 { self.config.default_shards } else { shards };
        if shards > self.config.max_shards {
            return Err(CoordinatorError::invalid(format!("shards must be at most {}", self.config.max_shards)));
        }
        let replication = replication.max(1);
        let shard_nodes = self.nodes.with_role(NodeRole::Shard);
        if replication as usize > shard_nodes.len() {
            return Err(CoordinatorError::failed_precondition(format!(
                "replication {replication} needs at least {replication} shard nodes; this deployment has {}",
                shard_nodes.len()
            )));
        }
        let _guard = self.create_lock.lock().await;
        if let Some(existing) = self.catalog.get(name)? {
            return exists(existing, if_missing);
        }
        let tenant = crate::tenancy::tenant_of(name);
        let held = self.catalog.list()?.iter().filter(|m| crate::tenancy::tenant_of(&m.name) == tenant).count();
        if held >= self.config.max_collections_per_tenant {
            return Err(CoordinatorError::TooLarge(format!(
                "this tenant already holds {held} collections, the most allowed ({}); drop one first",
                self.config.max_collections_per_tenant
            )));
        }
        let (dimension, embedder) = self.embedder_dimension().await?;
        let meta = CollectionMeta {
            name: name.to_string(),
            dimension,
            metric: "cosine".into(),
            shards,
            replication,
            embedder,
            placement: place(name, shards, replication, &shard_nodes),
            settings,
            quantization,
        };
        self.open_shards(&meta).await?;
        if !self.catalog.create(&meta).await? {
            // Another coordinator created it meanwhile (the catalog create is a compare-and-swap).
            return exists(self.collection(name)?, if_missing);
        }
        info!(collection = name, shards, %quantization, "collection created");
        Ok(meta)
    }

    /// The embedder's dimension and model name, which fix a new collection's.
    async fn embedder_dimension(&self) -> Result<(u32, String)> {
        let node = self.role_node(NodeRole::Embedder)?;
        let info = node
            .client
            .clone()
            .info(pb::NodeInfoRequest {})
            .await
            .map_err(|s| CoordinatorError::node(&node, s))?
            .into_inner();
        if info.dimension == 0 {
            return Err(CoordinatorError::failed_precondition(
                "no embedder is available to fix the collection's dimension",
            ));
        }
        Ok((info.dimension, info.embedder))
    }

    /// Opens every placed replica of a new collection.
    async fn open_shards(&self, meta: &CollectionMeta) -> Result<()> {
        for (shard, p) in meta.placement.iter().enumerate() {
            for id in &p.replicas {
                let node =
                    self.nodes.get(id).ok_or_else(|| CoordinatorError::unavailable(format!("node '{id}' left")))?;
                node.client
                    .clone()
                    .open_shard(pb::OpenShardRequest {
                        shard: Some(pb::ShardRef { collection: meta.name.clone(), shard: shard as u32 }),
                        dimension: meta.dimension,
                        quantization: meta.quantization.to_string(),
                    })
                    .await
                    .map_err(|s| CoordinatorError::node(&node, s))?;
            }
        }
        Ok(())
    }

    /// The collections `scope` sees, under the names it knows them by, with
    /// their chunk and document counts. Others' collections are left out before
    /// any shard is asked for counts: one tenant's listing costs nothing on
    /// another tenant's shards.
    pub(crate) async fn list_collections(&self, scope: &Scope) -> Result<Vec<pb::CollectionInfo>> {
        let mut collections = Vec::new();
        for meta in self.catalog.list()? {
            let Some(shown) = scope.shown_collection(&meta.name) else { continue };
            let (chunks, documents) = self.counts(&meta).await;
            let mut info = crate::convert::collection_info(&meta, chunks, documents);
            info.name = shown;
            collections.push(info);
        }
        Ok(collections)
    }

    /// Drops every replica of a collection's shards, then its catalog record.
    /// Followers too: placement is by name, so a re-created collection lands
    /// on the same nodes, where a follower's old replica would bring the
    /// dropped documents back (or, with another quantization, refuse the
    /// new shard). A replica on a node that is gone is left for it to drop.
    pub(crate) async fn drop_collection(&self, name: &str) -> Result<bool> {
        let meta = self.collection(name)?;
        let _guard = self.create_lock.lock().await;
        for shard in 0..meta.shards {
            let req = pb::DropShardRequest { shard: Some(pb::ShardRef { collection: meta.name.clone(), shard }) };
            let primary = self.node_for_shard(&meta, shard)?;
            primary.client.clone().drop_shard(req.clone()).await.map_err(|s| CoordinatorError::node(&primary, s))?;
            let followers = meta.placement.get(shard as usize).map(|p| p.replicas.clone()).unwrap_or_default();
            for id in followers.iter().filter(|id| **id != primary.id) {
                let Some(node) = self.nodes.get(id) else {
                    warn!(collection = %meta.name, shard, node = %id, "a replica's node is gone; not dropped");
                    continue;
                };
                if let Err(s) = node.client.clone().drop_shard(req.clone()).await {
                    warn!(collection = %meta.name, shard, node = %id, error = %s.message(), "dropping a follower replica failed");
                }
            }
        }
        Ok(self.catalog.remove(&meta.name).await?)
    }

    /// Chunks and documents over all shards (each from the first replica that answers).
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
}

/// An existing collection: the answer with `if_missing`, an error without.
fn exists(existing: CollectionMeta, if_missing: bool) -> Result<CollectionMeta> {
    if if_missing {
        Ok(existing)
    } else {
        Err(CoordinatorError::already_exists(format!("collection '{}' already exists", existing.name)))
    }
}
