//! The collection catalog: which collections exist and how they are split.
//!
//! In `tessera up` it is a sled tree in the coordinator's data dir; in cluster
//! mode it is etcd (`/tessera/collections/NAME`, shared by every coordinator,
//! created with a compare-and-swap so two coordinators cannot both create a
//! name). Either way reads come from an in-memory copy that the backend keeps
//! current (etcd: a watch), so routing never waits on storage.
//!
//! The catalog also records trained adapters (`adapters.rs`), read straight
//! from the backend: they are looked up only when one is loaded.
mod adapters;

pub use adapters::AdapterRecord;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use etcd_client::{Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use tracing::{info, warn};

use serde::{Deserialize, Serialize};
use tessera_proto::shutdown::Shutdown;
use tessera_types::{Quantization, SearchSettings};
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
    /// Where each shard lives, by shard number (empty in catalogs written before
    /// placement existed: shard `s` then lives on node `s mod n`).
    #[serde(default)]
    pub placement: Vec<ShardPlacement>,
    /// Search settings (records written before they existed get the defaults).
    #[serde(default)]
    pub settings: SearchSettings,
    /// How its shards hold vectors, fixed at creation (records written before
    /// quantization existed are f32). Left out of the record when it is the
    /// default, so a record written before the field existed serializes to
    /// the same bytes again: `compare_and_put` compares bytes.
    #[serde(default, skip_serializing_if = "is_default_quantization")]
    pub quantization: Quantization,
}

fn is_default_quantization(q: &Quantization) -> bool {
    *q == Quantization::None
}

/// The replicas of one shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardPlacement {
    /// Node ids holding a replica, the primary first.
    pub replicas: Vec<String>,
    /// The node that orders writes.
    pub primary: String,
    /// Bumped by every placement change of this shard.
    pub epoch: u64,
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
    /// etcd failed.
    #[error("catalog in etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
}

const ETCD_PREFIX: &str = "/tessera/collections/";

#[derive(Clone)]
enum Backend {
    Sled(sled::Tree),
    Etcd(Box<etcd_client::Client>),
}

/// See the module documentation.
#[derive(Clone)]
pub struct Catalog {
    backend: Backend,
    /// `tessera up`: the adapter records' tree (etcd keeps them under their own prefix).
    adapter_tree: Option<sled::Tree>,
    cache: Arc<RwLock<BTreeMap<String, CollectionMeta>>>,
}

fn decode(name: &str, bytes: &[u8]) -> Result<CollectionMeta, CatalogError> {
    serde_json::from_slice(bytes).map_err(|_| CatalogError::Corrupt(name.to_string()))
}

impl Catalog {
    /// Opens the sled catalog under `data_dir` (`tessera up`).
    pub fn open(data_dir: &Path) -> Result<Self, CatalogError> {
        let db = sled::open(data_dir.join("coordinator.sled"))?;
        let tree = db.open_tree("collections")?;
        let adapter_tree = Some(db.open_tree("adapters")?);
        let mut cache = BTreeMap::new();
        for item in tree.iter() {
            let (k, v) = item?;
            let name = String::from_utf8_lossy(&k).to_string();
            cache.insert(name.clone(), decode(&name, &v)?);
        }
        Ok(Self { backend: Backend::Sled(tree), adapter_tree, cache: Arc::new(RwLock::new(cache)) })
    }

    /// The etcd catalog (cluster mode): loads it and follows changes made by
    /// other coordinators until `shutdown`.
    pub async fn open_etcd(client: etcd_client::Client, shutdown: &Shutdown) -> Result<Self, CatalogError> {
        let me = Self { backend: Backend::Etcd(Box::new(client.clone())), adapter_tree: None, cache: Arc::default() };
        let revision = me.reload(client.clone()).await?;
        let watcher = me.clone();
        shutdown.spawn(async move { watcher.follow(client, revision).await });
        Ok(me)
    }

