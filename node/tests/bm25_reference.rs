//! BM25 scores against bm25s (method "lucene", Python, in tests/python/.venv)
//! on the same tokens: CPython's documentation topics split into chunks, plus
//! Chinese and mixed-language passages, for two (k1, b) settings. Every score of
//! every document must agree to 1e-4.
mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use tessera_node::chunking::{RecursiveSplitter, Splitter};
use tessera_node::shard::{terms, Bm25Index, Bm25Params};

fn python_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/python")
}

/// The venv with bm25s, or None (skip) outside CI when it cannot be made.
fn venv_python() -> Option<PathBuf> {
    let ok = Command::new("bash").arg(python_dir().join("setup.sh")).status().is_ok_and(|s| s.success());
    if !ok {
        assert!(!common::in_ci(), "tests/python/setup.sh failed under CI");
        eprintln!("skipping: could not install bm25s");
        return None;
    }
    Some(python_dir().join(".venv/bin/python"))
}

fn corpus() -> Option<Vec<String>> {
    let script = "import json, pydoc_data.topics as t; print(json.dumps(sorted(t.topics.values())))";
    let out = Command::new("python3").args(["-c", script]).output().ok().filter(|o| o.status.success());
    let Some(out) = out else {
        assert!(!common::in_ci(), "python3 with pydoc_data is needed under CI");
        return None;
    };
    let topics: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    let splitter = RecursiveSplitter::new(1000, 200).unwrap();
    let mut texts: Vec<String> = topics
        .iter()
        .flat_map(|t| splitter.split(t).unwrap().into_iter().map(|s| t[s.start..s.end].to_string()).collect::<Vec<_>>())
        .take(400)
        .collect();
    texts.extend(
        [
            "向量数据库用于语义检索，检索速度很快。",
            "Tessera 把向量检索和 BM25 混合在一起：hybrid search 融合两个列表。",
            "分片索引的召回率必须等于精确搜索的召回率。",
            "Copy a directory recursively with cp -r; 复制目录用 cp -r。",
        ]
        .map(String::from),
    );
    Some(texts)
}

fn reference(python: &PathBuf, corpus: &[Vec<String>], queries: &[Vec<String>], p: Bm25Params) -> Vec<Vec<f64>> {
    let mut child = Command::new(python)
        .arg(python_dir().join("bm25_reference.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bm25_reference.py");
    let req = json!({"corpus": corpus, "queries": queries, "k1": p.k1, "b": p.b});
    child.stdin.take().unwrap().write_all(req.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "bm25_reference.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
        .collect()
}

#[test]
fn scores_equal_lucene_bm25_from_bm25s_on_the_same_tokens() {
    let Some(python) = venv_python() else { return };
    let Some(texts) = corpus() else { return };
    let mut index = Bm25Index::default();
    for (i, t) in texts.iter().enumerate() {
        index.insert(i as u64, t);
    }
    let tokens: Vec<Vec<String>> = texts.iter().map(|t| terms(t)).collect();
    let mut query_texts: Vec<String> =
        texts.iter().step_by(9).map(|t| t.split_whitespace().skip(3).take(6).collect::<Vec<_>>().join(" ")).collect();
    query_texts.extend(["语义检索", "hybrid 检索 速度", "copy directory recursively"].map(String::from));
    // Repeated query terms count once, in Tessera and in the reference input.
    let queries: Vec<Vec<String>> = query_texts
        .iter()
        .map(|q| {
            let mut t = terms(q);
            t.sort();
            t.dedup();
            t
        })
        .collect();
    for params in [Bm25Params { k1: 1.5, b: 0.75 }, Bm25Params { k1: 0.9, b: 0.4 }] {
        let want = reference(&python, &tokens, &queries, params);
        let mut compared = 0;
        for (qi, q) in query_texts.iter().enumerate() {
            let got = index.search_with(q, texts.len(), params, |_| true);
            for (key, score) in &got {
                let expected = want[qi][*key as usize];
                assert!(
                    (f64::from(*score) - expected).abs() < 1e-4,
                    "query {q:?}, doc {key}, k1 {} b {}: Tessera {score}, bm25s {expected}",
                    params.k1,
                    params.b
                );
                compared += 1;
            }
            // Every document bm25s scores above zero is found.
            let positive = want[qi].iter().filter(|s| **s > 1e-9).count();
            assert_eq!(got.len(), positive, "query {q:?}: matching documents differ");
        }
        assert!(compared > 500, "only {compared} scores compared");
    }
}
