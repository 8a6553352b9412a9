//! What a node publishes about itself, and the roles it can serve.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where node records live in etcd.
pub const NODES_PREFIX: &str = "/tessera/nodes/";

/// Model names that mean a node's first (default) model, as clients send
/// them: the node resolves them, the coordinator pins them, the OpenAI API
/// accepts them, and none can name a model.
pub const DEFAULT_MODEL_ALIASES: [&str; 3] = ["", "default", "tessera"];

/// Whether `model` is one of [`DEFAULT_MODEL_ALIASES`].
pub fn names_default_model(model: &str) -> bool {
    DEFAULT_MODEL_ALIASES.contains(&model)
}

/// A job a node can do. Serialised as the lower-case name (etcd records, the
/// `Info` RPC and `--roles` all use the names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Parses and splits files.
    Loader,
    /// Runs the embedding model.
    Embedder,
    /// Hosts shard replicas.
    Shard,
    /// Runs (a rank of) a language model.
    Model,
    /// Keeps conversation histories.
    Session,
}

impl NodeRole {
    /// Every role, in the order the CLI lists them (the embedded node has them all).
    pub const ALL: [NodeRole; 5] =
        [NodeRole::Loader, NodeRole::Embedder, NodeRole::Shard, NodeRole::Model, NodeRole::Session];

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Loader => "loader",
            NodeRole::Embedder => "embedder",
            NodeRole::Shard => "shard",
            NodeRole::Model => "model",
            NodeRole::Session => "session",
        }
    }

    /// Parses a comma-separated list of roles.
    pub fn parse_list(list: &[String]) -> Result<Vec<NodeRole>, UnknownNodeRole> {
        list.iter().map(|r| r.parse()).collect()
    }
}

/// A role name that is none of the five.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown role '{0}' (use loader, embedder, shard, model, session)")]
pub struct UnknownNodeRole(pub String);

impl FromStr for NodeRole {
    type Err = UnknownNodeRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeRole::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| UnknownNodeRole(s.to_string()))
    }
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a node publishes about itself under `NODES_PREFIX + id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id (unique in the cluster).
    pub id: String,
    /// The gRPC URL coordinators use (`http://host:port`).
    pub address: String,
    /// Roles served.
    pub roles: Vec<NodeRole>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_their_names_and_records_keep_the_json_shape() {
        for r in NodeRole::ALL {
            assert_eq!(r.as_str().parse::<NodeRole>(), Ok(r));
        }
        assert_eq!(
            "gpu".parse::<NodeRole>().unwrap_err().to_string(),
            "unknown role 'gpu' (use loader, embedder, shard, model, session)"
        );
        let rec = NodeRecord { id: "n1".into(), address: "http://127.0.0.1:1".into(), roles: vec![NodeRole::Shard] };
        let json = serde_json::to_string(&rec).unwrap();
        assert_eq!(json, r#"{"id":"n1","address":"http://127.0.0.1:1","roles":["shard"]}"#);
    }
}
