//! Writes: ingest (load and split on a loader, embed, write per shard) and delete.
use std::collections::BTreeMap;

use futures::future::try_join_all;
use tessera_proto::v1 as pb;
use tessera_types::{NodeRole, SearchSettings};
use tracing::info;

use crate::catalog::{shard_for, validate_name, CollectionMeta};
use crate::coordinator::{with_deadline, Coordinator};
use crate::error::{CoordinatorError, Result};

/// Document writes grouped by shard number.
type PerShard = BTreeMap<u32, Vec<pb::DocumentWrite>>;

/// Chunk size and overlap of a request: 0 means the defaults (1000 / 200).
fn chunking(req: &pb::IngestRequest) -> Result<(u32, u32)> {
    let (chunk_size, chunk_overlap) = match req.chunk_size {
        0 => (1000, if req.chunk_overlap == 0 { 200 } else { req.chunk_overlap }),
        n => (n, req.chunk_overlap),
    };
    if chunk_size < tessera_types::limits::MIN_CHUNK_SIZE {
        return Err(CoordinatorError::invalid(format!(
            "chunk_size must be at least {}, got {chunk_size}",
            tessera_types::limits::MIN_CHUNK_SIZE
        )));
    }
    if chunk_overlap >= chunk_size {
        return Err(CoordinatorError::invalid(format!(
            "chunk_overlap ({chunk_overlap}) must be smaller than chunk_size ({chunk_size})"
        )));
    }
    Ok((chunk_size, chunk_overlap))
}

impl Coordinator {
    /// Loads, splits, embeds and writes files and documents, creating the
    /// collection if needed. Files that fail to load are reported, not fatal.
    pub(crate) async fn ingest(&self, req: pb::IngestRequest) -> Result<pb::IngestResponse> {
        validate_name(&req.collection)?;
        if req.files.is_empty() && req.documents.is_empty() {
            return Err(CoordinatorError::invalid("nothing to ingest: give files or documents"));
        }
        let (chunk_size, chunk_overlap) = chunking(&req)?;
        let meta = self.create(&req.collection, 0, 0, SearchSettings::default(), true).await?;
        let load = pb::LoadAndSplitRequest {
            files: req.files,
            documents: req.documents,
            chunk_size,
            chunk_overlap,
            splitter: req.splitter,
        };
        let loaded = self
            .on_role(NodeRole::Loader, |mut client| {
                let load = load.clone();
                async move { client.load_and_split(load).await }
            })
            .await?;
        let errors = loaded.errors;
        let chunk_count: usize = loaded.documents.iter().map(|d| d.chunks.len()).sum();
        if chunk_count > tessera_types::limits::MAX_CHUNKS_PER_REQUEST {
            return Err(CoordinatorError::TooLarge(format!(
                "this request splits into {chunk_count} chunks, over the limit of {} per request; send fewer files at once or a larger chunk_size",
                tessera_types::limits::MAX_CHUNKS_PER_REQUEST
            )));
        }
        let texts: Vec<String> =
            loaded.documents.iter().flat_map(|d| d.chunks.iter().map(|c| c.text.clone())).collect();
        let mut vectors = self.embed_texts(texts).await?.vectors.into_iter().map(|v| v.values);

        let mut per_shard = PerShard::new();
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
        Ok(pb::IngestResponse { documents, chunks, errors })
    }

    /// Deletes documents (each on the one shard its id hashes to).
    pub(crate) async fn delete(&self, req: pb::DeleteRequest) -> Result<pb::DeleteResponse> {
        let meta = self.collection(&req.collection)?;
        if req.doc_ids.is_empty() || req.doc_ids.iter().any(|d| d.is_empty()) {
            return Err(CoordinatorError::invalid("give one or more non-empty document ids"));
        }
        let mut per_shard = PerShard::new();
        for doc_id in req.doc_ids {
            per_shard.entry(shard_for(&doc_id, meta.shards)).or_default().push(pb::DocumentWrite {
                doc_id,
                delete: true,
                chunks: vec![],
            });
        }
        let outcomes = self.write_shards(&meta, per_shard).await?;
        Ok(pb::DeleteResponse {
            documents: outcomes.iter().map(|o| o.documents).sum(),
            chunks: outcomes.iter().map(|o| o.chunks).sum(),
        })
    }

    /// Sends each shard its document writes, all shards in parallel; answers once every
    /// shard has made its writes durable on as many replicas as `write_acks` asks.
    async fn write_shards(&self, meta: &CollectionMeta, per_shard: PerShard) -> Result<Vec<pb::ShardWriteResponse>> {
        let writes = per_shard.into_iter().map(|(shard, writes)| self.write_shard(meta, shard, writes));
        try_join_all(writes).await
    }

    async fn write_shard(
        &self,
        meta: &CollectionMeta,
        shard: u32,
        writes: Vec<pb::DocumentWrite>,
    ) -> Result<pb::ShardWriteResponse> {
        let collection = meta.name.as_str();
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
            return Err(CoordinatorError::unavailable(format!(
                "shard {shard} of '{collection}' has {} of {replicas} replicas alive; a write needs {min_acks}",
                followers.len() + 1
            )));
        }
        let request =
            pb::ShardWriteRequest { shard: Some(shard_ref), writes, follower_urls: followers, min_acks, epoch };
        let resp = node
            .client
            .clone()
            .shard_write(with_deadline(request, self.config.write_deadline))
            .await
            .map_err(|s| CoordinatorError::node(&node, s))?;
        Ok(resp.into_inner())
    }
}
