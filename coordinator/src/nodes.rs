//! The nodes a coordinator routes to, and which node hosts which shard.
//!
//! In `tessera up` there is one node (its own process, reached over loopback
//! gRPC). Shard `s` of a collection lives on node `s mod n`; cluster mode
//! replaces this with the placement map in etcd.
use opentelemetry::propagation::Injector;
use tessera_proto::v1::node_client::NodeClient;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A `Node` client whose calls carry the caller's W3C trace context.
pub type NodeClientT = NodeClient<InterceptedService<Channel, TraceContextInjector>>;

/// Puts the current span's trace context into each request's metadata
/// (`traceparent`), so the node's spans join the coordinator's trace.
#[derive(Clone, Copy, Default)]
pub struct TraceContextInjector;

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(value.as_str())) {
            self.0.insert(k, v);
        }
    }
}

impl tonic::service::Interceptor for TraceContextInjector {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let cx = tracing::Span::current().context();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut MetadataInjector(req.metadata_mut()))
        });
        Ok(req)
    }
}

/// A node as the coordinator sees it.
#[derive(Clone)]
pub struct NodeRef {
    /// Node id.
    pub id: String,
    /// gRPC URL.
    pub url: String,
    /// Client over a shared, lazily connected channel.
    pub client: NodeClientT,
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
            let client = NodeClient::with_interceptor(channel, TraceContextInjector)
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

    /// The node that owns a session: rendezvous (highest random weight) hashing of
    /// the session id over node ids, so a session keeps its node while that node
    /// exists, and only the sessions of a node that leaves move.
    pub fn for_session(&self, session: &str) -> Option<&NodeRef> {
        self.nodes.iter().max_by_key(|n| rendezvous_weight(&n.id, session))
    }

    /// A node for loading and embedding work, spread by a caller-chosen number.
    pub fn for_work(&self, n: usize) -> Option<&NodeRef> {
        if self.nodes.is_empty() {
            return None;
        }
        self.nodes.get(n % self.nodes.len())
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
