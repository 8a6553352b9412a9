//! LoRA adapters across the model nodes: loading one on every node that
//! serves its base, unloading it everywhere, and listing what is served.
//! Requests then name an adapter in `model` and route like a model name
//! (`generate.rs`: a node that does not serve it answers NOT_FOUND and the
//! next is asked).
use tessera_proto::v1 as pb;
use tessera_types::NodeRole;
use tonic::Code;

use crate::coordinator::Coordinator;
use crate::error::{CoordinatorError, Result};

impl Coordinator {
    /// Loads the adapter on every model node serving its base (each reads
    /// the folder on its own disk); NOT_FOUND when none serves the base.
    pub async fn load_adapter(&self, req: pb::LoadAdapterRequest) -> Result<pb::AdapterInfo> {
        if req.name.is_empty() || req.path.is_empty() {
            return Err(CoordinatorError::invalid("give the adapter's name and its folder (path)"));
        }
        let nodes = self.nodes.with_role(NodeRole::Model);
        if nodes.is_empty() {
            return Err(CoordinatorError::unavailable("no node with the 'model' role is available"));
        }
        let mut loaded = None;
        let mut not_found = None;
        for node in nodes {
            match node.client.clone().load_adapter(req.clone()).await {
                Ok(r) => {
                    loaded.get_or_insert(r.into_inner());
                }
                // This node does not serve the base model; others may.
                Err(s) if s.code() == Code::NotFound => not_found = Some(CoordinatorError::node(&node, s)),
                Err(s) => return Err(CoordinatorError::node(&node, s)),
            }
        }
        match (loaded, not_found) {
            (Some(info), _) => Ok(info),
            (None, Some(e)) => Err(e),
            (None, None) => Err(CoordinatorError::unavailable("no model node answered")),
        }
    }

    /// Unloads adapter `name` on every model node that has it.
    pub async fn unload_adapter(&self, name: &str) -> Result<pb::UnloadAdapterResponse> {
        let mut nodes = 0;
        for node in self.nodes.with_role(NodeRole::Model) {
            let req = pb::UnloadAdapterRequest { name: name.to_string() };
            match node.client.clone().unload_adapter(req).await {
                Ok(_) => nodes += 1,
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => return Err(CoordinatorError::node(&node, s)),
            }
        }
        if nodes == 0 {
            let name: String = name.chars().take(200).collect();
            return Err(CoordinatorError::not_found(format!("no model node has an adapter '{name}'")));
        }
        Ok(pb::UnloadAdapterResponse { nodes })
    }

    /// Every adapter of every reachable model node (one entry per node).
    pub async fn list_adapters(&self) -> Result<pb::ListAdaptersResponse> {
        let mut adapters = Vec::new();
        for node in self.nodes.with_role(NodeRole::Model) {
            if let Ok(r) = node.client.clone().list_adapters(pb::ListAdaptersRequest {}).await {
                adapters.extend(r.into_inner().adapters);
            }
        }
        Ok(pb::ListAdaptersResponse { adapters })
    }
}

impl Coordinator {
    /// Starts a fine-tuning job on a model node serving the request's base;
    /// a collection's chunk texts are gathered first (each shard from the
    /// first replica that answers) and sent as the job's data.
    pub async fn fine_tune(&self, mut req: pb::FineTuneRequest) -> Result<tonic::Streaming<pb::FineTuneProgress>> {
        if req.out.is_empty() {
            return Err(CoordinatorError::invalid("give the adapter's output folder (out)"));
        }
        req.texts.clear();
        if !req.collection.is_empty() {
            req.texts = self.chunk_texts(&req.collection).await?;
            if req.texts.is_empty() {
                return Err(CoordinatorError::invalid(format!("collection '{}' has no chunks", req.collection)));
            }
            req.data_jsonl.clear();
        } else if req.data_jsonl.is_empty() {
            return Err(CoordinatorError::invalid("give training data (data_jsonl) or a collection"));
        }
        let model = req.model.clone();
        let r = self
            .on_role_passing(NodeRole::Model, &[Code::Unavailable, Code::NotFound], |mut c| {
                let req = req.clone();
                async move { c.fine_tune(req).await }
            })
            .await;
        match r {
            Err(e) if e.code() == Code::NotFound => Err(CoordinatorError::not_found(format!(
                "no model node serves the base model '{model}' for fine-tuning"
            ))),
            other => other,
        }
    }

    /// Every chunk's text of a collection, in shard order.
    async fn chunk_texts(&self, collection: &str) -> Result<Vec<String>> {
        let meta = self.collection(collection)?;
        let mut texts = Vec::new();
        for shard in 0..meta.shards {
            let req = pb::ShardStatsRequest { shard: Some(pb::ShardRef { collection: meta.name.clone(), shard }) };
            let mut last = None;
            let mut got = false;
            for node in self.read_nodes(&meta, shard)? {
                match node.client.clone().shard_snapshot(req.clone()).await {
                    Ok(r) => {
                        let snap = r.into_inner();
                        texts.extend(
                            snap.writes.into_iter().flat_map(|w| w.chunks).filter_map(|c| c.chunk).map(|c| c.text),
                        );
                        got = true;
                        break;
                    }
                    Err(s) => last = Some(CoordinatorError::node(&node, s)),
                }
            }
            if !got {
                return Err(last.unwrap_or_else(|| CoordinatorError::unavailable(format!("shard {shard}: no replica"))));
            }
        }
        Ok(texts)
    }
}
