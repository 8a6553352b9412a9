//! Operations surface of a real `tessera up`: `/metrics` after traffic has every
//! documented metric with sane values, the Grafana dashboard queries only exported
//! metrics, and the status page renders in headless Chromium with the node list
//! (a screenshot is kept as a test artifact).
mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{http_get, http_post, Server};

/// Metric names in Prometheus text, with their samples (name{labels} → value), `_bucket`/`_sum`/`_count` folded.
fn scrape(server: &Server) -> (BTreeSet<String>, BTreeMap<String, f64>) {
    let (code, text) = http_get(&server.http, "/metrics").expect("scrape");
    assert_eq!(code, 200);
    let mut names = BTreeSet::new();
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let name = series.split('{').next().unwrap();
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        names.insert(base.to_string());
        samples.insert(series.to_string(), value.parse::<f64>().unwrap_or(f64::NAN));
    }
    (names, samples)
}

fn sample(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| panic!("no series {series}"))
}

fn documented() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(common::workspace().join("docs/metrics.md")).unwrap();
    doc.lines().filter_map(|l| l.strip_prefix("| `")).filter_map(|l| l.split('`').next()).map(String::from).collect()
}

#[test]
fn metrics_after_traffic_dashboard_names_and_status_page() {
    let Some(models) = common::models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    common::write_command_docs(&tmp.path().join("docs"));
    let server = Server::start(&tmp.path().join("data"), &models);
    // Before any request the model metrics exist, at zero (a fresh dashboard shows zeros),
    // labelled with the served model's name.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while http_get(&server.http, "/readyz").is_none_or(|(code, _)| code != 200) {
        assert!(std::time::Instant::now() < deadline, "not ready in time");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (_, fresh) = scrape(&server);
    for series in [
        r#"tessera_model_generated_tokens_total{model="SmolLM2-135M-Instruct.Q4_1"}"#,
        r#"tessera_model_prompt_tokens_total{model="SmolLM2-135M-Instruct.Q4_1"}"#,
        r#"tessera_model_requests_total{finish="eos",model="SmolLM2-135M-Instruct.Q4_1"}"#,
        r#"tessera_model_running_requests{model="SmolLM2-135M-Instruct.Q4_1"}"#,
        r#"tessera_model_kv_cache_bytes{model="SmolLM2-135M-Instruct.Q4_1"}"#,
        r#"tessera_model_prefix_cache_hits_total{model="SmolLM2-135M-Instruct.Q4_1"}"#,
        r#"tessera_model_prefix_cache_tokens_reused_total{model="SmolLM2-135M-Instruct.Q4_1"}"#,
        r#"tessera_model_prefix_cache_bytes{model="SmolLM2-135M-Instruct.Q4_1"}"#,
        r#"tessera_model_time_to_first_token_seconds_count{model="SmolLM2-135M-Instruct.Q4_1"}"#,
        r#"tessera_shard_filtered_searches_total{plan="scan"}"#,
        r#"tessera_shard_filtered_searches_total{plan="graph"}"#,
        r#"tessera_shard_vector_searches_total{plan="scan"}"#,
        r#"tessera_shard_vector_searches_total{plan="hnsw"}"#,
        r#"tessera_shard_vector_searches_total{plan="staged"}"#,
        r#"tessera_shard_filtered_searches_total{plan="staged"}"#,
    ] {
        assert_eq!(sample(&fresh, series), 0.0, "{series} at start-up");
    }
    assert!(sample(&fresh, r#"tessera_model_weight_bytes{model="SmolLM2-135M-Instruct.Q4_1"}"#) > 1e7);
    server.cli_ok(&["ingest", "--collection", "docs", tmp.path().join("docs").to_str().unwrap()]);
    server.search_json("docs", &[], "copy a folder");
    server.search_json("docs", &["--filter", "chunk_index=0"], "copy a folder");
    let bad = server.cli(&["search", "--collection", "docs", "--top-k", "0", "x"]);
    assert!(!bad.status.success());
    server.cli_ok(&[
        "ask",
        "--collection",
        "docs",
        "--session",
        "ops",
        "--max-tokens",
        "8",
        "--top-k",
        "1",
        "How do I pack a folder?",
    ]);
    let (c, _) = http_post(&server.http, "/v1/embeddings", r#"{"model":"all-MiniLM-L6-v2","input":"hi"}"#);
    assert_eq!(c, 200);

    let (names, s) = scrape(&server);
    let docs = documented();
    assert!(docs.len() >= 25, "docs/metrics.md lists {} metrics", docs.len());
    let missing: Vec<_> = docs.difference(&names).collect();
    assert!(missing.is_empty(), "documented but not exported after traffic: {missing:?}");
    let undocumented: Vec<_> =
        names.iter().filter(|n| n.starts_with("tessera_")).filter(|n| !docs.contains(*n)).collect();
    assert!(undocumented.is_empty(), "exported but not documented: {undocumented:?}");
    assert!(names.iter().all(|n| n.starts_with("tessera_")), "{names:?}");

    // Sane values.
    assert!(
        sample(&s, r#"tessera_shard_filtered_searches_total{plan="scan"}"#) >= 1.0,
        "the filtered search was a scan of its matches"
    );
    assert!(
        sample(&s, r#"tessera_shard_vector_searches_total{plan="scan"}"#) >= 1.0,
        "the unfiltered search of a small shard was a full scan"
    );
    // `tessera ingest` uses the streaming form (progress), one call for the one folder.
    assert_eq!(sample(&s, r#"tessera_grpc_requests_total{method="/tessera.v1.Tessera/IngestStream",code="Ok"}"#), 1.0);
    assert_eq!(
        sample(&s, r#"tessera_grpc_requests_total{method="/tessera.v1.Tessera/Search",code="InvalidArgument"}"#),
        1.0
    );
    assert!(sample(&s, r#"tessera_grpc_requests_total{method="/tessera.v1.Node/ShardSearch",code="Ok"}"#) >= 2.0);
    assert_eq!(sample(&s, r#"tessera_http_requests_total{route="/v1/embeddings",method="POST",status="200"}"#), 1.0);
    assert_eq!(
        sample(&s, r#"tessera_model_generated_tokens_total{model="SmolLM2-135M-Instruct.Q4_1"}"#),
        8.0,
        "the ask generated 8 tokens (no condense: no history)"
    );
    assert!(sample(&s, r#"tessera_model_prompt_tokens_total{model="SmolLM2-135M-Instruct.Q4_1"}"#) > 50.0);
    assert_eq!(
        sample(&s, r#"tessera_model_time_to_first_token_seconds_count{model="SmolLM2-135M-Instruct.Q4_1"}"#),
        1.0
    );
    assert_eq!(sample(&s, r#"tessera_model_requests_total{finish="length",model="SmolLM2-135M-Instruct.Q4_1"}"#), 1.0);
    let chunks: f64 = s.iter().filter(|(k, _)| k.starts_with("tessera_shard_chunks{")).map(|(_, v)| v).sum();
    assert_eq!(chunks, 4.0, "4 one-chunk documents over the shards");
    assert_eq!(
        sample(&s, "tessera_embedder_texts_total"),
        4.0 + 2.0 + 1.0 + 1.0,
        "4 chunks, 2 searches, 1 ask, 1 embedding"
    );
    assert_eq!(sample(&s, "tessera_session_messages_appended_total"), 2.0);
    assert_eq!(sample(&s, "tessera_sessions_live"), 1.0);
    assert_eq!(sample(&s, r#"tessera_ask_step_duration_seconds_count{step="total"}"#), 1.0);
    let p = sample(&s, r#"tessera_ask_step_duration_seconds_sum{step="total"}"#);
    assert!(p > 0.0 && p < 300.0, "{p}");

    // Every metric the dashboard queries is exported.
    let dash = std::fs::read_to_string(common::workspace().join("deploy/grafana/tessera-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&dash).unwrap();
    let mut queried = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("tessera_") {
                let name: String = expr[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
                queried.insert(base.to_string());
            }
        }
    }
    assert!(queried.len() >= 20, "{queried:?}");
    let unknown: Vec<_> = queried.difference(&names).collect();
    assert!(unknown.is_empty(), "the dashboard queries metrics that are not exported: {unknown:?}");

    // Status page in a real browser.
    let Some(browser) = common::browser::chromium() else { return };
    let url = format!("http://{}/", server.http);
    let profile = tmp.path().join("chromium-profile");
    let dom = common::browser::rendered_dom(browser, &profile, &url);
    assert_eq!(common::browser::node_ids(&dom), vec!["local"], "node list read from the rendered page:\n{dom}");
    assert!(dom.contains(r#"data-healthy="true""#), "{dom}");
    assert!(dom.contains(r#"data-collection="docs""#), "{dom}");
    assert!(dom.contains("SmolLM2-135M-Instruct.Q4_1"), "{dom}");
    assert!(dom.contains("/tessera.v1.Tessera/IngestStream"), "request table rendered from /metrics: {dom}");
    let png = common::browser::screenshot(browser, &profile, &url, "status-page.png");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "screenshot of {} bytes", png.len());
}