    async fn reload(&self, mut client: etcd_client::Client) -> Result<i64, CatalogError> {
        let resp = client.get(ETCD_PREFIX, Some(GetOptions::new().with_prefix())).await?;
        let mut fresh = BTreeMap::new();
        for kv in resp.kvs() {
            let name = kv.key_str().unwrap_or("").trim_start_matches(ETCD_PREFIX).to_string();
            match decode(&name, kv.value()) {
                Ok(meta) => {
                    fresh.insert(name, meta);
                }
                Err(e) => warn!(error = %e, "skipping a catalog record"),
            }
        }
        *self.cache.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Applies catalog changes from etcd; on a broken watch, reloads and watches again.
    async fn follow(self, client: etcd_client::Client, mut revision: i64) {
        loop {
            let opts = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
            match client.clone().watch(ETCD_PREFIX, Some(opts)).await {
                Ok(mut stream) => {
                    while let Ok(Some(resp)) = stream.message().await {
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            revision = revision.max(kv.mod_revision());
                            let name = kv.key_str().unwrap_or("").trim_start_matches(ETCD_PREFIX).to_string();
                            let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
                            match ev.event_type() {
                                EventType::Put => match decode(&name, kv.value()) {
                                    Ok(meta) => {
                                        cache.insert(name, meta);
                                    }
                                    Err(e) => warn!(error = %e, "skipping a catalog record"),
                                },
                                EventType::Delete => {
                                    cache.remove(&name);
                                }
                            }
                        }
                    }
                }
                Err(e) => warn!(error = %e, "catalog watch failed; retrying"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            match self.reload(client.clone()).await {
                Ok(r) => revision = r,
                Err(e) => warn!(error = %e, "catalog reload failed; retrying"),
            }
        }
    }

    /// The collection, if it exists.
    pub fn get(&self, name: &str) -> Result<Option<CollectionMeta>, CatalogError> {
        Ok(self.cache.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned())
    }

    /// Every collection, by name.
    pub fn list(&self) -> Result<Vec<CollectionMeta>, CatalogError> {
        Ok(self.cache.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect())
    }

    /// Stores a new collection durably; false (nothing written) when the name exists.
    pub async fn create(&self, meta: &CollectionMeta) -> Result<bool, CatalogError> {
        let json = serde_json::to_vec(meta).map_err(|_| CatalogError::Corrupt(meta.name.clone()))?;
        let created = match &self.backend {
            Backend::Sled(tree) => {
                let done = tree.compare_and_swap(meta.name.as_bytes(), None as Option<&[u8]>, Some(json))?.is_ok();
                tree.flush_async().await?;
                done
            }
            Backend::Etcd(client) => {
                let key = format!("{ETCD_PREFIX}{}", meta.name);
                let txn = Txn::new()
                    .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key, json, None)]);
                client.as_ref().clone().txn(txn).await?.succeeded()
            }
        };
        if created {
            self.cache.write().unwrap_or_else(|e| e.into_inner()).insert(meta.name.clone(), meta.clone());
            info!(collection = %meta.name, "collection stored in the catalog");
        }
        Ok(created)
    }

    /// Replaces `old` with `new` only if the stored record still equals `old`.
    pub async fn compare_and_put(&self, old: &CollectionMeta, new: &CollectionMeta) -> Result<bool, CatalogError> {
        let old_json = serde_json::to_vec(old).map_err(|_| CatalogError::Corrupt(old.name.clone()))?;
        let new_json = serde_json::to_vec(new).map_err(|_| CatalogError::Corrupt(new.name.clone()))?;
        let done = match &self.backend {
            Backend::Sled(tree) => {
                let done = tree.compare_and_swap(new.name.as_bytes(), Some(old_json), Some(new_json))?.is_ok();
                tree.flush_async().await?;
                done
            }
            Backend::Etcd(client) => {
                let key = format!("{ETCD_PREFIX}{}", new.name);
                let txn = Txn::new()
                    .when([Compare::value(key.clone(), CompareOp::Equal, old_json)])
                    .and_then([TxnOp::put(key, new_json, None)]);
                client.as_ref().clone().txn(txn).await?.succeeded()
            }
        };
        if done {
            self.cache.write().unwrap_or_else(|e| e.into_inner()).insert(new.name.clone(), new.clone());
        }
        Ok(done)
    }

    /// Removes a collection durably; false when absent.
    pub async fn remove(&self, name: &str) -> Result<bool, CatalogError> {
        let existed = match &self.backend {
            Backend::Sled(tree) => {
                let existed = tree.remove(name.as_bytes())?.is_some();
                tree.flush_async().await?;
                existed
            }
            Backend::Etcd(client) => {
                client.as_ref().clone().delete(format!("{ETCD_PREFIX}{name}"), None).await?.deleted() > 0
            }
        };
        self.cache.write().unwrap_or_else(|e| e.into_inner()).remove(name);
        Ok(existed)
    }
}

