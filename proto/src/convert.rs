//! Conversions between the wire types of `tessera.v1` and the shared types of
//! `tessera-types`.
//!
//! Both the node and the coordinator convert chat messages, session states,
//! search modes, node roles and hits; doing it here, as `From`/`TryFrom` impls,
//! leaves one copy of each field list. Conversions of types that only one side
//! knows (a node's shard writes, a coordinator's collection records) live in that
//! side's own `convert` module.
use tessera_types::{
    ChatMessage, NodeRole, Quantization, Scored, SearchMode, SearchSettings, SessionInfo, SessionState, StoredMessage,
    UnknownQuantization, UnknownRole,
};
use thiserror::Error;

use crate::v1 as pb;

/// A wire search mode number that `tessera.v1.SearchMode` does not define.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown search mode {0}")]
pub struct UnknownSearchMode(pub i32);

/// The search mode of a request's `mode` field; unspecified means vector.
pub fn search_mode(mode: i32) -> Result<SearchMode, UnknownSearchMode> {
    match pb::SearchMode::try_from(mode).map_err(|_| UnknownSearchMode(mode))? {
        pb::SearchMode::Unspecified | pb::SearchMode::Vector => Ok(SearchMode::Vector),
        pb::SearchMode::Bm25 => Ok(SearchMode::Bm25),
        pb::SearchMode::Hybrid => Ok(SearchMode::Hybrid),
    }
}

impl From<SearchMode> for pb::SearchMode {
    fn from(m: SearchMode) -> Self {
        match m {
            SearchMode::Vector => pb::SearchMode::Vector,
            SearchMode::Bm25 => pb::SearchMode::Bm25,
            SearchMode::Hybrid => pb::SearchMode::Hybrid,
        }
    }
}

/// The vector storage named by a wire `quantization` field ("" is the default).
pub fn quantization(name: &str) -> Result<Quantization, UnknownQuantization> {
    name.parse()
}

/// Settings as sent: each absent field takes its default; values are kept as
/// given (an explicit 0 stays 0), so [`SearchSettings::validate`] sees them.
impl From<pb::SearchSettings> for SearchSettings {
    fn from(s: pb::SearchSettings) -> Self {
        let d = SearchSettings::default();
        SearchSettings {
            bm25_k1: s.bm25_k1.unwrap_or(d.bm25_k1),
            bm25_b: s.bm25_b.unwrap_or(d.bm25_b),
            hnsw_ef: s.hnsw_ef.unwrap_or(d.hnsw_ef),
            exact_below: s.exact_below.unwrap_or(d.exact_below),
            binary_below: s.binary_below.unwrap_or(d.binary_below),
            fusion_depth: s.fusion_depth.unwrap_or(d.fusion_depth),
        }
    }
}

impl From<SearchSettings> for pb::SearchSettings {
    fn from(s: SearchSettings) -> Self {
        pb::SearchSettings {
            bm25_k1: Some(s.bm25_k1),
            bm25_b: Some(s.bm25_b),
            hnsw_ef: Some(s.hnsw_ef),
            exact_below: Some(s.exact_below),
            binary_below: Some(s.binary_below),
            fusion_depth: Some(s.fusion_depth),
        }
    }
}

/// The settings of a request: absent means all defaults.
pub fn search_settings(s: Option<pb::SearchSettings>) -> SearchSettings {
    s.map(SearchSettings::from).unwrap_or_default()
}

impl TryFrom<pb::ChatMessage> for ChatMessage {
    type Error = UnknownRole;

    fn try_from(m: pb::ChatMessage) -> Result<Self, UnknownRole> {
        Ok(ChatMessage { role: m.role.parse()?, content: m.content })
    }
}

impl TryFrom<&pb::ChatMessage> for ChatMessage {
    type Error = UnknownRole;

    fn try_from(m: &pb::ChatMessage) -> Result<Self, UnknownRole> {
        Ok(ChatMessage { role: m.role.parse()?, content: m.content.clone() })
    }
}

impl From<ChatMessage> for pb::ChatMessage {
    fn from(m: ChatMessage) -> Self {
        pb::ChatMessage { role: m.role.as_str().to_string(), content: m.content }
    }
}

/// Chat messages from the wire; the first unknown role fails them all.
pub fn chat_messages(messages: &[pb::ChatMessage]) -> Result<Vec<ChatMessage>, UnknownRole> {
    messages.iter().map(ChatMessage::try_from).collect()
}

