//! Where shard replicas live, and how that changes.
//!
//! - this file: the initial placement of a new collection and the lookups every
//!   read and write does (which node serves a shard, in which order to try replicas);
//! - [`failover`]: after a node left, new primaries and rebuilt replicas;
//! - [`rebalance`]: scale-out, one replica move at a time;
//! - [`leader`]: the election of the one coordinator that makes these changes.
//!
//! Every change is a compare-and-swap on the collection's catalog record that
//! bumps the placement epoch, so concurrent coordinators cannot both win.
pub mod failover;
pub mod leader;
pub mod rebalance;

use std::collections::HashMap;

use tessera_types::NodeRole;

use crate::catalog::{shard_for, CollectionMeta, ShardPlacement};
use crate::coordinator::Coordinator;
use crate::error::{CoordinatorError, Result};
use crate::nodes::NodeRef;

/// Spreads a new collection's shards over the shard nodes: shard `s` on the node
/// `(h + s + k) mod n` for replica `k`, where `h` is the name's hash, so that
/// collections with few shards do not all start on the same node.
pub(crate) fn place(name: &str, shards: u32, replication: u32, nodes: &[NodeRef]) -> Vec<ShardPlacement> {
    let n = nodes.len().max(1);
    let start = shard_for(name, n as u32) as usize;
    (0..shards as usize)
        .map(|s| {
            let replicas: Vec<String> =
                (0..replication as usize).map(|k| nodes[(start + s + k) % n].id.clone()).collect();
            ShardPlacement { primary: replicas[0].clone(), replicas, epoch: 1 }
        })
        .collect()
}

impl Coordinator {
    /// The node that serves a shard: its placement's primary (catalogs from before
    /// placement existed: shard `s` on shard node `s mod n`).
    pub(crate) fn node_for_shard(&self, meta: &CollectionMeta, shard: u32) -> Result<NodeRef> {
        match meta.placement.get(shard as usize) {
            Some(p) => self.nodes.get(&p.primary).ok_or_else(|| {
                CoordinatorError::unavailable(format!(
                    "shard {shard} of '{}' is on node '{}', which is not alive",
                    meta.name, p.primary
                ))
            }),
            None => {
                let nodes = self.nodes.with_role(NodeRole::Shard);
                if nodes.is_empty() {
                    return Err(CoordinatorError::unavailable("no shard node is available"));
                }
                Ok(nodes[shard as usize % nodes.len()].clone())
            }
        }
    }

    /// The shard's replicas that are alive, primary first (reads try them in order).
    pub(crate) fn read_nodes(&self, meta: &CollectionMeta, shard: u32) -> Result<Vec<NodeRef>> {
        match meta.placement.get(shard as usize) {
            Some(p) => {
                let mut order = vec![p.primary.clone()];
                order.extend(p.replicas.iter().filter(|r| **r != p.primary).cloned());
                let alive: Vec<NodeRef> = order.iter().filter_map(|id| self.nodes.get(id)).collect();
                if alive.is_empty() {
                    return Err(CoordinatorError::unavailable(format!(
                        "no replica of shard {shard} of '{}' is alive (replicas: {})",
                        meta.name,
                        p.replicas.join(", ")
                    )));
                }
                Ok(alive)
            }
            None => Ok(vec![self.node_for_shard(meta, shard)?]),
        }
    }

    /// Shard replicas placed on each node, over all collections.
    pub(crate) fn replica_counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for meta in self.catalog.list().unwrap_or_default() {
            for id in meta.placement.iter().flat_map(|p| p.replicas.iter()) {
                *counts.entry(id.clone()).or_insert(0) += 1;
            }
        }
        counts
    }
}
