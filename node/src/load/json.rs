//! JSON and JSON Lines.
//!
//! A JSON Lines file holds one document per line: `{"id", "text", "metadata"?}`.
//! A malformed line rejects the whole file with its line number, so that a
//! half-ingested file never silently passes for a complete one.
use serde_json::Value;

use super::{utf8, Document, LoadError, Metadata};

pub(super) fn load_jsonl(doc_id: &str, bytes: &[u8]) -> Result<Vec<Document>, LoadError> {
    let text = utf8(bytes)?;
    let mut docs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if docs.len() >= super::MAX_DOCUMENTS_PER_FILE {
            return Err(LoadError::TooManyDocuments);
        }
        let value: Value = serde_json::from_str(line).map_err(|e| LoadError::Json(format!("line {}: {e}", n + 1)))?;
        let doc = record(&value, &format!("{doc_id}:{}", n + 1))
            .map_err(|e| LoadError::Json(format!("line {}: {e}", n + 1)))?;
        docs.push(doc);
    }
    Ok(docs)
}

/// A `.json` file: an object with `text` (one document), an array of such
/// objects (one each), or any other JSON value (its strings, one document).
pub(super) fn load_json(doc_id: &str, bytes: &[u8]) -> Result<Vec<Document>, LoadError> {
    let value: Value = serde_json::from_str(utf8(bytes)?).map_err(|e| LoadError::Json(e.to_string()))?;
    match &value {
        Value::Object(o) if o.contains_key("text") => Ok(vec![record(&value, doc_id)?]),
        Value::Array(items) if items.len() > super::MAX_DOCUMENTS_PER_FILE => Err(LoadError::TooManyDocuments),
        Value::Array(items) if !items.is_empty() && items.iter().all(|i| i.get("text").is_some()) => {
            items.iter().enumerate().map(|(n, item)| record(item, &format!("{doc_id}:{}", n + 1))).collect()
        }
        _ => {
            let mut parts = Vec::new();
            strings(&value, &mut parts);
            Ok(vec![Document::new(doc_id, "application/json", parts.join("\n"))])
        }
    }
}

/// One `{"id", "text", "metadata"}` record; `fallback_id` when it has no id.
fn record(value: &Value, fallback_id: &str) -> Result<Document, LoadError> {
    let obj = value.as_object().ok_or_else(|| LoadError::Json("expected an object with a \"text\" field".into()))?;
    let text = match obj.get("text") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(LoadError::Json("\"text\" must be a string".into())),
        None => return Err(LoadError::Json("missing \"text\" field".into())),
    };
    let id = match obj.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        None | Some(Value::Null) => fallback_id.to_string(),
        Some(_) => return Err(LoadError::Json("\"id\" must be a non-empty string or a number".into())),
    };
    let metadata = match obj.get("metadata") {
        None | Some(Value::Null) => Metadata::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => return Err(LoadError::Metadata(other.to_string())),
    };
    let mut doc = Document::new(id, "application/json", text);
    doc.metadata = metadata;
    Ok(doc)
}

fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        Value::Object(o) => o.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_gives_one_document_per_line() {
        let data = "{\"id\":\"a\",\"text\":\"alpha\",\"metadata\":{\"lang\":\"en\"}}\n\n{\"text\":\"第二\"}\n";
        let docs = load_jsonl("f.jsonl", data.as_bytes()).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].id, "a");
        assert_eq!(docs[0].metadata["lang"], "en");
        assert_eq!(docs[1].id, "f.jsonl:3");
        assert_eq!(docs[1].text, "第二");
    }

    #[test]
    fn malformed_jsonl_line_names_the_line() {
        let data = "{\"id\":\"a\",\"text\":\"ok\"}\n{\"id\": oops}\n";
        let err = load_jsonl("f.jsonl", data.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = load_jsonl("f.jsonl", b"{\"id\":\"a\"}").unwrap_err();
        assert!(err.to_string().contains("text"), "{err}");
    }

    #[test]
    fn json_object_array_and_other() {
        assert_eq!(load_json("x.json", br#"{"text":"t","id":"i"}"#).unwrap()[0].id, "i");
        assert_eq!(load_json("x.json", br#"[{"text":"a"},{"text":"b"}]"#).unwrap().len(), 2);
        let other = load_json("x.json", br#"{"title":"Hello","tags":["a","b"]}"#).unwrap();
        assert_eq!(other[0].text, "Hello\na\nb"); // strings in document order
        assert!(load_json("x.json", b"{not json").is_err());
    }
}
