//! Wire conversions of what only the coordinator knows (collection records).
//! Shared types convert in `tessera_proto::convert`.
use tessera_proto::v1 as pb;

use crate::catalog::CollectionMeta;

/// A collection's wire description with its counts.
pub fn collection_info(meta: &CollectionMeta, chunks: u64, documents: u64) -> pb::CollectionInfo {
    pb::CollectionInfo {
        name: meta.name.clone(),
        dimension: meta.dimension,
        metric: meta.metric.clone(),
        shards: meta.shards,
        replication: meta.replication,
        embedder: meta.embedder.clone(),
        chunks,
        documents,
        settings: Some(meta.settings.into()),
        quantization: meta.quantization.to_string(),
    }
}
