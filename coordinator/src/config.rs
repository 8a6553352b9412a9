//! Limits and defaults of the public API, and the write acknowledgement rule.
use std::time::Duration;

use tessera_types::MemoryKind;
use thiserror::Error;

/// Limits and defaults of the public API.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Largest `top_k` (and MMR `fetch_k`) a search may ask for.
    pub max_top_k: u32,
    /// Largest query, in bytes.
    pub max_query_bytes: usize,
    /// Shards of a collection created without a shard count (also on first ingest).
    pub default_shards: u32,
    /// Most shards a collection may have.
    pub max_shards: u32,
    /// Most collections one tenant may hold (the global namespace counts as
    /// one tenant); with `max_shards` this bounds the shards a tenant opens.
    pub max_collections_per_tenant: usize,
    /// Texts per embedding RPC during ingest.
    pub embed_batch: usize,
    /// Embedding RPCs in flight per ingest.
    pub embed_parallelism: usize,
    /// Texts one Embed request may carry.
    pub max_embed_texts: usize,
    /// Bytes of all texts of one Embed request together: the tokenizer reads
    /// a whole text before the model truncates it, so size costs CPU.
    pub max_embed_bytes: usize,
    /// Largest prompt (or sum of chat message contents) of Generate, in bytes.
    pub max_prompt_bytes: usize,
    /// Largest question of Ask, in bytes.
    pub max_question_bytes: usize,
    /// Chunks retrieved for Ask when the request does not say.
    pub ask_top_k: u32,
    /// Largest `max_tokens` of an Ask answer.
    pub max_answer_tokens: u32,
    /// Memory kind of sessions when the request does not say.
    pub default_memory: MemoryKind,
    /// History messages shown to the question-condensing step.
    pub condense_history_messages: usize,
    /// Length of a session summary, in tokens.
    pub summary_max_tokens: u32,
    /// Replicas that must hold a write before it is acknowledged.
    pub write_acks: WriteAcks,
    /// Deadline of one shard search or stats call to a node (then the next replica is tried).
    pub read_deadline: Duration,
    /// Deadline of one shard write (replication to followers included).
    pub write_deadline: Duration,
}

/// A `--write-acks` value that is not majority, all or one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("write acks must be majority, all or one, not '{0}'")]
pub struct UnknownWriteAcks(pub String);

/// How many replicas of a shard must hold a write before the client is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteAcks {
    /// More than half of the shard's replicas (the default).
    #[default]
    Majority,
    /// Every replica.
    All,
    /// The primary alone.
    One,
}

impl WriteAcks {
    /// Parses "majority", "all" or "one".
    pub fn parse(s: &str) -> Result<Self, UnknownWriteAcks> {
        match s {
            "majority" => Ok(Self::Majority),
            "all" => Ok(Self::All),
            "one" => Ok(Self::One),
            other => Err(UnknownWriteAcks(other.to_string())),
        }
    }

    /// Acknowledgements needed with `replicas` replicas.
    pub fn needed(self, replicas: usize) -> usize {
        match self {
            Self::Majority => replicas / 2 + 1,
            Self::All => replicas.max(1),
            Self::One => 1,
        }
    }
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            max_top_k: 1000,
            max_query_bytes: 16 * 1024,
            default_shards: 2,
            max_shards: 256,
            max_collections_per_tenant: 1000,
            embed_batch: 32,
            embed_parallelism: 4,
            max_embed_texts: 1024,
            max_embed_bytes: 4 << 20,
            max_prompt_bytes: 256 * 1024,
            max_question_bytes: 8 * 1024,
            ask_top_k: 4,
            max_answer_tokens: 4096,
            default_memory: MemoryKind::Window { turns: 4 },
            condense_history_messages: 4,
            summary_max_tokens: 160,
            write_acks: WriteAcks::Majority,
            read_deadline: Duration::from_secs(10),
            write_deadline: Duration::from_secs(30),
        }
    }
}
