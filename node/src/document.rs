use serde::{Deserialize, Serialize};

/// Metadata attached to documents and chunks: string keys, JSON values, so that
/// filters can compare numbers and booleans as well as strings.
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// A loaded document, before splitting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// Caller's id, or the path relative to the ingest root.
    pub id: String,
    /// Where it came from (file name or caller-given source).
    pub source: String,
    /// MIME type of the original bytes.
    pub mime: String,
    /// Extracted text.
    pub text: String,
    /// Document metadata, copied into every chunk.
    pub metadata: Metadata,
}

impl Document {
    /// A document with empty metadata and source.
    pub fn new(id: impl Into<String>, mime: &str, text: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            source: String::new(),
            mime: mime.to_string(),
            text: text.into(),
            metadata: Metadata::new(),
        }
    }
}
