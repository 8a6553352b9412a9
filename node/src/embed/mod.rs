//! Sentence embeddings.
//!
//! [`BertEmbedder`] is the model (tokenize, BERT forward, mean pooling, L2
//! normalisation), running the project's own encoder forward
//! ([`encoder`]); [`EmbedderActor`] owns one and batches concurrent requests by
//! a token budget, so many small requests share one forward pass.

mod actor;
mod bert;
pub mod encoder;

pub use actor::{spawn_embedder, BatchLimits, EmbedderActor, EmbedderHandle, EmbedderMsg};
pub use bert::{BertEmbedder, EmbedError};
