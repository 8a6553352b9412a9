//! PDF: the text layer, through `pdf-extract`.
//!
//! The parser can panic on malformed files; the panic is caught here and turned
//! into an error, so a broken PDF is skipped like any other bad file.
use super::{Document, LoadError};

pub(super) fn load(doc_id: &str, bytes: &[u8]) -> Result<Document, LoadError> {
    let bytes = bytes.to_vec();
    let result = std::panic::catch_unwind(move || pdf_extract::extract_text_from_mem(&bytes));
    let text = match result {
        Ok(Ok(text)) => text,
        Ok(Err(e)) => return Err(LoadError::Pdf(e.to_string())),
        Err(_) => return Err(LoadError::Pdf("the PDF parser failed on this file".into())),
    };
    let text = text.trim().to_string();
    if text.is_empty() {
        return Err(LoadError::Pdf("no text layer (scanned image?)".into()));
    }
    Ok(Document::new(doc_id, "application/pdf", text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::testing::tiny_pdf;

    #[test]
    fn reads_the_text_layer() {
        let doc = load("a.pdf", &tiny_pdf("Copy a directory with cp -r")).unwrap();
        assert!(doc.text.contains("Copy a directory with cp -r"), "{:?}", doc.text);
    }

    #[test]
    fn broken_pdf_is_an_error_not_a_panic() {
        assert!(load("b.pdf", b"%PDF-1.4 garbage").is_err());
        assert!(load("c.pdf", b"").is_err());
    }
}
