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

/// Deepest element nesting accepted (browsers stop building the tree near 512).
pub(super) const MAX_DEPTH: usize = 1024;

/// Elements that never hold children, or whose end tag HTML lets a page omit
/// (the parser closes them itself), so an unmatched start tag is no nesting.
const NO_NESTING: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr", "p", "li",
    "dt", "dd", "tr", "td", "th", "option", "optgroup", "thead", "tbody", "tfoot", "colgroup", "caption", "rb", "rt",
    "rp", "html", "head", "body",
];

pub(super) fn load(doc_id: &str, bytes: &[u8]) -> Result<Document, LoadError> {
    let source = utf8(bytes)?;
    // The parser's work per tag grows with the depth of open elements (scope
    // checks walk them), so 200,000 nested tags cost minutes before any walk:
    // refuse them from a cheap count of the tags first.
    if nesting_estimate(source) > MAX_DEPTH {
        return Err(LoadError::Html(format!("elements nested deeper than {MAX_DEPTH}")));
    }
    let html = Html::parse_document(source);
    let text = tidy(&visible_text(html.root_element())?);
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

/// One step of the walk: a node to read, or the end of a block element.
enum Step<'a> {
    Visit(ego_tree::NodeRef<'a, Node>, usize),
    CloseBlock,
}

/// The text a reader sees, block elements on their own lines. Walked with an
/// explicit stack, not recursion: a file of 100,000 nested tags must cost an
/// error, not the process's stack.
fn visible_text(root: ElementRef<'_>) -> Result<String, LoadError> {
    let mut out = String::new();
    let mut stack: Vec<Step<'_>> = root.children().rev().map(|c| Step::Visit(c, 1)).collect();
    while let Some(step) = stack.pop() {
        let (node, depth) = match step {
            Step::CloseBlock => {
                out.push('\n');
                continue;
            }
            Step::Visit(node, depth) => (node, depth),
        };
        match node.value() {
            Node::Text(text) => out.push_str(text),
            Node::Element(e) => {
                let name = e.name();
                if INVISIBLE.contains(&name) || e.attr("hidden").is_some() {
                    continue;
                }
                if depth > MAX_DEPTH {
                    return Err(LoadError::Html(format!("elements nested deeper than {MAX_DEPTH}")));
                }
                if BLOCK.contains(&name) {
                    out.push('\n');
                    stack.push(Step::CloseBlock);
                }
                stack.extend(node.children().rev().map(|c| Step::Visit(c, depth + 1)));
            }
            _ => {}
        }
    }
    Ok(out)
}

/// The deepest nesting of start and end tags, skipping comments, the content of
/// `script`/`style`, self-closed tags and the elements in [`NO_NESTING`].
/// Stops counting as soon as it passes `MAX_DEPTH`.
fn nesting_estimate(source: &str) -> usize {
    let bytes = source.as_bytes();
    let (mut depth, mut deepest, mut at) = (0usize, 0usize, 0usize);
    while let Some(offset) = bytes[at..].iter().position(|b| *b == b'<') {
        at += offset + 1;
        if bytes[at..].starts_with(b"!--") {
            at = find(bytes, at, b"-->").unwrap_or(bytes.len());
            continue;
        }
        let closing = bytes.get(at) == Some(&b'/');
        let name_start = at + usize::from(closing);
        let name_len = bytes[name_start..].iter().take_while(|b| b.is_ascii_alphanumeric()).count();
        if name_len == 0 {
            continue;
        }
        let name = source[name_start..name_start + name_len].to_ascii_lowercase();
        let end = find(bytes, name_start, b">").unwrap_or(bytes.len());
        let self_closed = end > 0 && bytes.get(end - 1) == Some(&b'/');
        at = end.min(bytes.len());
        if NO_NESTING.contains(&name.as_str()) || self_closed {
            continue;
        }
        if closing {
            depth = depth.saturating_sub(1);
        } else if name == "script" || name == "style" {
            let close = format!("</{name}");
            at = find_ignore_case(bytes, at, close.as_bytes()).unwrap_or(bytes.len());
        } else {
            depth += 1;
            deepest = deepest.max(depth);
            if deepest > MAX_DEPTH {
                break;
            }
        }
    }
    deepest
}

fn find(bytes: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    bytes.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| from + p)
}

fn find_ignore_case(bytes: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    bytes.get(from..)?.windows(needle.len()).position(|w| w.eq_ignore_ascii_case(needle)).map(|p| from + p)
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

    #[test]
    fn deep_nesting_is_an_error_and_shallow_nesting_is_read() {
        let deep = "<div>".repeat(200_000) + "x";
        let err = load("deep.html", deep.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("nested deeper than 1024"), "{err}");
        let fine = "<span>".repeat(MAX_DEPTH - 10) + "inner 文本";
        assert_eq!(load("ok.html", fine.as_bytes()).unwrap().text, "inner 文本");
        // Mixed elements count too.
        let walked = "<div><b>".repeat(MAX_DEPTH / 2 + 10);
        assert!(nesting_estimate(&walked) > MAX_DEPTH);
        let hidden =
            "<!--".to_string() + &"<div>".repeat(5000) + "-->" + "<script>" + &"<div>".repeat(5000) + "</script>ok";
        assert_eq!(nesting_estimate(&hidden), 0);
        assert_eq!(load("h.html", hidden.as_bytes()).unwrap().text, "ok");
        // Pages that leave <p> and <li> open are not deep.
        let sloppy = "<ul>".to_string() + &"<li><p>item".repeat(5000) + "</ul>";
        assert_eq!(nesting_estimate(&sloppy), 1);
    }
}
