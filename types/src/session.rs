//! Stored conversation histories, as both the session actors (which keep them)
//! and the ask chain (which reads them) see them.
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::chat::{ChatMessage, Role};

/// Longest session id, in bytes.
pub const MAX_SESSION_ID_BYTES: usize = 256;

/// One stored message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Position in the session, from 1.
    pub seq: u64,
    /// Who wrote it.
    pub role: Role,
    /// The text.
    pub content: String,
    /// When it was stored.
    pub unix_ms: i64,
}

impl StoredMessage {
    /// The message without its storage fields.
    pub fn chat(&self) -> ChatMessage {
        ChatMessage { role: self.role, content: self.content.clone() }
    }
}

/// A session's stored state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionState {
    /// Session id.
    pub session: String,
    /// All messages, oldest first.
    pub messages: Vec<StoredMessage>,
    /// Model-written summary of the messages with `seq <= summarized_upto`.
    pub summary: String,
    /// See `summary`; 0 when nothing is summarised.
    pub summarized_upto: u64,
}

impl SessionState {
    /// A state that was never stored: the history a caller sent along, numbered from 1.
    pub fn unsaved(messages: &[ChatMessage]) -> Self {
        Self {
            messages: messages
                .iter()
                .enumerate()
                .map(|(i, m)| StoredMessage { seq: i as u64 + 1, role: m.role, content: m.content.clone(), unix_ms: 0 })
                .collect(),
            ..Default::default()
        }
    }
}

/// A line of the session list.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    /// Session id.
    pub session: String,
    /// Stored messages.
    pub messages: u64,
    /// Last append.
    pub updated_unix_ms: i64,
}

/// Why a session id is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SessionIdError {
    /// Empty or too long.
    #[error("session id must be 1 to {MAX_SESSION_ID_BYTES} bytes")]
    Length,
    /// Contains a control character.
    #[error("session id must not contain control characters")]
    Control,
}

/// Session ids are any UTF-8 text without control characters, 1 to 256 bytes.
/// Checked on both sides: the coordinator refuses early, the store refuses always.
pub fn validate_session_id(id: &str) -> Result<(), SessionIdError> {
    if id.is_empty() || id.len() > MAX_SESSION_ID_BYTES {
        return Err(SessionIdError::Length);
    }
    if id.chars().any(char::is_control) {
        return Err(SessionIdError::Control);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_bounded_printable_text() {
        assert!(validate_session_id("用户-42").is_ok());
        assert_eq!(validate_session_id(""), Err(SessionIdError::Length));
        assert_eq!(validate_session_id(&"x".repeat(257)), Err(SessionIdError::Length));
        assert_eq!(validate_session_id("a\nb"), Err(SessionIdError::Control));
    }
}
