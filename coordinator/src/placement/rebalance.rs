//! Scale-out: one shard replica at a time moves from the fullest shard node to
//! the emptiest.
use std::time::{Duration, Instant};

use tessera_proto::v1 as pb;
use tessera_types::NodeRole;
use tracing::{info, warn};

use crate::catalog::CollectionMeta;
use crate::coordinator::Coordinator;
use crate::error::{CoordinatorError, Result};
use crate::nodes::NodeRef;

/// How long a moved replica may take to catch up with the primary.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

impl Coordinator {
    /// Moves one shard replica from the shard node holding the most replicas to
    /// the one holding the fewest (when they differ by two or more). The move
    /// adds before it removes: the target gets a snapshot transfer and joins the
    /// placement as an extra replica (new epoch), the move waits until it has
    /// applied as many writes as the primary, then the source leaves the
    /// placement (new epoch; it hands over the primary role if it had it) and its
    /// copy is dropped. Reads keep working throughout. Returns whether it moved one.
    pub async fn rebalance_step(&self) -> bool {
        let Some((from, to)) = self.most_and_least_loaded() else { return false };
        for meta in self.catalog.list().unwrap_or_default() {
            for (shard, p) in meta.placement.iter().enumerate() {
                if p.replicas.contains(&from) && !p.replicas.contains(&to) {
                    return match self.move_replica(&meta, shard as u32, &from, &to).await {
                        Ok(()) => true,
                        Err(e) => {
                            warn!(collection = %meta.name, shard, from = %from, to = %to, error = %e, "replica move failed");
                            false
                        }
                    };
                }
            }
        }
        false
    }

    /// (fullest, emptiest) shard node ids, when they differ by two replicas or more.
    fn most_and_least_loaded(&self) -> Option<(String, String)> {
        let alive: Vec<NodeRef> = self.nodes.with_role(NodeRole::Shard);
        if alive.len() < 2 {
            return None;
        }
        let counts = self.replica_counts();
        let mut load: Vec<(usize, String)> =
            alive.iter().map(|n| (counts.get(&n.id).copied().unwrap_or(0), n.id.clone())).collect();
        load.sort();
        let (low, high) = (load[0].clone(), load[load.len() - 1].clone());
        (high.0 >= low.0 + 2).then_some((high.1, low.1))
    }

    async fn move_replica(&self, meta: &CollectionMeta, shard: u32, from: &str, to: &str) -> Result<()> {
        let shard_ref = pb::ShardRef { collection: meta.name.clone(), shard };
        let p = meta.placement.get(shard as usize).ok_or_else(|| CoordinatorError::internal("no placement"))?.clone();
        let primary =
            self.nodes.get(&p.primary).ok_or_else(|| CoordinatorError::unavailable("the primary is not alive"))?;
        let target = self.nodes.get(to).ok_or_else(|| CoordinatorError::unavailable("the target left"))?;
        target
            .client
            .clone()
            .shard_transfer(pb::ShardTransferRequest {
                shard: Some(shard_ref.clone()),
                source_url: primary.url.clone(),
            })
            .await?;
        // 1. The target joins as an extra replica: it gets every later write.
        let mut grown = meta.clone();
        grown.placement[shard as usize].replicas.push(to.to_string());
        grown.placement[shard as usize].epoch += 1;
        if !self.catalog.compare_and_put(meta, &grown).await? {
            return Err(CoordinatorError::conflict("placement changed meanwhile"));
        }
        // 2. Wait until it has applied as many writes as the primary.
        self.wait_caught_up(&primary, &target, &shard_ref).await?;
        // 3. The source leaves the placement.
        let mut moved = grown.clone();
        let pl = &mut moved.placement[shard as usize];
        pl.replicas.retain(|r| r != from);
        if pl.primary == from {
            pl.primary = to.to_string();
        }
        pl.epoch += 1;
        let epoch = pl.epoch;
        if !self.catalog.compare_and_put(&grown, &moved).await? {
            return Err(CoordinatorError::conflict("placement changed meanwhile"));
        }
        info!(collection = %meta.name, shard, from, to, epoch, "shard replica moved");
        metrics::counter!("tessera_shard_moves_total").increment(1);
        if let Some(old) = self.nodes.get(from) {
            let _ = old.client.clone().drop_shard(pb::DropShardRequest { shard: Some(shard_ref) }).await;
        }
        Ok(())
    }

    /// Polls both replicas until `target` has applied as much as `primary`.
    async fn wait_caught_up(&self, primary: &NodeRef, target: &NodeRef, shard_ref: &pb::ShardRef) -> Result<()> {
        let stats = pb::ShardStatsRequest { shard: Some(shard_ref.clone()) };
        let deadline = Instant::now() + CATCH_UP_TIMEOUT;
        loop {
            let a = primary.client.clone().get_shard_stats(stats.clone()).await?.into_inner().sequence;
            let b = target.client.clone().get_shard_stats(stats.clone()).await?.into_inner().sequence;
            if b >= a {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(CoordinatorError::timeout(format!(
                    "{} did not catch up ({b} of {a}); it stays an extra replica",
                    target.id
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
