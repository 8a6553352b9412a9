//! Hostile files through a real `tessera up`: each one costs its own error line,
//! the server stays up, and every other file in the same ingest is stored.
//!
//! The files are made here (none is checked in): HTML nested 200,000 deep, a
//! PDF whose form XObject draws itself (a stack overflow in the parser), a PDF
//! whose content stream inflates to 1.5 GiB (a flate bomb), a CSV of a million
//! rows, and a JSON Lines record with a megabyte of metadata.
mod common;

use std::io::Write;

use common::{doc_ids, tiny_pdf, Server};
use tessera_node::load::testing::pdf_from_objects as pdf;

fn stream(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut body = format!("<< {dict} /Length {} >>\nstream\n", data.len()).into_bytes();
    body.extend_from_slice(data);
    body.extend_from_slice(b"\nendstream");
    body
}

fn page_objects(resources: &str, contents: Vec<u8>) -> Vec<Vec<u8>> {
    vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        format!("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> {resources} >> >>").into_bytes(),
        contents,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".to_vec(),
    ]
}

/// A page that draws form XObject 6, which draws itself.
fn xobject_cycle_pdf() -> Vec<u8> {
    let mut objects =
        page_objects("/XObject << /X1 6 0 R >>", stream("", b"BT /F1 12 Tf 72 720 Td (loop) Tj ET /X1 Do"));
    objects.push(stream(
        "/Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources << /XObject << /X1 6 0 R >> >>",
        b"/X1 Do",
    ));
    pdf(&objects)
}

/// A page whose content stream inflates to `inflated` bytes of spaces.
fn flate_bomb_pdf(inflated: usize) -> Vec<u8> {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let block = vec![b' '; 1 << 20];
    z.write_all(b"BT /F1 12 Tf 72 720 Td (bomb) Tj ET").unwrap();
    for _ in 0..inflated / block.len() {
        z.write_all(&block).unwrap();
    }
    pdf(&page_objects("", stream("/Filter /FlateDecode", &z.finish().unwrap())))
}

#[test]
fn hostile_files_cost_one_error_each_and_the_server_stays_up() {
    let Some(models) = common::models() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &models);
    let folder = tmp.path().join("drop");
    std::fs::create_dir(&folder).unwrap();
    let write = |name: &str, bytes: &[u8]| std::fs::write(folder.join(name), bytes).unwrap();

    write("good.md", "How to rotate the service's TLS certificates without downtime. 如何轮换证书。".as_bytes());
    write("good.pdf", &tiny_pdf("The backup job copies the archive to cold storage every night"));
    write("deep.html", ("<div>".repeat(200_000) + "deep").as_bytes());
    write("cycle.pdf", &xobject_cycle_pdf());
    let bomb = flate_bomb_pdf(1536 << 20);
    assert!(bomb.len() < 8 << 20, "the bomb is small on disk: {} bytes", bomb.len());
    write("bomb.pdf", &bomb);
    write("rows.csv", ("n,v\n".to_string() + &"1,a\n".repeat(1_000_000)).as_bytes());
    let heavy = serde_json::json!({"id": "heavy", "text": "heavy", "metadata": {"blob": "x".repeat(1 << 20)}});
    let light = serde_json::json!({"id": "light", "text": "The light record about log rotation is stored."});
    write("records.jsonl", format!("{heavy}\n{light}\n").as_bytes());

    let out = server.cli(&["ingest", "--collection", "drop", folder.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // good.md, good.pdf and the light record.
    assert!(stdout.contains("stored 3 documents"), "{stdout}\n{stderr}\n{}", server.log_text());
    assert_eq!(out.status.code(), Some(2), "partial success exits 2");
    let line = |name: &str| stderr.lines().find(|l| l.contains(name)).unwrap_or_default().to_string();
    assert!(line("deep.html").contains("nested deeper than"), "{stderr}");
    assert!(line("cycle.pdf").contains("cannot read pdf file: the parser"), "{stderr}");
    assert!(line("bomb.pdf").contains("cannot read pdf file: the parser"), "{stderr}");
    assert!(line("rows.csv").contains("more than 100000 documents"), "{stderr}");
    assert!(line("records.jsonl").contains("metadata of document"), "{stderr}");

    // Still serving, and what was stored is searchable.
    assert_eq!(
        doc_ids(&server.search_json("drop", &["--top-k", "1"], "nightly backup to cold storage")),
        vec!["good.pdf"]
    );
    assert_eq!(doc_ids(&server.search_json("drop", &["--top-k", "1"], "轮换证书")), vec!["good.md"]);
    let list: serde_json::Value = serde_json::from_str(&server.cli_ok(&["collections", "list", "--json"])).unwrap();
    assert_eq!(list["collections"][0]["documents"], 3);
    assert!(!server.log_text().contains("panicked"), "{}", server.log_text());
}
