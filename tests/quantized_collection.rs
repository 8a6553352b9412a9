//! An int8 collection through a real `tessera up` process: created with
//! `--quantization int8`, it answers every search mode (Chinese included)
//! and filters as an f32 collection of the same documents does, lists its
//! quantization, keeps answering after kill -9 (its codes are rebuilt from
//! sled: no graph is saved), and an unknown quantization is refused with a
//! message by the CLI and by gRPC.
mod common;

use common::{doc_ids, Server};
use tessera_proto::v1 as pb;
use tessera_proto::v1::tessera_client::TesseraClient;

const QUERIES: [&str; 5] =
    ["how do I copy a directory", "list files sorted by size", "move or rename a file", "如何复制整个目录", "SIGKILL"];

#[test]
fn an_int8_collection_answers_as_the_f32_one_and_survives_a_restart() {
    let Some(models) = common::models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut server = Server::start(&tmp.path().join("data"), &models);
    let docs = common::workspace().join("examples/docs");
    let docs = docs.to_str().unwrap();
    server.cli_ok(&["collections", "create", "plain"]);
    // exact_below 0: past the full scan, where an f32 collection would walk HNSW; int8 has none.
    let created = server.cli_ok(&["collections", "create", "small", "--quantization", "int8", "--exact-below", "0"]);
    assert!(created.contains("quantization int8"), "{created}");
    for c in ["plain", "small"] {
        let out = server.cli(&["ingest", "--collection", c, docs]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let list: serde_json::Value = serde_json::from_str(&server.cli_ok(&["collections", "list", "--json"])).unwrap();
    let quant = |name: &str| {
        list["collections"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap()["quantization"].clone()
    };
    assert_eq!((quant("plain"), quant("small")), (serde_json::json!("none"), serde_json::json!("int8")));

    let answers = |server: &Server, c: &str| {
        let mut all = Vec::new();
        for mode in ["vector", "hybrid", "bm25"] {
            for q in QUERIES {
                all.push(doc_ids(&server.search_json(c, &["--top-k", "4", "--mode", mode], q)));
            }
        }
        all.push(doc_ids(&server.search_json(c, &["--top-k", "4", "--filter", "doc_id=zh/cp.md"], QUERIES[0])));
        all.push(doc_ids(&server.search_json(c, &["--top-k", "4", "--exact"], QUERIES[1])));
        all
    };
    let expected = answers(&server, "plain");
    assert!(expected.iter().all(|ids| !ids.is_empty()), "{expected:?}");
    assert_eq!(answers(&server, "small"), expected, "int8 and f32 collections differ");

    server.kill_and_restart();
    assert_eq!(answers(&server, "small"), expected, "after kill -9 the int8 collection answers the same");
    // A clean stop saves the f32 collection's graphs; the int8 one has none to save.
    server.stop_and_restart();
    let graphs = graph_files(&tmp.path().join("data"));
    assert!(graphs.iter().any(|g| g.starts_with("plain.")), "{graphs:?}");
    assert!(!graphs.iter().any(|g| g.starts_with("small.")), "an int8 shard saved a graph: {graphs:?}");
    assert_eq!(answers(&server, "small"), expected);

    let bad = server.cli(&["collections", "create", "odd", "--quantization", "binary"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown quantization 'binary'"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let status = rt.block_on(async {
        let mut c = TesseraClient::connect(server.url()).await.unwrap();
        let req =
            pb::CreateCollectionRequest { name: "odd".into(), quantization: "binary".into(), ..Default::default() };
        c.create_collection(req).await.unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("unknown quantization"), "{}", status.message());
}

/// Names of the saved HNSW graphs (`*.usearch`) anywhere under `dir`.
fn graph_files(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "usearch") {
                out.push(entry.file_name().to_string_lossy().to_string());
            }
        }
    }
    out
}
