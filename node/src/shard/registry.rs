//! The shards a node hosts: opened at start from its catalog, created and
//! dropped on the coordinator's request.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::RwLock;
use tracing::{info, warn};

use tessera_types::Quantization;

use super::{Shard, ShardError, ShardHandle, ShardStats};

const CATALOG: &str = "node.shards";

/// Identifies a shard replica on this node.
pub type ShardKey = (String, u32);

/// See the module documentation.
#[derive(Clone)]
pub struct ShardRegistry {
    db: sled::Db,
    ann_dir: PathBuf,
    shards: Arc<RwLock<HashMap<ShardKey, ShardHandle>>>,
}

fn tree_name(collection: &str, shard: u32) -> String {
    format!("shard/{collection}/{shard}")
}

/// A catalog entry: the dimension, then the quantization when it is not the
/// default (entries written before quantization existed are a bare dimension).
fn entry(dimension: usize, quantization: Quantization) -> String {
    match quantization {
        Quantization::None => dimension.to_string(),
        q => format!("{dimension} {q}"),
    }
}

/// Reads [`entry`]'s format; an unreadable part takes the default (dimension
/// 0 makes the shard take the one sled recorded).
fn parse_entry(value: &[u8]) -> (usize, Quantization) {
    let text = String::from_utf8_lossy(value);
    let mut parts = text.split_whitespace();
    let dimension = parts.next().and_then(|d| d.parse().ok()).unwrap_or(0);
    let quantization = match parts.next().map(str::parse::<Quantization>) {
        None => Quantization::None,
        Some(Ok(q)) => q,
        Some(Err(e)) => {
            warn!(entry = %text, error = %e, "shard catalog entry names an unknown quantization; opening it as f32");
            Quantization::None
        }
    };
    (dimension, quantization)
}

/// Stored collection names reach file names: ASCII letters, digits, `-_.` and
/// the `:` between a tenant and its name (the coordinator checks the full rule).
fn valid_collection(name: &str) -> Result<(), ShardError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-_.:".contains(c);
    if name.is_empty() || name.len() > 200 || name.starts_with('.') || !name.chars().all(allowed) {
        return Err(ShardError::Invalid(format!("invalid collection name '{name}'")));
    }
    Ok(())
}

impl ShardRegistry {
    /// Opens the node's shard database under `data_dir` and every shard it lists.
    pub async fn open(data_dir: &Path) -> Result<Self, ShardError> {
        std::fs::create_dir_all(data_dir).map_err(|e| ShardError::Invalid(format!("{}: {e}", data_dir.display())))?;
        let db = sled::open(data_dir.join("shards.sled"))?;
        super::replica::register_metrics_at_zero();
        let me = Self { db, ann_dir: data_dir.join("ann"), shards: Arc::default() };
        let catalog = me.db.open_tree(CATALOG)?;
        for item in catalog.iter() {
            let (k, v) = item?;
            let name = String::from_utf8_lossy(&k).to_string();
            let Some((collection, shard)) =
                name.rsplit_once('/').and_then(|(c, s)| Some((c.to_string(), s.parse::<u32>().ok()?)))
            else {
                warn!(%name, "skipping unreadable shard catalog entry");
                continue;
            };
            let (dim, quantization) = parse_entry(&v);
            me.start(&collection, shard, dim, quantization).await?;
        }
        Ok(me)
    }

    async fn start(
        &self,
        collection: &str,
        shard: u32,
        dimension: usize,
        quantization: Quantization,
    ) -> Result<ShardHandle, ShardError> {
        let tree = self.db.open_tree(tree_name(collection, shard))?;
        let ann_path = self.ann_path(collection, shard);
        let opened = tokio::task::spawn_blocking(move || Shard::open_as(tree, dimension, quantization, Some(ann_path)))
            .await
            .map_err(|e| ShardError::Unavailable(e.to_string()))??;
        let handle = ShardHandle::spawn(format!("{collection}/{shard}"), opened).await?;
        self.shards.write().await.insert((collection.to_string(), shard), handle.clone());
        Ok(handle)
    }

