//! HTML: only the text a reader would see (no scripts, styles or head).
use scraper::{ElementRef, Html, Node};

use super::{utf8, Document, LoadError};

/// Elements whose content is never shown to a reader.
const INVISIBLE: &[&str] = &["script", "style", "noscript", "head", "template", "svg", "iframe", "object"];
/// Elements that start a new line in rendered text.
const BLOCK: &[&str] = &[
    "p",
    "div",
    "br",
    "li",
    "ul",
    "ol",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "tr",
    "table",
    "section",
    "article",
    "header",
    "footer",
    "pre",
    "blockquote",
    "dt",
    "dd",
    "hr",
    "nav",
    "aside",
    "main",
    "title",
];

pub(super) fn load(doc_id: &str, bytes: &[u8]) -> Result<Document, LoadError> {
    let html = Html::parse_document(utf8(bytes)?);
    let mut out = String::new();
    walk(html.root_element(), &mut out);
    let text = tidy(&out);
    let mut doc = Document::new(doc_id, "text/html", text);
    let title = html
        .root_element()
        .descendants()
        .filter_map(ElementRef::wrap)
        .find(|e| e.value().name() == "title")
        .map(|e| e.text().collect::<String>().trim().to_string());
    if let Some(title) = title.filter(|t| !t.is_empty()) {
        doc.metadata.insert("title".into(), title.into());
    }
    Ok(doc)
}

fn walk(element: ElementRef<'_>, out: &mut String) {
    for child in element.children() {
        match child.value() {
            Node::Text(text) => out.push_str(text),
            Node::Element(e) => {
                let name = e.name();
                if INVISIBLE.contains(&name) || e.attr("hidden").is_some() {
                    continue;
                }
                let block = BLOCK.contains(&name);
                if block {
                    out.push('\n');
                }
                if let Some(child) = ElementRef::wrap(child) {
                    walk(child, out);
                }
                if block {
                    out.push('\n');
                }
            }
            _ => {}
        }
    }
}

/// Collapses runs of spaces inside lines and of blank lines between them.
fn tidy(raw: &str) -> String {
    let mut lines: Vec<String> = Vec::new();
    let mut blank = false;
    for line in raw.lines() {
        let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if line.is_empty() {
            blank = !lines.is_empty();
            continue;
        }
        if blank {
            lines.push(String::new());
            blank = false;
        }
        lines.push(line);
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_visible_text_only() {
        let page = r#"<html><head><title>T</title><style>body{color:red}</style></head>
            <body><script>var secret = 1;</script><h1>Copying  files</h1>
            <p>Use <b>cp -r</b> 复制目录。</p><div hidden>nope</div><noscript>js off</noscript></body></html>"#;
        let doc = load("page.html", page.as_bytes()).unwrap();
        assert_eq!(doc.text, "Copying files\n\nUse cp -r 复制目录。");
        assert_eq!(doc.metadata["title"], "T");
        assert!(!doc.text.contains("secret"));
    }
}
