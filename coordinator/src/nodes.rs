//! The nodes a coordinator routes to, and which node hosts which shard.
//!
//! In `tessera up` there is one node with every role (its own process, reached
//! over loopback gRPC). In cluster mode the set follows etcd membership. Which
//! node holds a shard is the collection's placement (see the catalog); work
//! without state (loading, embedding) is spread round robin over the nodes
//! with that role; sessions go to session nodes by rendezvous hashing.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tessera_proto::client::{node_client, ClientOptions, NodeClient};
use tessera_types::NodeRole;

/// A node as the coordinator sees it.
#[derive(Clone)]
pub struct NodeRef {
    /// Node id.
    pub id: String,
    /// gRPC URL.
    pub url: String,
    /// Roles it serves.
    pub roles: Vec<NodeRole>,
    /// Client over a shared, lazily connected channel.
    pub client: NodeClient,
}

impl NodeRef {
    /// Whether the node serves `role`.
    pub fn has(&self, role: NodeRole) -> bool {
        self.roles.contains(&role)
    }
}

/// See the module documentation. Cloning shares the set: membership updates
/// (cluster mode) are seen by every clone.
#[derive(Clone)]
pub struct NodeSet {
    nodes: Arc<RwLock<Vec<NodeRef>>>,
    max_message_bytes: usize,
    next: Arc<AtomicUsize>,
}

fn client(url: &str, max_message_bytes: usize) -> Result<NodeClient, tessera_proto::client::ClientError> {
    node_client(url, ClientOptions { max_message_bytes, ..ClientOptions::default() })
}

impl NodeSet {
    /// An empty set (cluster mode fills it from membership).
    pub fn empty(max_message_bytes: usize) -> Self {
        Self { nodes: Arc::default(), max_message_bytes, next: Arc::default() }
    }

    /// Clients for `(id, url)` pairs with every role; connections are made on first use.
    pub fn connect_lazy(
        nodes: &[(String, String)],
        max_message_bytes: usize,
    ) -> Result<Self, tessera_proto::client::ClientError> {
        let set = Self::empty(max_message_bytes);
        for (id, url) in nodes {
            set.upsert(id, url, NodeRole::ALL.to_vec())?;
        }
        Ok(set)
    }

    /// Adds a node, or updates its address and roles (a new client only when the address changed).
    pub fn upsert(&self, id: &str, url: &str, roles: Vec<NodeRole>) -> Result<(), tessera_proto::client::ClientError> {
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = nodes.iter_mut().find(|n| n.id == id) {
            if n.url != url {
                n.client = client(url, self.max_message_bytes)?;
                n.url = url.to_string();
            }
            n.roles = roles;
            return Ok(());
        }
        nodes.push(NodeRef {
            id: id.to_string(),
            url: url.to_string(),
            roles,
            client: client(url, self.max_message_bytes)?,
        });
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(())
    }

    /// Forgets a node; true when it was known.
    pub fn remove(&self, id: &str) -> bool {
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        let before = nodes.len();
        nodes.retain(|n| n.id != id);
        nodes.len() != before
    }

    /// All nodes now, by id.
    pub fn all(&self) -> Vec<NodeRef> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The node with this id, if it is alive.
    pub fn get(&self, id: &str) -> Option<NodeRef> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner()).iter().find(|n| n.id == id).cloned()
    }

    /// Nodes serving `role`, by id.
    pub fn with_role(&self, role: NodeRole) -> Vec<NodeRef> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner()).iter().filter(|n| n.has(role)).cloned().collect()
    }

    /// A node serving `role`, round robin over calls (load balancing).
    pub fn pick(&self, role: NodeRole) -> Option<NodeRef> {
        let nodes = self.with_role(role);
        if nodes.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        nodes.get(n % nodes.len()).cloned()
    }

    /// The session node that owns a session: rendezvous (highest random weight)
    /// hashing of the session id over the ids of `session` nodes, so a session
    /// keeps its node while that node exists, and only the sessions of a node
    /// that leaves move.
    pub fn for_session(&self, session: &str) -> Option<NodeRef> {
        self.with_role(NodeRole::Session).into_iter().max_by_key(|n| rendezvous_weight(&n.id, session))
    }
}

/// FNV-1a over `node 0xff key`, finished with a 64-bit mix so that similar ids
/// spread well.
fn rendezvous_weight(node: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.as_bytes().iter().chain([0xffu8].iter()).chain(key.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_spread_over_nodes_and_only_a_leaving_nodes_sessions_move() {
        let urls =
            |ids: &[&str]| ids.iter().map(|i| (i.to_string(), format!("http://127.0.0.1:1/{i}"))).collect::<Vec<_>>();
        let three = NodeSet::connect_lazy(&urls(&["n1", "n2", "n3"]), 1024).unwrap();
        let two = NodeSet::connect_lazy(&urls(&["n1", "n3"]), 1024).unwrap();
        let mut per_node = std::collections::HashMap::new();
        for i in 0..300 {
            let s = format!("session-{i}");
            let before = three.for_session(&s).unwrap().id.clone();
            let after = two.for_session(&s).unwrap().id.clone();
            if before != "n2" {
                assert_eq!(before, after, "{s} moved although its node stayed");
            }
            *per_node.entry(before).or_insert(0) += 1;
        }
        assert!(per_node.values().all(|&n| n > 60), "{per_node:?}");
    }
}

#[cfg(test)]
mod membership_tests {
    use super::*;

    #[tokio::test]
    async fn membership_updates_are_seen_by_clones_and_roles_pick_nodes() {
        let set = NodeSet::empty(1024);
        let view = set.clone();
        set.upsert("n2", "http://127.0.0.1:2", vec![NodeRole::Shard]).unwrap();
        set.upsert("n1", "http://127.0.0.1:1", vec![NodeRole::Embedder, NodeRole::Shard]).unwrap();
        assert_eq!(view.all().iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), vec!["n1", "n2"]);
        assert_eq!(view.with_role(NodeRole::Shard).len(), 2);
        assert_eq!(view.pick(NodeRole::Embedder).unwrap().id, "n1");
        assert!(view.pick(NodeRole::Model).is_none());
        assert!(view.for_session("s").is_none(), "no session role, no session node");
        set.upsert("n2", "http://127.0.0.1:3", vec![NodeRole::Session]).unwrap();
        assert_eq!(view.get("n2").unwrap().url, "http://127.0.0.1:3");
        assert_eq!(view.for_session("s").unwrap().id, "n2");
        assert!(set.remove("n2"));
        assert!(!set.remove("n2"));
        assert!(view.get("n2").is_none());
    }
}
