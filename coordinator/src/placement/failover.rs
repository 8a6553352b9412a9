//! After a node left membership: new primaries for the shards it led and
//! rebuilt replicas for the ones it held.
use std::collections::HashMap;
use std::time::Duration;

use tessera_proto::v1 as pb;
use tessera_types::NodeRole;
use tracing::{info, warn};

use crate::catalog::{CollectionMeta, ShardPlacement};
use crate::coordinator::Coordinator;

/// How long a replica may take to say how far it has applied.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

impl Coordinator {
    /// Every shard the lost node was primary of gets a new primary, the alive
    /// replica that has applied the most writes, and every replica it held is
    /// rebuilt on a spare shard node (the one holding the fewest replicas) by a
    /// snapshot transfer, each change bumping the placement epoch. The change is
    /// a compare-and-swap on the catalog record, so when several coordinators
    /// react to the same loss one wins and the others see its result. Without a
    /// spare, the lost node stays a replica and catches up from the new
    /// primary's log when it returns.
    pub async fn fail_over(&self, lost: &str) {
        for meta in self.catalog.list().unwrap_or_default() {
            let mut updated = meta.clone();
            let promoted = self.promote_primaries(&meta, &mut updated, lost).await;
            let rebuilt = self.rebuild_replicas(&meta, &mut updated, lost).await;
            if promoted || rebuilt {
                match self.catalog.compare_and_put(&meta, &updated).await {
                    Ok(true) => {}
                    Ok(false) => info!(collection = %meta.name, "placement changed meanwhile by another coordinator"),
                    Err(e) => warn!(collection = %meta.name, error = %e, "storing the new placement failed"),
                }
            }
        }
    }

    /// Fails over every node that holds placed replicas but is not in membership
    /// (idempotent; the placement leader runs it on every leave and periodically,
    /// so a leave missed while there was no leader is still handled).
    pub async fn reconcile(&self) {
        let mut lost: Vec<String> = self
            .catalog
            .list()
            .unwrap_or_default()
            .iter()
            .flat_map(|m| m.placement.iter().flat_map(|p| p.replicas.iter().cloned()))
            .filter(|id| self.nodes.get(id).is_none())
            .collect();
        lost.sort();
        lost.dedup();
        for id in lost {
            self.fail_over(&id).await;
        }
    }

    /// New primaries in `updated` for the shards `lost` led; whether any changed.
    async fn promote_primaries(&self, meta: &CollectionMeta, updated: &mut CollectionMeta, lost: &str) -> bool {
        let mut changed = false;
        for (shard, p) in updated.placement.iter_mut().enumerate() {
            if p.primary != lost {
                continue;
            }
            match self.most_applied_replica(&meta.name, shard as u32, p, lost).await {
                Some((seq, id)) => {
                    info!(collection = %meta.name, shard, from = lost, to = %id, sequence = seq, epoch = p.epoch + 1, "shard primary failed over");
                    metrics::counter!("tessera_shard_failovers_total").increment(1);
                    p.primary = id;
                    p.epoch += 1;
                    changed = true;
                }
                None => warn!(collection = %meta.name, shard, "primary lost and no other replica answers"),
            }
        }
        changed
    }

    /// The replica (other than `lost`) that answered with the highest applied sequence.
    async fn most_applied_replica(
        &self,
        collection: &str,
        shard: u32,
        p: &ShardPlacement,
        lost: &str,
    ) -> Option<(u64, String)> {
        let req = pb::ShardStatsRequest { shard: Some(pb::ShardRef { collection: collection.to_string(), shard }) };
        let mut best: Option<(u64, String)> = None;
        for id in p.replicas.iter().filter(|r| r.as_str() != lost) {
            let Some(node) = self.nodes.get(id) else { continue };
            if let Ok(Ok(s)) =
                tokio::time::timeout(STATS_TIMEOUT, node.client.clone().get_shard_stats(req.clone())).await
            {
                let seq = s.into_inner().sequence;
                if best.as_ref().is_none_or(|(b, _)| seq > *b) {
                    best = Some((seq, id.clone()));
                }
            }
        }
        best
    }

    /// Rebuilds the lost node's replicas on spare shard nodes: snapshot from the
    /// primary, then the spare replaces the lost node in `updated`. It gets later
    /// writes by replication (log catch-up on the next write). Whether any changed.
    async fn rebuild_replicas(&self, meta: &CollectionMeta, updated: &mut CollectionMeta, lost: &str) -> bool {
        let load = self.replica_counts();
        let mut changed = false;
        for (shard, p) in updated.placement.iter_mut().enumerate() {
            if !p.replicas.iter().any(|r| r == lost) {
                continue;
            }
            let Some(source) = self.nodes.get(&p.primary) else { continue };
            let Some(spare) = self.spare_for(p, &load) else { continue };
            let req = pb::ShardTransferRequest {
                shard: Some(pb::ShardRef { collection: meta.name.clone(), shard: shard as u32 }),
                source_url: source.url.clone(),
            };
            match spare.client.clone().shard_transfer(req).await {
                Ok(stats) => {
                    info!(collection = %meta.name, shard, lost, spare = %spare.id, sequence = stats.get_ref().sequence, "replica rebuilt on a spare node");
                    metrics::counter!("tessera_shard_transfers_total").increment(1);
                    for r in p.replicas.iter_mut() {
                        if r == lost {
                            *r = spare.id.clone();
                        }
                    }
                    p.epoch += 1;
                    changed = true;
                }
                Err(e) => {
                    warn!(collection = %meta.name, shard, spare = %spare.id, error = %e.message(), "shard transfer failed; the replica stays missing")
                }
            }
        }
        changed
    }

    /// The alive shard node outside the placement holding the fewest replicas.
    fn spare_for(&self, p: &ShardPlacement, load: &HashMap<String, usize>) -> Option<crate::nodes::NodeRef> {
        self.nodes
            .with_role(NodeRole::Shard)
            .into_iter()
            .filter(|n| !p.replicas.contains(&n.id))
            .min_by_key(|n| load.get(&n.id).copied().unwrap_or(0))
    }
}
