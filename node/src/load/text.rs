//! Plain text and Markdown: the bytes are the text.
use super::{utf8, Document, LoadError};

pub(super) fn load(doc_id: &str, bytes: &[u8], mime: &str) -> Result<Document, LoadError> {
    Ok(Document::new(doc_id, mime, utf8(bytes)?))
}
