//! Turning a document and its spans into chunks with ids and metadata.
use serde::{Deserialize, Serialize};

use super::{SplitError, Splitter};
use crate::document::{Document, Metadata};

/// A piece of a document, the unit that is embedded, stored and searched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// `"{doc_id}#{n}"`.
    pub id: String,
    /// The document it came from.
    pub doc_id: String,
    /// The chunk's text, an exact slice of the document's text.
    pub text: String,
    /// The document's metadata plus `source`, `doc_id`, `chunk_index`, `byte_start`, `byte_end`.
    pub metadata: Metadata,
}

/// Splits a document into chunks that carry their position in it.
pub fn chunk_document(doc: &Document, splitter: &dyn Splitter) -> Result<Vec<Chunk>, SplitError> {
    let spans = splitter.split(&doc.text)?;
    Ok(spans
        .into_iter()
        .enumerate()
        .map(|(n, span)| {
            let mut metadata = doc.metadata.clone();
            metadata.insert("source".into(), doc.source.clone().into());
            metadata.insert("doc_id".into(), doc.id.clone().into());
            metadata.insert("chunk_index".into(), n.into());
            metadata.insert("byte_start".into(), span.start.into());
            metadata.insert("byte_end".into(), span.end.into());
            Chunk {
                id: format!("{}#{n}", doc.id),
                doc_id: doc.id.clone(),
                text: doc.text[span.start..span.end].to_string(),
                metadata,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunking::RecursiveSplitter;

    #[test]
    fn chunks_carry_ids_positions_and_metadata() {
        let mut doc = Document::new("guide/zh.md", "text/markdown", "第一段。\n\n第二段，含 English words.");
        doc.source = "guide/zh.md".into();
        doc.metadata.insert("lang".into(), "zh".into());
        let chunks = chunk_document(&doc, &RecursiveSplitter::new(8, 0).unwrap()).unwrap();
        assert!(chunks.len() >= 2);
        for (n, c) in chunks.iter().enumerate() {
            assert_eq!(c.id, format!("guide/zh.md#{n}"));
            assert_eq!(c.metadata["lang"], "zh");
            assert_eq!(c.metadata["chunk_index"], n);
            let (s, e) = (
                c.metadata["byte_start"].as_u64().unwrap() as usize,
                c.metadata["byte_end"].as_u64().unwrap() as usize,
            );
            assert_eq!(&doc.text[s..e], c.text);
        }
        assert_eq!(chunks[0].text, "第一段。");
    }
}
