//! The placement leader: one coordinator at a time changes shard placement
//! (failover, replica rebuild). Election is an etcd key created only if absent
//! (`/tessera/placement-leader`), held by the candidate's lease; when the
//! leader dies its lease expires, the key goes, and another coordinator takes it.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};
use tessera_proto::shutdown::Shutdown;
use tracing::{info, warn};

const KEY: &str = "/tessera/placement-leader";

/// Whether this coordinator leads now.
#[derive(Clone, Default)]
pub struct Leadership(Arc<AtomicBool>);

impl Leadership {
    /// True while this coordinator holds the leader key.
    pub fn is_leader(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Campaigns until `shutdown`: tries to create the key under a fresh lease
/// every second; once it holds it, keeps the lease alive until that fails.
/// Stopping drops the keep-alive, so the key expires with the lease and
/// another coordinator takes over within one TTL.
pub fn campaign(client: Client, me: String, ttl: Duration, shutdown: &Shutdown) -> Leadership {
    let leadership = Leadership::default();
    let flag = leadership.0.clone();
    shutdown.spawn(async move {
        let ttl_s = ttl.as_secs().max(1) as i64;
        loop {
            match try_lead(&client, &me, ttl_s).await {
                Ok(Some(lease)) => {
                    info!(coordinator = %me, "became the placement leader");
                    flag.store(true, Ordering::Release);
                    if let Err(e) = hold(&client, lease, ttl_s).await {
                        warn!(coordinator = %me, error = %e, "lost placement leadership");
                    }
                    flag.store(false, Ordering::Release);
                }
                Ok(None) => {}
                Err(e) => warn!(error = %e, "placement leader election failed; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    leadership
}

async fn try_lead(client: &Client, me: &str, ttl_s: i64) -> Result<Option<i64>, etcd_client::Error> {
    let mut c = client.clone();
    let lease = c.lease_grant(ttl_s, None).await?.id();
    let txn = Txn::new().when([Compare::version(KEY, CompareOp::Equal, 0)]).and_then([TxnOp::put(
        KEY,
        me,
        Some(PutOptions::new().with_lease(lease)),
    )]);
    if c.txn(txn).await?.succeeded() {
        Ok(Some(lease))
    } else {
        let _ = c.lease_revoke(lease).await;
        Ok(None)
    }
}

async fn hold(client: &Client, lease: i64, ttl_s: i64) -> Result<(), etcd_client::Error> {
    let (mut keeper, mut responses) = client.clone().lease_keep_alive(lease).await?;
    let period = Duration::from_millis((ttl_s as u64 * 1000 / 3).max(200));
    loop {
        keeper.keep_alive().await?;
        match tokio::time::timeout(period, responses.message()).await {
            Ok(Ok(Some(r))) if r.ttl() > 0 => {}
            _ => return Ok(()),
        }
        tokio::time::sleep(period).await;
    }
}
