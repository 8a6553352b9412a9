//! CSV: one document per row, the text being `column: value` lines so that the
//! column names stay searchable; the row's cells are also kept as metadata.
use super::{Document, LoadError};

pub(super) fn load(doc_id: &str, bytes: &[u8]) -> Result<Vec<Document>, LoadError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(bytes);
    let headers =
        reader.headers().map_err(|e| LoadError::Csv(e.to_string()))?.iter().map(str::to_string).collect::<Vec<_>>();
    let mut docs = Vec::new();
    for (n, row) in reader.records().enumerate() {
        if n >= super::MAX_DOCUMENTS_PER_FILE {
            return Err(LoadError::TooManyDocuments);
        }
        let row = row.map_err(|e| LoadError::Csv(format!("row {}: {e}", n + 1)))?;
        let mut lines = Vec::new();
        let mut doc = Document::new(format!("{doc_id}:{}", n + 1), "text/csv", String::new());
        for (i, cell) in row.iter().enumerate() {
            let column = headers.get(i).cloned().unwrap_or_else(|| format!("column{}", i + 1));
            lines.push(format!("{column}: {cell}"));
            doc.metadata.insert(column, cell.into());
        }
        doc.metadata.insert("row".into(), (n + 1).into());
        doc.text = lines.join("\n");
        docs.push(doc);
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_document_per_row() {
        let docs = load("t.csv", "name,城市\nann,北京\nbob,\"Paris, FR\"\n".as_bytes()).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].id, "t.csv:1");
        assert_eq!(docs[0].text, "name: ann\n城市: 北京");
        assert_eq!(docs[1].metadata["城市"], "Paris, FR");
        assert_eq!(docs[1].metadata["row"], 2);
    }

    #[test]
    fn a_file_of_too_many_rows_is_one_error() {
        let rows = "n\n".to_string() + &"1\n".repeat(crate::load::MAX_DOCUMENTS_PER_FILE);
        assert_eq!(load("ok.csv", rows.as_bytes()).unwrap().len(), crate::load::MAX_DOCUMENTS_PER_FILE);
        let over = rows + "2\n";
        assert!(matches!(load("big.csv", over.as_bytes()), Err(LoadError::TooManyDocuments)));
        let lines = "{\"id\":\"a\",\"text\":\"t\"}\n".repeat(crate::load::MAX_DOCUMENTS_PER_FILE + 1);
        let jsonl = crate::load::load_file("big.jsonl", "big.jsonl", lines.as_bytes(), &Default::default(), None);
        assert!(matches!(jsonl, Err(LoadError::TooManyDocuments)));
    }

    #[test]
    fn invalid_utf8_cell_is_an_error() {
        assert!(load("t.csv", b"a,b\n\xff,1\n").is_err());
    }
}
