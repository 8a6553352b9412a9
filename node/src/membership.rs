//! Cluster membership of a node: its record at `/tessera/nodes/ID` in etcd,
//! attached to a lease that the node keeps alive.
//!
//! When the node loses etcd (crash, partition), the lease expires and the key
//! disappears, which is how coordinators learn that it left. The node itself
//! knows how long its lease is certainly still valid (the time of the last
//! keep-alive it sent plus the TTL etcd confirmed); past that it can no longer
//! prove it is a member, so its [`WriteFence`] refuses shard writes until it has
//! joined again.
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, PutOptions};
use tessera_proto::shutdown::Shutdown;
use thiserror::Error;
use tracing::{info, warn};

pub use tessera_types::{NodeRecord, NODES_PREFIX};

/// Why joining failed.
#[derive(Debug, Error)]
pub enum MembershipError {
    /// etcd could not be reached or refused.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// Bad configuration.
    #[error("{0}")]
    Invalid(String),
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Whether this node may accept shard writes: until a point in time (ms since
/// the epoch); `u64::MAX` when there is no membership to prove (`tessera up`).
#[derive(Debug, Clone)]
pub struct WriteFence(Arc<AtomicU64>);

impl Default for WriteFence {
    fn default() -> Self {
        Self(Arc::new(AtomicU64::new(u64::MAX)))
    }
}

impl WriteFence {
    /// True while the node's membership is certain.
    pub fn allows_writes(&self) -> bool {
        now_ms() < self.0.load(Ordering::Acquire)
    }

    fn hold_until(&self, ms: u64) {
        self.0.store(ms, Ordering::Release);
    }
}

/// Joins the cluster and stays joined: grants a lease of `ttl`, puts the
/// record under it, keeps it alive, and after losing it (etcd unreachable,
/// lease expired) joins again. The first join is awaited, so startup fails
/// clearly when etcd is wrong; later losses are retried forever.
pub async fn join(
    client: Client,
    record: NodeRecord,
    ttl: Duration,
    fence: WriteFence,
    shutdown: &Shutdown,
) -> Result<(), MembershipError> {
    if record.id.is_empty() || record.id.contains('/') {
        return Err(MembershipError::Invalid(format!("invalid node id '{}'", record.id)));
    }
    let ttl_s = ttl.as_secs().max(1) as i64;
    fence.hold_until(0);
    let lease = register(&client, &record, ttl_s).await?;
    fence.hold_until(now_ms() + (ttl_s as u64) * 1000);
    info!(node = %record.id, lease, ttl_s, "joined the cluster");
    // Keep-alives and rejoins until the process stops; then the record is
    // deleted by `leave` (or expires with the lease).
    shutdown.spawn(async move {
        let mut lease = Some(lease);
        loop {
            if let Some(id) = lease.take() {
                if let Err(e) = keep_alive(&client, id, ttl_s, &fence).await {
                    warn!(node = %record.id, error = %e, "lost the membership lease; writes are fenced until rejoined");
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            match register(&client, &record, ttl_s).await {
                Ok(id) => {
                    fence.hold_until(now_ms() + (ttl_s as u64) * 1000);
                    info!(node = %record.id, lease = id, "rejoined the cluster");
                    lease = Some(id);
                }
                Err(e) => warn!(node = %record.id, error = %e, "rejoining failed; retrying"),
            }
        }
    });
    Ok(())
}

/// Leaves at once (on clean shutdown): coordinators drop the node without
/// waiting for the lease to expire.
pub async fn leave(client: Client, id: &str) {
    if let Err(e) = client.clone().delete(format!("{NODES_PREFIX}{id}"), None).await {
        warn!(node = id, error = %e, "could not remove the membership record");
    }
}

async fn register(client: &Client, record: &NodeRecord, ttl_s: i64) -> Result<i64, MembershipError> {
    let mut c = client.clone();
    let lease = c.lease_grant(ttl_s, None).await?.id();
    let value = serde_json::to_vec(record).map_err(|e| MembershipError::Invalid(e.to_string()))?;
    c.put(format!("{NODES_PREFIX}{}", record.id), value, Some(PutOptions::new().with_lease(lease))).await?;
    Ok(lease)
}

/// Sends keep-alives every third of the TTL; returns when the lease is gone.
async fn keep_alive(client: &Client, lease: i64, ttl_s: i64, fence: &WriteFence) -> Result<(), MembershipError> {
    let (mut keeper, mut responses) = client.clone().lease_keep_alive(lease).await?;
    let period = Duration::from_millis((ttl_s as u64 * 1000 / 3).max(200));
    loop {
        let sent = now_ms();
        keeper.keep_alive().await?;
        match tokio::time::timeout(period, responses.message()).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => fence.hold_until(sent + (r.ttl() as u64) * 1000),
            Ok(Ok(Some(_))) => return Err(MembershipError::Invalid("the lease expired".into())),
            Ok(Ok(None)) => return Err(MembershipError::Invalid("the keep-alive stream ended".into())),
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(MembershipError::Invalid("no keep-alive answer in time".into())),
        }
        tokio::time::sleep(period).await;
    }
}
