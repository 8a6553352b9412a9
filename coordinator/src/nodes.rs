//! The nodes a coordinator routes to, and which node hosts which shard.
//!
//! In `tessera up` there is one node (its own process, reached over loopback
//! gRPC). Shard `s` of a collection lives on node `s mod n`; cluster mode
//! replaces this with the placement map in etcd.
use tessera_proto::v1::node_client::NodeClient;
use tonic::transport::{Channel, Endpoint};

/// A node as the coordinator sees it.
#[derive(Clone)]
pub struct NodeRef {
    /// Node id.
    pub id: String,
    /// gRPC URL.
    pub url: String,
    /// Client over a shared, lazily connected channel.
    pub client: NodeClient<Channel>,
}

/// See the module documentation.
#[derive(Clone)]
pub struct NodeSet {
    nodes: Vec<NodeRef>,
}

impl NodeSet {
    /// Clients for `(id, url)` pairs; connections are made on first use.
    pub fn connect_lazy(nodes: &[(String, String)], max_message_bytes: usize) -> Result<Self, tonic::transport::Error> {
        let mut out = Vec::new();
        for (id, url) in nodes {
            let channel = Endpoint::from_shared(url.clone())?
                .connect_timeout(std::time::Duration::from_secs(5))
                .tcp_nodelay(true)
                .connect_lazy();
            let client = NodeClient::new(channel)
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes);
            out.push(NodeRef { id: id.clone(), url: url.clone(), client });
        }
        Ok(Self { nodes: out })
    }

    /// All nodes.
    pub fn all(&self) -> &[NodeRef] {
        &self.nodes
    }

    /// The node hosting `shard` (every collection is spread the same way).
    pub fn for_shard(&self, shard: u32) -> Option<&NodeRef> {
        if self.nodes.is_empty() {
            return None;
        }
        self.nodes.get(shard as usize % self.nodes.len())
    }

    /// A node for loading and embedding work, spread by a caller-chosen number.
    pub fn for_work(&self, n: usize) -> Option<&NodeRef> {
        if self.nodes.is_empty() {
            return None;
        }
        self.nodes.get(n % self.nodes.len())
    }
}