impl From<SessionState> for pb::SessionState {
    fn from(s: SessionState) -> Self {
        pb::SessionState {
            session: s.session,
            messages: s
                .messages
                .into_iter()
                .map(|m| pb::SessionMessage {
                    role: m.role.as_str().to_string(),
                    content: m.content,
                    seq: m.seq,
                    unix_ms: m.unix_ms,
                })
                .collect(),
            summary: s.summary,
            summarized_upto: s.summarized_upto,
        }
    }
}

impl TryFrom<pb::SessionState> for SessionState {
    type Error = UnknownRole;

    fn try_from(s: pb::SessionState) -> Result<Self, UnknownRole> {
        let messages = s
            .messages
            .into_iter()
            .map(|m| Ok(StoredMessage { seq: m.seq, role: m.role.parse()?, content: m.content, unix_ms: m.unix_ms }))
            .collect::<Result<_, UnknownRole>>()?;
        Ok(SessionState { session: s.session, messages, summary: s.summary, summarized_upto: s.summarized_upto })
    }
}

impl From<SessionInfo> for pb::SessionInfo {
    fn from(i: SessionInfo) -> Self {
        pb::SessionInfo { session: i.session, messages: i.messages, updated_unix_ms: i.updated_unix_ms }
    }
}

/// Role names for the wire.
pub fn role_names(roles: &[NodeRole]) -> Vec<String> {
    roles.iter().map(|r| r.as_str().to_string()).collect()
}

impl TryFrom<pb::ShardHit> for Scored {
    type Error = MissingHit;

    fn try_from(h: pb::ShardHit) -> Result<Self, MissingHit> {
        let hit = h.hit.ok_or(MissingHit)?;
        Ok(Scored {
            chunk_id: hit.chunk_id,
            doc_id: hit.doc_id,
            score: hit.score,
            text: hit.text,
            metadata_json: hit.metadata_json,
            vector: h.vector,
        })
    }
}

/// A `ShardHit` without its `hit` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("a shard hit without its hit")]
pub struct MissingHit;

impl From<Scored> for pb::Hit {
    fn from(h: Scored) -> Self {
        pb::Hit { doc_id: h.doc_id, chunk_id: h.chunk_id, score: h.score, text: h.text, metadata_json: h.metadata_json }
    }
}

impl From<&Scored> for pb::Source {
    fn from(h: &Scored) -> Self {
        pb::Source {
            doc_id: h.doc_id.clone(),
            chunk_id: h.chunk_id.clone(),
            score: h.score,
            text: h.text.clone(),
            metadata_json: h.metadata_json.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_types::Role;

    #[test]
    fn modes_default_to_vector_and_unknown_numbers_are_refused() {
        assert_eq!(search_mode(0), Ok(SearchMode::Vector));
        assert_eq!(search_mode(pb::SearchMode::Bm25 as i32), Ok(SearchMode::Bm25));
        assert_eq!(search_mode(pb::SearchMode::Hybrid as i32), Ok(SearchMode::Hybrid));
        assert_eq!(search_mode(9), Err(UnknownSearchMode(9)));
        for m in [SearchMode::Vector, SearchMode::Bm25, SearchMode::Hybrid] {
            assert_eq!(search_mode(pb::SearchMode::from(m) as i32), Ok(m));
        }
    }

    #[test]
    fn absent_settings_take_defaults_and_explicit_zeros_stay() {
        let d = SearchSettings::default();
        assert_eq!(search_settings(None), d);
        let s =
            search_settings(Some(pb::SearchSettings { bm25_b: Some(0.0), exact_below: Some(0), ..Default::default() }));
        assert_eq!((s.bm25_b, s.exact_below, s.bm25_k1), (0.0, 0, d.bm25_k1));
        let bad = search_settings(Some(pb::SearchSettings { bm25_b: Some(-0.5), ..Default::default() }));
        assert!(bad.validate().is_err(), "a negative b reaches validation instead of becoming the default");
        assert_eq!(search_settings(Some(d.into())), d);
    }

    #[test]
    fn sessions_and_messages_round_trip_and_unknown_roles_fail() {
        let state = SessionState {
            session: "s".into(),
            messages: vec![StoredMessage { seq: 1, role: Role::User, content: "你好".into(), unix_ms: 7 }],
            summary: "x".into(),
            summarized_upto: 0,
        };
        assert_eq!(SessionState::try_from(pb::SessionState::from(state.clone())), Ok(state));
        let bad = pb::ChatMessage { role: "robot".into(), content: String::new() };
        assert_eq!(ChatMessage::try_from(bad), Err(UnknownRole("robot".into())));
    }
}
