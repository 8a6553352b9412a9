//! Plain data that both sides of Tessera share.
//!
//! The coordinator never links the node crate (a coordinator process carries no
//! model, index or loader code), yet both speak of the same things: chat messages
//! and their roles, stored session histories and which part of one goes into a
//! prompt, node records and the roles a node serves, search modes, limits. They
//! live here, with no dependency beyond serde and thiserror. Wire conversions to
//! and from these types are in `tessera-proto` (`convert`).

pub mod chat;
pub mod limits;
pub mod memory;
pub mod node;
pub mod quantization;
pub mod search;
pub mod session;
pub mod vector;

pub use chat::{ChatMessage, Role, UnknownRole};
pub use memory::{select, summary_due, MemoryKind, MemoryView, SummaryWork, UnknownMemoryKind};
pub use node::{names_default_model, NodeRecord, NodeRole, UnknownNodeRole, DEFAULT_MODEL_ALIASES, NODES_PREFIX};
pub use quantization::{Quantization, UnknownQuantization};
pub use search::{InvalidSettings, Scored, SearchMode, SearchSettings, UnknownSearchModeName};
pub use session::{validate_session_id, SessionIdError, SessionInfo, SessionState, StoredMessage};
pub use vector::cosine;
