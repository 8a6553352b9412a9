//! Document loaders: bytes and a file name in, documents out.
//!
//! One file per format; [`load_file`] picks the loader from the file extension so
//! that a client never has to name the format. Every loader returns a clear
//! [`LoadError`] instead of panicking on broken input, so one bad file in a batch
//! is reported and skipped while the rest is stored.

mod csv;
mod html;
mod json;
mod pdf;
mod pool;
pub mod sandbox;
mod text;

pub use crate::document::{Document, Metadata};
pub use pool::{FileJob, LoadOutcome, LoadedDocument, LoaderError, LoaderPool, SplitSpec};
pub use sandbox::{Sandbox, SandboxLimits};

use thiserror::Error;

/// Most documents one file may yield (CSV rows, JSON Lines, JSON array items):
/// each becomes at least one chunk, vector and index entry, so a 1M-row file
/// would hold the loader and the embedder for hours.
pub const MAX_DOCUMENTS_PER_FILE: usize = 100_000;
/// Most bytes of metadata (as JSON) on one document: metadata is copied into
/// every chunk, so it multiplies with the chunk count.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

/// Sample inputs for tests (here rather than in each test, since both unit and
/// integration tests need a real PDF and none can be checked in as a binary).
pub mod testing {
    /// Builds a one-page PDF with a text layer, computing the xref offsets.
    pub fn tiny_pdf(text: &str) -> Vec<u8> {
        let content = format!("BT /F1 12 Tf 72 720 Td ({text}) Tj ET");
        let objects = [
            "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
            "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>".to_string(),
            format!("<< /Length {} >>\nstream\n{content}\nendstream", content.len()),
            "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".to_string(),
        ];
        let bodies: Vec<Vec<u8>> = objects.iter().map(|o| o.as_bytes().to_vec()).collect();
        pdf_from_objects(&bodies)
    }

