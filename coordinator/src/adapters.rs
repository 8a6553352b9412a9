//! LoRA adapters across the model nodes: loading one on every node that
//! serves its base, unloading it everywhere, and listing what is served.
//! Requests then name an adapter in `model` and route like a model name
//! (`generate.rs`: a node that does not serve it answers NOT_FOUND and the
//! next is asked).
//!
//! A finished fine-tune is registered in the catalog ([`AdapterRecord`]) and
//! copied, as bytes read from the node that trained it, to every other model
//! node serving its base; a later `LoadAdapter` without a path loads the
//! registered adapter the same way from any node still holding a copy.
use tessera_proto::v1 as pb;
use tessera_types::NodeRole;
use tonic::Code;
use tracing::{info, warn};

use crate::catalog::AdapterRecord;
use crate::coordinator::Coordinator;
use crate::error::{CoordinatorError, Result};

/// What copying an adapter to the model nodes gave: the first node's
/// answer, the nodes that loaded it, the last failure other than NOT_FOUND.
type CopyOutcome = (Option<pb::AdapterInfo>, Vec<String>, Option<CoordinatorError>);

impl Coordinator {
    /// Loads the adapter on every model node serving its base (each reads
    /// the folder on its own disk, or, without a path, gets the registered
    /// adapter's files); NOT_FOUND when none serves the base.
    pub async fn load_adapter(&self, mut req: pb::LoadAdapterRequest) -> Result<pb::AdapterInfo> {
        if req.name.is_empty() {
            return Err(CoordinatorError::invalid("give the adapter's name"));
        }
        req.files = None;
        if req.path.is_empty() {
            return self.load_registered(&req.name, &req.model).await;
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

    /// Loads the registered adapter `name` on every model node serving its
    /// base, its files read from the first live node holding a copy; the
    /// nodes that now hold one are recorded.
    async fn load_registered(&self, name: &str, model: &str) -> Result<pb::AdapterInfo> {
        let shown: String = name.chars().take(200).collect();
        let Some(mut record) = self.catalog.adapter(name).await? else {
            return Err(CoordinatorError::not_found(format!(
                "no adapter '{shown}' is registered; give its folder (path) to load one from disk"
            )));
        };
        if !model.is_empty() && !tessera_types::names_default_model(model) && model != record.model {
            return Err(CoordinatorError::invalid(format!(
                "adapter '{shown}' was trained on '{}', not '{model}'",
                record.model
            )));
        }
        let files = self.adapter_files(&record).await?;
        let (first, holders, failed) = self.copy_to_model_nodes(&record, files).await;
        for h in holders {
            if !record.holders.contains(&h) {
                record.holders.push(h);
            }
        }
        self.catalog.put_adapter(&record).await?;
        match (first, failed) {
            (Some(info), _) => Ok(info),
            // Every node that serves the base failed: say why, not "none serves it".
            (None, Some(e)) => Err(e),
            (None, None) => Err(CoordinatorError::not_found(format!("no model node serves '{}'", record.model))),
        }
    }

    /// The files of `record`, from the first live node holding them.
    async fn adapter_files(&self, record: &AdapterRecord) -> Result<pb::AdapterFiles> {
        let mut last = None;
        for id in &record.holders {
            let Some(node) = self.nodes.get(id) else { continue };
            match node.client.clone().read_adapter(pb::ReadAdapterRequest { name: record.name.clone() }).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) => last = Some(CoordinatorError::node(&node, s)),
            }
        }
        Err(last.unwrap_or_else(|| {
            CoordinatorError::unavailable(format!(
                "no node holding adapter '{}' is up (held by {})",
                record.name,
                record.holders.join(", ")
            ))
        }))
    }

    /// Sends `files` to every model node; a node that does not
    /// serve the base (NOT_FOUND) is passed over, another failure is logged
    /// and passed over too (one node down must not keep the rest without it).
    /// Returns the first node's answer, the nodes that loaded it and the last
    /// failure other than NOT_FOUND.
    async fn copy_to_model_nodes(&self, record: &AdapterRecord, files: pb::AdapterFiles) -> CopyOutcome {
        let mut first = None;
        let mut loaded = Vec::new();
        let mut failed = None;
        for node in self.nodes.with_role(NodeRole::Model) {
            let req = pb::LoadAdapterRequest {
                name: record.name.clone(),
                path: String::new(),
                model: record.model.clone(),
                files: Some(files.clone()),
            };
            match node.client.clone().load_adapter(req).await {
                Ok(r) => {
                    first.get_or_insert(r.into_inner());
                    loaded.push(node.id.clone());
                }
                Err(s) if s.code() == Code::NotFound => {}
                Err(s) => {
                    warn!(node = %node.id, adapter = %record.name, error = %s.message(), "copying an adapter failed");
                    failed = Some(CoordinatorError::node(&node, s));
                }
            }
        }
        (first, loaded, failed)
    }

    /// Registers the adapter `name` that node `trainer` just trained and
    /// loaded, and copies it to every model node serving its base.
    pub(crate) async fn register_trained(&self, trainer: &str, name: &str) -> Result<()> {
        let mut record =
            AdapterRecord { name: name.to_string(), model: String::new(), holders: vec![trainer.to_string()] };
        let files = self.adapter_files(&record).await?;
        if files.model.is_empty() {
            return Err(CoordinatorError::unavailable(format!("node '{trainer}' no longer serves adapter '{name}'")));
        }
        record.model = files.model.clone();
        // The trainer too: it then keeps a copy in its data dir, which outlives
        // an unload (a loaded adapter's folder is only known while loaded).
        let (_, copies, _) = self.copy_to_model_nodes(&record, files).await;
        for h in copies {
            if !record.holders.contains(&h) {
                record.holders.push(h);
            }
        }
        self.catalog.put_adapter(&record).await?;
        info!(adapter = name, holders = ?record.holders, "trained adapter registered");
        Ok(())
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
    /// Also returns the id of the node running the job.
    pub async fn fine_tune(
        &self,
        mut req: pb::FineTuneRequest,
    ) -> Result<(tonic::Streaming<pb::FineTuneProgress>, String)> {
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
            .on_role_passing_at(NodeRole::Model, &[Code::Unavailable, Code::NotFound], |mut c| {
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
