//! The coordinator's view of cluster membership: it follows the node records
//! under `/tessera/nodes/` in etcd (a watch, after one full read) and keeps its
//! [`NodeSet`] equal to them. A node whose lease expires disappears from etcd
//! and so from the set; a node that (re)joins appears again.
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use tessera_types::{NodeRecord, NODES_PREFIX};
use tracing::{info, warn};

use crate::nodes::NodeSet;

fn apply_put(nodes: &NodeSet, value: &[u8]) {
    match serde_json::from_slice::<NodeRecord>(value) {
        Ok(r) => {
            let known = nodes.get(&r.id).is_some();
            match nodes.upsert(&r.id, &r.address, r.roles.clone()) {
                Ok(()) if !known => {
                    info!(node = %r.id, address = %r.address, roles = ?r.roles, "node joined");
                    metrics::counter!("tessera_membership_changes_total", "change" => "join").increment(1);
                }
                Ok(()) => {}
                Err(e) => warn!(node = %r.id, error = %e, "node record has a bad address"),
            }
        }
        Err(e) => warn!(error = %e, "skipping an unreadable node record"),
    }
}

/// Reads all node records into `nodes`; returns the etcd revision read at and
/// the ids of known nodes that are gone.
pub async fn reload_nodes(client: &Client, nodes: &NodeSet) -> Result<(i64, Vec<String>), etcd_client::Error> {
    let resp = client.clone().get(NODES_PREFIX, Some(GetOptions::new().with_prefix())).await?;
    let present: Vec<String> =
        resp.kvs().iter().map(|kv| kv.key_str().unwrap_or("").trim_start_matches(NODES_PREFIX).to_string()).collect();
    for kv in resp.kvs() {
        apply_put(nodes, kv.value());
    }
    let mut gone = Vec::new();
    for n in nodes.all() {
        if !present.contains(&n.id) && nodes.remove(&n.id) {
            info!(node = %n.id, "node left");
            metrics::counter!("tessera_membership_changes_total", "change" => "leave").increment(1);
            gone.push(n.id);
        }
    }
    metrics::gauge!("tessera_cluster_nodes").set(nodes.all().len() as f64);
    Ok((resp.header().map(|h| h.revision()).unwrap_or(0), gone))
}

/// Reads all node records into `nodes`; returns the etcd revision read at.
pub async fn load_nodes(client: &Client, nodes: &NodeSet) -> Result<i64, etcd_client::Error> {
    Ok(reload_nodes(client, nodes).await?.0)
}

/// Follows membership forever (spawn it after [`load_nodes`]); the id of every
/// node that leaves is sent on `left` (for failover).
pub async fn follow_nodes(
    client: Client,
    nodes: NodeSet,
    mut revision: i64,
    left: tokio::sync::mpsc::UnboundedSender<String>,
) {
    loop {
        let opts = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
        match client.clone().watch(NODES_PREFIX, Some(opts)).await {
            Ok(mut stream) => {
                while let Ok(Some(resp)) = stream.message().await {
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        revision = revision.max(kv.mod_revision());
                        match ev.event_type() {
                            EventType::Put => apply_put(&nodes, kv.value()),
                            EventType::Delete => {
                                let id = kv.key_str().unwrap_or("").trim_start_matches(NODES_PREFIX);
                                if nodes.remove(id) {
                                    info!(node = id, "node left");
                                    metrics::counter!("tessera_membership_changes_total", "change" => "leave")
                                        .increment(1);
                                    let _ = left.send(id.to_string());
                                }
                            }
                        }
                    }
                    metrics::gauge!("tessera_cluster_nodes").set(nodes.all().len() as f64);
                }
            }
            Err(e) => warn!(error = %e, "membership watch failed; retrying"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        match reload_nodes(&client, &nodes).await {
            Ok((r, gone)) => {
                revision = r;
                for id in gone {
                    let _ = left.send(id);
                }
            }
            Err(e) => warn!(error = %e, "membership reload failed; retrying"),
        }
    }
}
