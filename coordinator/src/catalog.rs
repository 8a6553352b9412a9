//! The collection catalog: which collections exist and how they are split.
//!
//! Kept in a sled tree in the coordinator's data dir; in cluster mode this moves
//! to etcd, with the same [`CollectionMeta`] as the value.
use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A collection's fixed settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectionMeta {
    /// Name: ASCII letters, digits, `-`, `_`, `.`; at most 128 bytes.
    pub name: String,
    /// Vector dimension (the embedder's).
    pub dimension: u32,
    /// Similarity metric (always "cosine" for now).
    pub metric: String,
    /// Number of shards; a document lives on `hash(doc_id) mod shards`.
    pub shards: u32,
    /// Replicas per shard.
    pub replication: u32,
    /// Embedding model name.
    pub embedder: String,
}

/// Catalog failures.
#[derive(Debug, Error)]
pub enum CatalogError {
    /// sled failed.
    #[error("catalog storage: {0}")]
    Storage(#[from] sled::Error),
    /// A record does not decode.
    #[error("catalog record for '{0}' is corrupt")]
    Corrupt(String),
}

/// See the module documentation.
#[derive(Clone)]
pub struct Catalog {
    tree: sled::Tree,
}

impl Catalog {
    /// Opens the catalog under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, CatalogError> {
        let db = sled::open(data_dir.join("coordinator.sled"))?;
        Ok(Self { tree: db.open_tree("collections")? })
    }

    /// The collection, if it exists.
    pub fn get(&self, name: &str) -> Result<Option<CollectionMeta>, CatalogError> {
        self.tree
            .get(name.as_bytes())?
            .map(|v| serde_json::from_slice(&v).map_err(|_| CatalogError::Corrupt(name.to_string())))
            .transpose()
    }

    /// Every collection, by name.
    pub fn list(&self) -> Result<Vec<CollectionMeta>, CatalogError> {
        self.tree
            .iter()
            .map(|item| {
                let (k, v) = item?;
                serde_json::from_slice(&v).map_err(|_| CatalogError::Corrupt(String::from_utf8_lossy(&k).into()))
            })
            .collect()
    }

    /// Stores a collection durably.
    pub async fn put(&self, meta: &CollectionMeta) -> Result<(), CatalogError> {
        let json = serde_json::to_vec(meta).map_err(|_| CatalogError::Corrupt(meta.name.clone()))?;
        self.tree.insert(meta.name.as_bytes(), json)?;
        self.tree.flush_async().await?;
        Ok(())
    }

    /// Removes a collection durably; false when absent.
    pub async fn remove(&self, name: &str) -> Result<bool, CatalogError> {
        let existed = self.tree.remove(name.as_bytes())?.is_some();
        self.tree.flush_async().await?;
        Ok(existed)
    }
}

/// Checks a collection name (it becomes part of storage keys and file names).
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("collection name must not be empty".into());
    }
    if name.len() > 128 {
        return Err("collection name is longer than 128 bytes".into());
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) || name.starts_with('.') {
        return Err(format!("invalid collection name '{name}': use ASCII letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

/// The shard that holds a document: FNV-1a of its id, modulo the shard count.
/// Stable across processes and versions, unlike std's randomised hasher.
pub fn shard_for(doc_id: &str, shards: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in doc_id.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("docs_v2.en-1").is_ok());
        for bad in ["", "a/b", "../x", "中文", ".hidden", &"x".repeat(129)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shard_hash_is_stable_and_spread() {
        assert_eq!(shard_for("a", 1), 0);
        assert_eq!(shard_for("guide/cp.md", 4), shard_for("guide/cp.md", 4));
        let mut counts = [0; 4];
        for i in 0..1000 {
            counts[shard_for(&format!("doc-{i}"), 4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 180), "{counts:?}");
    }

    #[tokio::test]
    async fn catalog_round_trip_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let meta = CollectionMeta {
            name: "docs".into(),
            dimension: 384,
            metric: "cosine".into(),
            shards: 3,
            replication: 1,
            embedder: "m".into(),
        };
        {
            let c = Catalog::open(dir.path()).unwrap();
            c.put(&meta).await.unwrap();
        }
        // sled's flusher thread may still hold the file lock for a moment after drop.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let c = loop {
            match Catalog::open(dir.path()) {
                Ok(c) => break c,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(c.get("docs").unwrap(), Some(meta));
        assert_eq!(c.list().unwrap().len(), 1);
        assert!(c.remove("docs").await.unwrap());
        assert!(c.get("docs").unwrap().is_none());
    }
}