    /// A PDF from its objects' bodies (numbered from 1, object 1 the catalog),
    /// with a correct cross-reference table.
    pub fn pdf_from_objects(objects: &[Vec<u8>]) -> Vec<u8> {
        let mut out = b"%PDF-1.4\n".to_vec();
        let mut offsets = Vec::new();
        for (i, body) in objects.iter().enumerate() {
            offsets.push(out.len());
            out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
            out.extend_from_slice(body);
            out.extend_from_slice(b"\nendobj\n");
        }
        let xref = out.len();
        out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
        for off in offsets {
            out.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
        }
        out.extend_from_slice(
            format!("trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1).as_bytes(),
        );
        out
    }
}

/// Why a file could not be turned into documents.
#[derive(Debug, Error)]
pub enum LoadError {
    /// The extension names no loader.
    #[error("unsupported file type '{0}' (supported: txt, md, markdown, html, htm, json, jsonl, csv, pdf)")]
    Unsupported(String),
    /// Text formats must be UTF-8; the byte offset tells the user where it broke.
    #[error("file is not valid UTF-8 (first invalid byte at offset {0})")]
    InvalidUtf8(usize),
    /// A JSON or JSON Lines file that does not parse or lacks the expected fields.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// An HTML file past the loader's limits.
    #[error("invalid HTML: {0}")]
    Html(String),
    /// A file that yields more documents than [`MAX_DOCUMENTS_PER_FILE`].
    #[error("the file holds more than {MAX_DOCUMENTS_PER_FILE} documents (rows or lines); split it")]
    TooManyDocuments,
    /// A CSV file that does not parse.
    #[error("invalid CSV: {0}")]
    Csv(String),
    /// A PDF without a readable text layer, or one the parser rejects.
    #[error("cannot read PDF: {0}")]
    Pdf(String),
    /// A sandboxed parser died or overran its limits.
    #[error("cannot read {format} file: {reason}")]
    Sandbox {
        /// The format being parsed.
        format: String,
        /// What happened to the parser process.
        reason: String,
    },
    /// The sandboxed parser rejected the file (its own message).
    #[error("{0}")]
    Rejected(String),
    /// Caller-supplied metadata that is not a JSON object.
    #[error("metadata must be a JSON object: {0}")]
    Metadata(String),
}

/// Loads one file into zero or more documents.
///
/// `doc_id` is the id the caller chose (the path relative to the ingest root);
/// formats that yield several documents (JSON Lines, CSV, JSON arrays) derive
/// per-document ids from it unless the record carries its own `id`.
/// `sandbox` runs the parsers that can recurse or allocate without bound
/// (PDF); None parses them in this process (tests and tools only: a hostile
/// file can then abort the process).
pub fn load_file(
    name: &str,
    doc_id: &str,
    bytes: &[u8],
    extra: &Metadata,
    sandbox: Option<&Sandbox>,
) -> Result<Vec<Document>, LoadError> {
    let ext = extension(name);
    let Some(format) = Format::of(&ext) else {
        return Err(LoadError::Unsupported(if ext.is_empty() { name.to_string() } else { ext }));
    };
    let mut docs = match format {
        Format::Text => vec![text::load(doc_id, bytes, mime_for(&ext))?],
        Format::Html => vec![html::load(doc_id, bytes)?],
        Format::Json => json::load_json(doc_id, bytes)?,
        Format::JsonLines => json::load_jsonl(doc_id, bytes)?,
        Format::Csv => csv::load(doc_id, bytes)?,
        Format::Pdf => vec![pdf::load(doc_id, bytes, sandbox)?],
    };
    for doc in &mut docs {
        doc.source = name.to_string();
        for (k, v) in extra {
            doc.metadata.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    Ok(docs)
}

/// True when [`load_file`] has a loader for this file name; the CLI uses it to skip
/// files it walks past in a folder (a file named explicitly is always sent).
pub fn is_supported(name: &str) -> bool {
    Format::of(&extension(name)).is_some()
}

/// The loader a file extension selects (the one list both [`load_file`] and
/// [`is_supported`] read).
enum Format {
    Text,
    Html,
    Json,
    JsonLines,
    Csv,
    Pdf,
}

impl Format {
    fn of(ext: &str) -> Option<Self> {
        Some(match ext {
            "txt" | "text" | "md" | "markdown" | "rst" | "log" => Self::Text,
            "html" | "htm" | "xhtml" => Self::Html,
            "json" => Self::Json,
            "jsonl" | "ndjson" => Self::JsonLines,
            "csv" => Self::Csv,
            "pdf" => Self::Pdf,
            _ => return None,
        })
    }
}

fn extension(name: &str) -> String {
    std::path::Path::new(name).extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).unwrap_or_default()
}

fn mime_for(ext: &str) -> &'static str {
    match ext {
        "md" | "markdown" => "text/markdown",
        _ => "text/plain",
    }
}

/// Decodes UTF-8 and reports the first bad byte, so users can find it.
pub(crate) fn utf8(bytes: &[u8]) -> Result<&str, LoadError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    std::str::from_utf8(bytes).map_err(|e| LoadError::InvalidUtf8(e.valid_up_to()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str, bytes: &[u8]) -> Result<Vec<Document>, LoadError> {
        load_file(name, name, bytes, &Metadata::new(), None)
    }

    #[test]
    fn plain_text_and_markdown_keep_their_text() {
        let docs = load("notes.md", "# 标题\n\nSome *markdown* 文本。".as_bytes()).unwrap();
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].text, "# 标题\n\nSome *markdown* 文本。");
        assert_eq!(docs[0].mime, "text/markdown");
        assert_eq!(docs[0].id, "notes.md");
        assert_eq!(docs[0].source, "notes.md");
    }

    #[test]
    fn invalid_utf8_is_an_error_with_offset() {
        let err = load("a.txt", b"abc\xff\xfedef").unwrap_err();
        assert!(matches!(err, LoadError::InvalidUtf8(3)), "{err}");
    }

    #[test]
    fn unsupported_extension_is_named() {
        let err = load("image.png", b"\x89PNG").unwrap_err();
        assert!(err.to_string().contains("png"), "{err}");
        assert!(!is_supported("image.png"));
        assert!(is_supported("Doc.PDF"));
    }

    #[test]
    fn extra_metadata_does_not_override_loader_fields() {
        let mut extra = Metadata::new();
        extra.insert("team".into(), serde_json::json!("search"));
        let docs = load_file("a.txt", "dir/a.txt", b"hello", &extra, None).unwrap();
        assert_eq!(docs[0].metadata["team"], "search");
        assert_eq!(docs[0].id, "dir/a.txt");
    }
}
