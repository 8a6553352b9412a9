//! Sessions: the conversation history of each chat session (the `session` role).
//!
//! History is stored in sled ([`SessionStore`]) and owned, while a session is
//! live, by one [`SessionActor`], so appends to one session are applied in
//! order and every turn is durable before the caller is answered. A
//! [`SessionRegistry`] spawns actors on demand and passivates idle ones.
//! Which part of a history goes into a prompt is a `MemoryKind` (buffer,
//! window, token budget, summary) in `tessera-types`, a pure policy the RAG
//! chain applies in the coordinator.

mod actor;
mod registry;
mod store;

pub use actor::{SessionActor, SessionMsg};
pub use registry::SessionRegistry;
pub use store::SessionStore;
pub use tessera_types::{validate_session_id, SessionInfo, SessionState, StoredMessage};

use thiserror::Error;

/// Why a session operation failed.
#[derive(Debug, Error)]
pub enum SessionError {
    /// Bad session id, role or content.
    #[error("{0}")]
    Invalid(String),
    /// A session id that is empty, too long or holds control characters.
    #[error(transparent)]
    SessionId(#[from] tessera_types::SessionIdError),
    /// sled failed.
    #[error("session storage: {0}")]
    Storage(#[from] sled::Error),
    /// A stored record could not be read back.
    #[error("session storage is corrupt: {0}")]
    Corrupt(String),
    /// The session's actor could not be reached.
    #[error("session actor unavailable: {0}")]
    Unavailable(String),
}
