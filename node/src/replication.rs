//! Shard replication between nodes, primary side and follower side.
//!
//! The primary orders writes: it applies a write at its next sequence (through
//! its shard actor, so writes are serialised), then sends it with that sequence
//! to every follower in parallel and counts acknowledgements. A follower applies
//! only its next sequence; when it is behind (it was down, or a message overtook
//! another) it says which sequence it has, and the primary first sends the
//! missing writes from its log. A follower remembers the highest placement epoch
//! it has seen per shard and refuses writes from an older one, so a deposed
//! primary cannot overwrite a newer primary's order.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use tessera_proto::client::{node_client, ClientOptions, NodeClient};
use tessera_proto::v1 as pb;
use tonic::Status;
use tracing::{info_span, warn, Instrument};

use crate::convert::writes_to_pb;
use crate::shard::ShardHandle;

/// How long the primary waits for one follower (including its catch-up).
const FOLLOWER_TIMEOUT: Duration = Duration::from_secs(10);

/// (collection, shard, follower URL).
type FollowerKey = (String, u32, String);

/// Clients to followers (by URL) and the epochs seen per shard.
#[derive(Clone, Default)]
pub struct Replication {
    clients: Arc<Mutex<HashMap<String, NodeClient>>>,
    epochs: Arc<Mutex<HashMap<(String, u32), u64>>>,
    /// Last sequence each follower acknowledged, per (collection, shard, follower URL).
    acked: Arc<Mutex<HashMap<FollowerKey, u64>>>,
}

impl Replication {
    /// A client to another node (cached by URL).
    pub fn client(&self, url: &str) -> Result<NodeClient, Status> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(url) {
            return Ok(c.clone());
        }
        let options = ClientOptions { connect_timeout: Duration::from_secs(2), ..ClientOptions::default() };
        let client =
            node_client(url, options).map_err(|e| Status::invalid_argument(format!("follower URL '{url}': {e}")))?;
        clients.insert(url.to_string(), client.clone());
        Ok(client)
    }

    /// Follower side: whether a write from `epoch` may be applied (and remembers the newest epoch).
    pub fn admit_epoch(&self, collection: &str, shard: u32, epoch: u64) -> bool {
        let mut epochs = self.epochs.lock().unwrap_or_else(|e| e.into_inner());
        let seen = epochs.entry((collection.to_string(), shard)).or_insert(0);
        if epoch < *seen {
            return false;
        }
        *seen = epoch;
        true
    }

    /// Primary side: sends the write applied at `sequence` to every follower;
    /// returns how many followers hold it durably.
    pub async fn fan_out(
        &self,
        shard: &ShardHandle,
        shard_ref: &pb::ShardRef,
        followers: &[String],
        sequence: u64,
        writes: Vec<pb::DocumentWrite>,
        epoch: u64,
    ) -> usize {
        let sends = followers.iter().map(|url| {
            let writes = writes.clone();
            let span = info_span!("shard.replicate_to", follower = %url, sequence);
            async move {
                let result = tokio::time::timeout(
                    FOLLOWER_TIMEOUT,
                    self.send_with_catch_up(shard, shard_ref, url, sequence, writes, epoch),
                )
                .await
                .unwrap_or_else(|_| Err(Status::deadline_exceeded("follower did not answer in time")));
                if let Err(e) = &result {
                    warn!(follower = %url, sequence, error = %e.message(), "replication to a follower failed");
                }
                result.is_ok()
            }
            .instrument(span)
        });
        let results = join_all(sends).await;
        // Replica lag: how many writes each follower is behind this primary.
        let mut acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
        for (url, ok) in followers.iter().zip(&results) {
            let key = (shard_ref.collection.clone(), shard_ref.shard, url.clone());
            let last = acked.entry(key).or_insert(0);
            if *ok {
                *last = sequence;
            }
            metrics::gauge!(
                "tessera_shard_replica_lag",
                "collection" => shard_ref.collection.clone(),
                "shard" => shard_ref.shard.to_string(),
                "follower" => url.clone()
            )
            .set(sequence.saturating_sub(*last) as f64);
        }
        results.into_iter().filter(|ok| *ok).count()
    }

    async fn send_with_catch_up(
        &self,
        shard: &ShardHandle,
        shard_ref: &pb::ShardRef,
        url: &str,
        sequence: u64,
        writes: Vec<pb::DocumentWrite>,
        epoch: u64,
    ) -> Result<(), Status> {
        let mut client = self.client(url)?;
        let request =
            |sequence, writes| pb::ShardReplicateRequest { shard: Some(shard_ref.clone()), sequence, writes, epoch };
        let r = client.shard_replicate(request(sequence, writes)).await?.into_inner();
        if r.applied || r.sequence >= sequence {
            return Ok(());
        }
        // The follower is behind: send what it misses from the log, in order.
        let missing = shard.log_since(r.sequence).await.map_err(|e| Status::internal(e.to_string()))?;
        if missing.first().is_none_or(|(s, _)| *s != r.sequence + 1) {
            return Err(Status::failed_precondition(format!(
                "follower {url} is at sequence {} and the log does not reach back that far",
                r.sequence
            )));
        }
        for (seq, w) in missing.into_iter().take_while(|(s, _)| *s <= sequence) {
            let r = client.shard_replicate(request(seq, writes_to_pb(&w))).await?.into_inner();
            if !r.applied && r.sequence < seq {
                return Err(Status::unavailable(format!("follower {url} stopped at sequence {}", r.sequence)));
            }
        }
        Ok(())
    }
}