/// Why a collection name is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidName {
    /// "".
    #[error("collection name must not be empty")]
    Empty,
    /// Over 128 bytes.
    #[error("collection name is longer than 128 bytes")]
    TooLong,
    /// A character outside `[A-Za-z0-9_.-]`, or a leading dot.
    #[error("invalid collection name '{0}': use ASCII letters, digits, '-', '_' and '.'")]
    Characters(String),
}

/// Checks a collection name (it becomes part of storage keys and file names).
/// A stored name may carry its tenant, `tenant:name` (see [`crate::tenancy`]).
pub fn validate_name(stored: &str) -> Result<(), InvalidName> {
    let name = match crate::tenancy::tenant_of(stored) {
        Some(tenant) => {
            crate::tenancy::validate_tenant(tenant).map_err(|_| InvalidName::Characters(stored.to_string()))?;
            &stored[tenant.len() + 1..]
        }
        None => stored,
    };
    if name.is_empty() {
        return Err(InvalidName::Empty);
    }
    if name.len() > 128 {
        return Err(InvalidName::TooLong);
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) || name.starts_with('.') {
        return Err(InvalidName::Characters(stored.to_string()));
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

    /// Opens the sled catalog under `dir` again; sled's flusher thread may
    /// still hold the file lock for a moment after the last handle dropped.
    async fn reopen(dir: &Path) -> Catalog {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Catalog::open(dir) {
                Ok(c) => return c,
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_name("docs_v2.en-1").is_ok());
        assert!(validate_name("acme:docs_v2.en-1").is_ok());
        for bad in ["", "a/b", "../x", "中文", ".hidden", &"x".repeat(129), "a:b:c", "a b:docs", ":docs", "acme:"] {
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

    #[test]
    fn records_from_before_search_settings_get_the_defaults() {
        let old = br#"{"name":"d","dimension":8,"metric":"cosine","shards":1,"replication":1,"embedder":"m"}"#;
        let meta = decode("d", old).unwrap();
        assert_eq!(meta.settings, SearchSettings::default());
        assert!(meta.placement.is_empty());
    }

    /// A record as the version before quantization wrote it (the same fields,
    /// no `quantization`) must still compare equal to itself re-serialized:
    /// failover and rebalance replace records by compare-and-put on bytes.
    #[tokio::test]
    async fn a_record_from_before_quantization_can_still_be_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let meta = CollectionMeta {
            name: "old".into(),
            dimension: 8,
            metric: "cosine".into(),
            shards: 1,
            replication: 2,
            embedder: "m".into(),
            placement: vec![ShardPlacement { replicas: vec!["a".into(), "b".into()], primary: "a".into(), epoch: 1 }],
            settings: SearchSettings::default(),
            quantization: Quantization::None,
        };
        let bytes = serde_json::to_vec(&meta).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("quantization"), "the default is left out");
        {
            let db = sled::open(dir.path().join("coordinator.sled")).unwrap();
            db.open_tree("collections").unwrap().insert("old", bytes).unwrap();
            db.flush().unwrap();
        }
        let c = reopen(dir.path()).await;
        let stored = c.get("old").unwrap().unwrap();
        let mut moved = stored.clone();
        moved.placement[0].primary = "b".into();
        moved.placement[0].epoch = 2;
        assert!(c.compare_and_put(&stored, &moved).await.unwrap(), "failover's compare-and-put matched");
        let int8 = CollectionMeta { name: "q".into(), quantization: Quantization::Int8, ..meta };
        assert!(String::from_utf8_lossy(&serde_json::to_vec(&int8).unwrap()).contains("\"quantization\":\"int8\""));
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
            placement: vec![ShardPlacement { replicas: vec!["local".into()], primary: "local".into(), epoch: 1 }; 3],
            settings: SearchSettings { bm25_k1: 1.5, ..SearchSettings::default() },
            quantization: Quantization::Int8,
        };
        {
            let c = Catalog::open(dir.path()).unwrap();
            assert!(c.create(&meta).await.unwrap());
            assert!(!c.create(&meta).await.unwrap(), "a second create of the same name changes nothing");
        }
        let c = reopen(dir.path()).await;
        assert_eq!(c.get("docs").unwrap(), Some(meta));
        assert_eq!(c.list().unwrap().len(), 1);
        assert!(c.remove("docs").await.unwrap());
        assert!(c.get("docs").unwrap().is_none());
    }
}
