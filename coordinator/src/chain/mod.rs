//! Chains: what the coordinator runs on top of retrieval and generation.
//!
//! [`prompt`] holds named templates, [`parser`] turns model output into values,
//! [`budget`] fits a prompt into the context window and [`ask`] runs the
//! history-aware RAG chain over the nodes' embedder, shards, model and session
//! memory.

pub mod ask;
pub mod budget;
pub mod parser;
pub mod prompt;

pub use ask::AskReceiver;
pub use parser::{OutputError, OutputParser};
pub use prompt::{PromptError, PromptLibrary};
