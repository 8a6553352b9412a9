//! Sentence embeddings on candle.
//!
//! [`BertEmbedder`] is the model (tokenize, BERT forward, mean pooling, L2
//! normalisation); [`EmbedderActor`] owns one and batches concurrent requests by
//! a token budget, so many small requests share one forward pass.

mod actor;
mod bert;

pub use actor::{spawn_embedder, BatchLimits, EmbedderActor, EmbedderHandle, EmbedderMsg};
pub use bert::{BertEmbedder, EmbedError};
