//! The loader pool: parsing and splitting off the async runtime.
//!
//! Parsing a PDF or splitting a large document is CPU work that would stall the
//! runtime's threads, so it runs on the blocking pool, at most `workers` jobs at
//! once (a semaphore bounds it, so a burst of ingests queues instead of
//! spawning unbounded threads).
use std::sync::Arc;

use tokenizers::Tokenizer;
use tokio::sync::Semaphore;
use tracing::info_span;

use super::{load_file, Document, Metadata, Sandbox, MAX_METADATA_BYTES};
use crate::chunking::{chunk_document, Chunk, RecursiveSplitter, Splitter, TokenSplitter};

/// How to split, per request.
#[derive(Debug, Clone)]
pub struct SplitSpec {
    /// "recursive" or "token".
    pub kind: String,
    /// Characters (recursive) or word pieces (token) per chunk.
    pub chunk_size: usize,
    /// Overlap in the same unit.
    pub chunk_overlap: usize,
}

/// A file to load.
#[derive(Debug, Clone)]
pub struct FileJob {
    /// File name (extension picks the loader).
    pub name: String,
    /// Document id.
    pub doc_id: String,
    /// Raw bytes.
    pub content: Vec<u8>,
    /// Extra metadata for its documents.
    pub metadata: Metadata,
}

/// A loaded document with its chunks.
#[derive(Debug, Clone)]
pub struct LoadedDocument {
    /// The document (its text is not needed after splitting, but kept for callers).
    pub document: Document,
    /// Its chunks.
    pub chunks: Vec<Chunk>,
}

/// Results of a load: documents and per-source errors.
#[derive(Debug, Default)]
pub struct LoadOutcome {
    /// Loaded documents.
    pub documents: Vec<LoadedDocument>,
    /// (source, message) for each file or document that failed.
    pub errors: Vec<(String, String)>,
}

/// See the module documentation.
#[derive(Clone)]
pub struct LoaderPool {
    permits: Arc<Semaphore>,
    tokenizer: Option<Arc<Tokenizer>>,
    max_document_bytes: usize,
    sandbox: Option<Arc<Sandbox>>,
}

impl LoaderPool {
    /// A pool of `workers` concurrent jobs. `tokenizer` enables the token
    /// splitter; `sandbox` is where unbounded parsers run (see [`load_file`]).
    pub fn new(
        workers: usize,
        tokenizer: Option<Tokenizer>,
        max_document_bytes: usize,
        sandbox: Option<Sandbox>,
    ) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(workers.max(1))),
            tokenizer: tokenizer.map(Arc::new),
            max_document_bytes,
            sandbox: sandbox.map(Arc::new),
        }
    }

    /// Loads files and documents and splits them; never fails as a whole: every
    /// problem is reported against its source.
    pub async fn load_and_split(
        &self,
        files: Vec<FileJob>,
        documents: Vec<Document>,
        spec: SplitSpec,
    ) -> Result<LoadOutcome, LoaderError> {
        let spec_error = |m: String| LoaderError::Spec(m);
        let splitter: Arc<dyn Splitter> = match spec.kind.as_str() {
            "" | "recursive" => Arc::new(
                RecursiveSplitter::new(spec.chunk_size, spec.chunk_overlap).map_err(|e| spec_error(e.to_string()))?,
            ),
            "token" => {
                let tok = self.tokenizer.as_ref().ok_or_else(|| {
                    spec_error("the token splitter needs the embedder's tokenizer on this node".into())
                })?;
                Arc::new(
                    TokenSplitter::new((**tok).clone(), spec.chunk_size, spec.chunk_overlap)
                        .map_err(|e| spec_error(e.to_string()))?,
                )
            }
            other => return Err(spec_error(format!("unknown splitter '{other}' (use recursive or token)"))),
        };
        let _permit = self.permits.acquire().await.map_err(|e| LoaderError::Unavailable(e.to_string()))?;
        let max = self.max_document_bytes;
        let sandbox = self.sandbox.clone();
        let span = info_span!("loader.load_and_split", files = files.len(), documents = documents.len());
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| run(files, documents, splitter.as_ref(), max, sandbox.as_deref()))
        })
        .await
        .map_err(|e| LoaderError::Unavailable(format!("loader task failed: {e}")))
    }
}

/// Why a load-and-split job did not run (problems with single files are
/// reported in the outcome instead).
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The splitter settings cannot work.
    #[error("{0}")]
    Spec(String),
    /// The pool is shut down or its worker died.
    #[error("{0}")]
    Unavailable(String),
}

fn run(
    files: Vec<FileJob>,
    documents: Vec<Document>,
    splitter: &dyn Splitter,
    max: usize,
    sandbox: Option<&Sandbox>,
) -> LoadOutcome {
    let mut outcome = LoadOutcome::default();
    let mut docs = Vec::new();
    for f in files {
        if f.content.len() > max {
            outcome
                .errors
                .push((f.name.clone(), format!("file is {} bytes, over the limit of {max}", f.content.len())));
            continue;
        }
        match load_file(&f.name, &f.doc_id, &f.content, &f.metadata, sandbox) {
            Ok(d) => docs.extend(d),
            Err(e) => outcome.errors.push((f.name.clone(), e.to_string())),
        }
    }
    docs.extend(documents);
    for doc in docs {
        let source = if doc.source.is_empty() { doc.id.clone() } else { doc.source.clone() };
        if doc.id.is_empty() {
            outcome.errors.push((source, "document id must not be empty".into()));
            continue;
        }
        if doc.text.len() > max {
            outcome
                .errors
                .push((source, format!("document {} is {} bytes, over the limit of {max}", doc.id, doc.text.len())));
            continue;
        }
        let metadata_bytes = serde_json::to_vec(&doc.metadata).map_or(usize::MAX, |b| b.len());
        if metadata_bytes > MAX_METADATA_BYTES {
            outcome.errors.push((
                source,
                format!(
                    "metadata of document {} is {metadata_bytes} bytes, over the limit of {MAX_METADATA_BYTES}",
                    doc.id
                ),
            ));
            continue;
        }
        match chunk_document(&doc, splitter) {
            Ok(chunks) if chunks.is_empty() => {
                outcome.errors.push((source, format!("document {} has no text", doc.id)))
            }
            Ok(chunks) => outcome.documents.push(LoadedDocument { document: doc, chunks }),
            Err(e) => outcome.errors.push((source, e.to_string())),
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_with_huge_metadata_is_refused_and_the_rest_is_split() {
        let splitter = RecursiveSplitter::new(100, 10).unwrap();
        let mut heavy = Document::new("heavy", "text/plain", "some text");
        heavy.metadata.insert("blob".into(), "x".repeat(MAX_METADATA_BYTES).into());
        let light = Document::new("light", "text/plain", "其他 text");
        let outcome = run(Vec::new(), vec![heavy, light], &splitter, 1 << 20, None);
        assert_eq!(outcome.documents.len(), 1);
        assert_eq!(outcome.documents[0].document.id, "light");
        assert_eq!(outcome.errors.len(), 1);
        assert!(outcome.errors[0].1.contains("over the limit of 65536"), "{:?}", outcome.errors);
    }
}
