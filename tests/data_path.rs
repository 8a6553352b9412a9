//! End to end through a real `tessera up` process: ingest a real folder, search
//! in every mode, filter, survive kill -9 and a clean restart, delete, re-ingest.
mod common;

use common::{doc_ids, tiny_pdf, Server};

#[test]
fn ingest_search_restart_delete() {
    let Some(models) = common::models() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(&tmp.path().join("data"), &models);

    // A real folder: the sample docs, a PDF, a broken PDF, invalid UTF-8 and an image.
    let folder = tmp.path().join("docs");
    let copy = std::process::Command::new("cp")
        .arg("-r")
        .arg(common::workspace().join("examples/docs"))
        .arg(&folder)
        .status()
        .unwrap();
    assert!(copy.success());
    std::fs::write(folder.join("guide.pdf"), tiny_pdf("The tar command archives a directory into one file")).unwrap();
    std::fs::write(folder.join("broken.pdf"), b"%PDF-1.4 this is not a pdf").unwrap();
    std::fs::write(folder.join("latin1.txt"), b"caf\xe9 au lait").unwrap();
    std::fs::write(folder.join("logo.png"), b"\x89PNG\r\n").unwrap();

    let out = server.cli(&["ingest", "--collection", "docs", folder.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 6 files of examples (jsonl = 3 documents, csv = 3 rows) + guide.pdf
    // = cp.md, ls.txt, mv.html, 3 jsonl, 3 csv, zh/cp.md, guide.pdf = 11 documents.
    assert!(stdout.contains("stored 11 documents"), "{stdout}\n{stderr}");
    assert_eq!(out.status.code(), Some(2), "partial success exits 2");
    assert!(stderr.contains("broken.pdf") && stderr.contains("latin1.txt") && stderr.contains("logo.png"), "{stderr}");
    assert!(stderr.contains("not valid UTF-8"), "{stderr}");

    let list: serde_json::Value = serde_json::from_str(&server.cli_ok(&["collections", "list", "--json"])).unwrap();
    let docs = &list["collections"][0];
    assert_eq!(docs["name"], "docs");
    assert_eq!(docs["documents"], 11);
    let chunks_before = docs["chunks"].as_u64().unwrap();
    assert!(chunks_before >= 11);

    // Vector search finds the cp page; its metadata carries source and position.
    let r = server.search_json("docs", &["--top-k", "3"], "how do I copy a directory");
    let ids = doc_ids(&r);
    assert_eq!(ids[0], "shell/cp.md", "{r}");
    let hit = &r["hits"][0];
    assert_eq!(hit["metadata"]["doc_id"], "shell/cp.md");
    assert!(hit["chunk_id"].as_str().unwrap().starts_with("shell/cp.md#"));
    assert!(hit["metadata"]["byte_end"].as_u64().unwrap() > hit["metadata"]["byte_start"].as_u64().unwrap());
    let scores: Vec<f64> = r["hits"].as_array().unwrap().iter().map(|h| h["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "best first: {scores:?}");

    // Chinese, BM25, hybrid, PDF text, HTML visible text only, filters, min score.
    let zh = doc_ids(&server.search_json("docs", &["--top-k", "2", "--mode", "hybrid"], "如何复制整个目录"));
    assert!(zh.contains(&"zh/cp.md".to_string()), "{zh:?}");
    let bm25 = doc_ids(&server.search_json("docs", &["--mode", "bm25", "--top-k", "1"], "SIGKILL"));
    assert_eq!(bm25, vec!["shell/signals.csv:2"]);
    assert_eq!(doc_ids(&server.search_json("docs", &["--top-k", "1"], "archive a folder with tar")), vec!["guide.pdf"]);
    assert!(doc_ids(&server.search_json("docs", &["--mode", "bm25"], "console script text")).is_empty());
    let perms = server.search_json("docs", &["--filter", "topic=permissions", "--top-k", "5"], "copy a directory");
    assert_eq!(doc_ids(&perms), vec!["chmod"]);
    let one_of = doc_ids(&server.search_json(
        "docs",
        &["--filter", "topic=permissions", "--filter", "topic=files", "--top-k", "10"],
        "files",
    ));
    assert_eq!(one_of.len(), 3, "{one_of:?}");
    let high = server.search_json("docs", &["--min-score", "0.99"], "how do I copy a directory");
    assert!(doc_ids(&high).is_empty());
    let diverse = server.search_json("docs", &["--mmr", "--top-k", "3"], "how do I copy a directory");
    assert_eq!(doc_ids(&diverse).len(), 3);

    // kill -9 and restart: same answers from the same data dir.
    let before = server.search_json("docs", &["--top-k", "5", "--mode", "hybrid"], "list hidden files");
    server.kill_and_restart();
    let after = server.search_json("docs", &["--top-k", "5", "--mode", "hybrid"], "list hidden files");
    assert_eq!(before, after);
    // Clean stop (indexes saved) and restart: same answers again.
    server.stop_and_restart();
    assert!(server.log_text().contains("stopped cleanly"));
    assert_eq!(after, server.search_json("docs", &["--top-k", "5", "--mode", "hybrid"], "list hidden files"));

    // Re-ingesting a document replaces its chunks.
    server.cli_ok(&["ingest", "--collection", "docs", folder.join("shell/cp.md").to_str().unwrap()]);
    let r = server.search_json("docs", &["--top-k", "10"], "cp -a archive");
    assert!(doc_ids(&r).contains(&"cp.md".to_string()), "a single file gets its file name as id");
    server.cli_ok(&["delete", "--collection", "docs", "cp.md"]);
    let list: serde_json::Value = serde_json::from_str(&server.cli_ok(&["collections", "list", "--json"])).unwrap();
    assert_eq!(list["collections"][0]["chunks"].as_u64().unwrap(), chunks_before);

    // Delete: the document is gone, the others stay, also after a restart.
    let out = server.cli_ok(&["delete", "--collection", "docs", "shell/cp.md"]);
    assert!(out.contains("deleted 1 documents"), "{out}");
    let ids = doc_ids(&server.search_json("docs", &["--top-k", "10"], "how do I copy a directory"));
    assert!(!ids.contains(&"shell/cp.md".to_string()) && !ids.is_empty(), "{ids:?}");
    server.kill_and_restart();
    let ids = doc_ids(&server.search_json("docs", &["--top-k", "10"], "how do I copy a directory"));
    assert!(!ids.contains(&"shell/cp.md".to_string()), "{ids:?}");

    // Drop.
    server.cli_ok(&["collections", "drop", "docs"]);
    let out = server.cli(&["search", "--collection", "docs", "anything"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
}