    fn ann_path(&self, collection: &str, shard: u32) -> PathBuf {
        self.ann_dir.join(format!("{collection}.{shard}.usearch"))
    }

    /// Opens (creating if needed) a shard replica; idempotent.
    pub async fn open_shard(
        &self,
        collection: &str,
        shard: u32,
        dimension: usize,
        quantization: Quantization,
    ) -> Result<ShardStats, ShardError> {
        valid_collection(collection)?;
        if dimension == 0 {
            return Err(ShardError::Invalid("dimension must be positive".into()));
        }
        if let Some(h) = self.get(collection, shard).await {
            let stats = h.stats().await?;
            if stats.dimension as usize != dimension {
                return Err(ShardError::Invalid(format!(
                    "shard {collection}/{shard} exists with dimension {}, not {dimension}",
                    stats.dimension
                )));
            }
            if stats.quantization != quantization {
                return Err(ShardError::Invalid(format!(
                    "shard {collection}/{shard} exists with quantization {}, not {quantization}",
                    stats.quantization
                )));
            }
            return Ok(stats);
        }
        let catalog = self.db.open_tree(CATALOG)?;
        catalog.insert(tree_name_key(collection, shard), entry(dimension, quantization).as_bytes())?;
        catalog.flush_async().await?;
        let handle = self.start(collection, shard, dimension, quantization).await?;
        info!(collection, shard, dimension, %quantization, "shard created");
        handle.stats().await
    }

    /// The running shard, if hosted here.
    pub async fn get(&self, collection: &str, shard: u32) -> Option<ShardHandle> {
        self.shards.read().await.get(&(collection.to_string(), shard)).cloned()
    }

    /// The running shard, or NotFound.
    pub async fn require(&self, collection: &str, shard: u32) -> Result<ShardHandle, ShardError> {
        self.get(collection, shard).await.ok_or_else(|| ShardError::NotFound(format!("{collection}/{shard}")))
    }

    /// Stops a shard and deletes its data; false when it was not hosted.
    pub async fn drop_shard(&self, collection: &str, shard: u32) -> Result<bool, ShardError> {
        let handle = self.shards.write().await.remove(&(collection.to_string(), shard));
        let catalog = self.db.open_tree(CATALOG)?;
        catalog.remove(tree_name_key(collection, shard))?;
        let existed = handle.is_some();
        if let Some(h) = handle {
            let _ = h.close().await;
        }
        self.db.drop_tree(tree_name(collection, shard))?;
        self.db.flush_async().await?;
        let ann = self.ann_path(collection, shard);
        let _ = std::fs::remove_file(&ann);
        let _ = std::fs::remove_file(ann.with_extension("seq"));
        let _ = std::fs::remove_file(super::replica::originals_path(&ann));
        Ok(existed)
    }

    /// Every hosted shard with its counters.
    pub async fn list(&self) -> Vec<(ShardKey, ShardStats)> {
        let handles: Vec<(ShardKey, ShardHandle)> =
            self.shards.read().await.iter().map(|(k, h)| (k.clone(), h.clone())).collect();
        let mut out = Vec::new();
        for (k, h) in handles {
            if let Ok(s) = h.stats().await {
                out.push((k, s));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Closes every shard (flush + save indexes) for a clean shutdown.
    pub async fn close_all(&self) {
        let handles: Vec<ShardHandle> = self.shards.write().await.drain().map(|(_, h)| h).collect();
        for h in handles {
            if let Err(e) = h.close().await {
                warn!("closing shard: {e}");
            }
        }
        if let Err(e) = self.db.flush_async().await {
            warn!("flushing node database: {e}");
        }
    }
}

fn tree_name_key(collection: &str, shard: u32) -> Vec<u8> {
    format!("{collection}/{shard}").into_bytes()
}
