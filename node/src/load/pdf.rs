//! PDF: the text layer, through `pdf-extract`.
//!
//! The parser can panic on malformed files (caught here and turned into an
//! error) and can also recurse or allocate without bound (a self-drawing form
//! XObject, a flate bomb), which no catch survives: on a server the parse runs
//! in a [`Sandbox`] child process.
use super::{sandbox::Sandbox, Document, LoadError};

pub(super) fn load(doc_id: &str, bytes: &[u8], sandbox: Option<&Sandbox>) -> Result<Document, LoadError> {
    let text = match sandbox {
        Some(sandbox) => sandbox.extract("pdf", bytes)?,
        None => extract_text(bytes)?,
    };
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(LoadError::Pdf("no text layer (scanned image?)".into()));
    }
    Ok(Document::new(doc_id, "application/pdf", text))
}

/// The text layer, parsed in this process (what the sandbox child runs).
pub(super) fn extract_text(bytes: &[u8]) -> Result<String, LoadError> {
    let bytes = bytes.to_vec();
    match std::panic::catch_unwind(move || pdf_extract::extract_text_from_mem(&bytes)) {
        Ok(Ok(text)) => Ok(text),
        Ok(Err(e)) => Err(LoadError::Pdf(e.to_string())),
        Err(_) => Err(LoadError::Pdf("the PDF parser failed on this file".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::testing::tiny_pdf;

    #[test]
    fn reads_the_text_layer() {
        let doc = load("a.pdf", &tiny_pdf("Copy a directory with cp -r"), None).unwrap();
        assert!(doc.text.contains("Copy a directory with cp -r"), "{:?}", doc.text);
    }

    #[test]
    fn broken_pdf_is_an_error_not_a_panic() {
        assert!(load("b.pdf", b"%PDF-1.4 garbage", None).is_err());
        assert!(load("c.pdf", b"", None).is_err());
    }
}
