//! `tessera ingest` reports progress from the server's stream (IngestStream):
//! JSON lines with `--json`, text lines when stderr is not a terminal, and the
//! final counts agree with what was stored.
mod common;

use common::Server;

/// Parses the `{"progress": ...}` lines of stderr.
fn progress_lines(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("progress").cloned())
        .collect()
}

#[test]
fn ingest_streams_progress_and_ends_with_the_stored_counts() {
    let Some(models) = common::models() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start(&tmp.path().join("data"), &models);

    // 40 files: two requests of the CLI (32 files each at most), several embedding
    // batches each; English and Chinese.
    let folder = tmp.path().join("docs");
    std::fs::create_dir_all(&folder).unwrap();
    for i in 0..40 {
        let text = if i % 4 == 0 {
            format!(
                "第{i}章：向量检索把问题和文档都变成向量，再按余弦相似度排序。\n\n{}",
                "分片索引保存每个块的向量。".repeat(30)
            )
        } else {
            format!(
                "Chapter {i}. The shard index keeps one vector per chunk.\n\n{}",
                "A write is made durable in sled before it is acknowledged. ".repeat(25)
            )
        };
        std::fs::write(folder.join(format!("doc{i:02}.md")), text).unwrap();
    }

    let out = server.cli(&["ingest", "--json", "--collection", "docs", folder.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).expect("stdout is one JSON result");
    assert_eq!(result["documents"], 40, "{result}");
    let chunks = result["chunks"].as_u64().unwrap();
    assert!(chunks > 80, "each file splits into several chunks: {chunks}");

    let lines = progress_lines(&stderr);
    let last = lines.last().unwrap_or_else(|| panic!("no progress line in {stderr}"));
    assert_eq!(last["files_done"], 40, "{last}");
    assert_eq!(last["files_total"], 40, "{last}");
    assert_eq!(last["chunks_embedded"].as_u64(), Some(chunks), "{last}");
    assert_eq!(last["chunks_written"].as_u64(), Some(chunks), "{last}");
    assert_eq!(last["eta_s"], 0.0, "{last}");
    for pair in lines.windows(2) {
        for key in ["files_done", "chunks_embedded", "chunks_written"] {
            assert!(pair[0][key].as_u64() <= pair[1][key].as_u64(), "{key} went back: {pair:?}");
        }
    }
    // What was reported is what is stored.
    let list: serde_json::Value = serde_json::from_str(&server.cli_ok(&["collections", "list", "--json"])).unwrap();
    assert_eq!(list["collections"][0]["chunks"].as_u64(), Some(chunks));
    let hits = server.search_json("docs", &["--top-k", "3"], "向量检索");
    assert_eq!(hits["hits"].as_array().map(Vec::len), Some(3), "{hits}");

    // Without --json and without a terminal: text lines, and the usual summary.
    let out = server.cli(&["ingest", "--collection", "again", folder.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains(&format!("stored 40 documents, {chunks} chunks in 'again'")), "{stdout}\n{stderr}");
    let last_text = stderr.lines().rfind(|l| l.starts_with("progress: "));
    assert!(
        last_text.is_some_and(|l| l.contains("files 40/40") && l.contains(&format!("{chunks} written"))),
        "{stderr}"
    );
}
