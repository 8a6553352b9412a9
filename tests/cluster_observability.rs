//! Observability of a real cluster (etcd, one `tessera node`, one `tessera
//! coordinator`, separate processes): one ask is one trace across both
//! processes — the coordinator's spans and the node's spans, exported by each
//! process to an OTLP receiver in the test, share the trace id of the caller's
//! `traceparent` and link parent to child across the process boundary — and the
//! coordinator's status page, rendered in headless Chromium, lists the node.
mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::cluster::{etcd, free_port, node, tessera, wait_for, Proc};
use common::otlp::{Receiver, SpanRecord};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;

#[test]
fn one_ask_is_one_trace_across_coordinator_and_node_processes_and_the_status_page_lists_nodes() {
    let Some(models) = common::models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some((_etcd, etcd_url)) = etcd(tmp.path()) else { return };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let receiver = Receiver::default();
    let otlp_port = free_port();
    let svc = TraceServiceServer::new(receiver.clone());
    let addr = format!("127.0.0.1:{otlp_port}").parse().unwrap();
    runtime.spawn(async move { tonic::transport::Server::builder().add_service(svc).serve(addr).await });
    // Both processes export (their children inherit these), every 200 ms.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{otlp_port}"));
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "200");

    common::write_command_docs(&tmp.path().join("docs"));
    let g1 = format!("127.0.0.1:{}", free_port());
    let _n1 = node(tmp.path(), &etcd_url, "n1", "loader,embedder,shard,model,session", &g1, &models);
    let (grpc, http) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let _c = Proc::spawn(
        tessera().args(["coordinator", "--etcd", &etcd_url, "--grpc", &grpc, "--http", &http]),
        tmp.path().join("coordinator.log"),
    );
    wait_for("the node in the coordinator", Duration::from_secs(60), || {
        common::http_get(&http, "/status.json").is_some_and(|(c, b)| c == 200 && b.contains("\"healthy\":true"))
    });
    let ingest = tessera()
        .args(["ingest", "--collection", "docs"])
        .arg(tmp.path().join("docs"))
        .env("TESSERA_SERVER", format!("http://{grpc}"))
        .output()
        .unwrap();
    assert!(ingest.status.success(), "{}", String::from_utf8_lossy(&ingest.stderr));

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let caller = "b7ad6b7169203331";
    let (code, body) = common::http_post_with_headers(
        &http,
        "/v1/chat/completions",
        &[("traceparent", &format!("00-{trace_id}-{caller}-01"))],
        r#"{"model":"default","max_tokens":4,"temperature":0,"collection":"docs","top_k":1,"session":"t",
            "messages":[{"role":"user","content":"How do I stop a process?"}]}"#,
    );
    assert_eq!(code, 200, "{body}");

    let spans = receiver.wait_for_trace(trace_id, &["model.generate", "ask.chain"], Duration::from_secs(30));
    let by_id: HashMap<&str, &SpanRecord> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    let services: std::collections::BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(services.into_iter().collect::<Vec<_>>(), vec!["tessera-coordinator", "tessera-node-n1"]);
    let http_span = spans.iter().find(|s| s.name == "POST /v1/chat/completions").expect("HTTP span");
    assert_eq!((http_span.parent.as_str(), http_span.service.as_str()), (caller, "tessera-coordinator"));
    for s in &spans {
        if s.id != http_span.id {
            assert!(by_id.contains_key(s.parent.as_str()), "{} ({}) has a parent outside the trace", s.name, s.service);
        }
    }
    // Node-side server spans are children of coordinator-side spans: the context crossed processes.
    let crossing: Vec<&str> = spans
        .iter()
        .filter(|s| s.service == "tessera-node-n1" && by_id[s.parent.as_str()].service == "tessera-coordinator")
        .map(|s| s.name.as_str())
        .collect();
    for rpc in ["/tessera.v1.Node/ShardSearch", "/tessera.v1.Node/Generate", "/tessera.v1.Node/SessionAppend"] {
        assert!(crossing.contains(&rpc), "{rpc} not a child of a coordinator span: {crossing:?}");
    }
    let generate = spans.iter().find(|s| s.name == "model.generate").unwrap();
    assert_eq!(generate.service, "tessera-node-n1");

    // The coordinator's status page in a real browser lists the node.
    let Some(browser) = common::browser::chromium() else { return };
    let url = format!("http://{http}/");
    let profile = tmp.path().join("chromium-profile");
    let dom = common::browser::rendered_dom(browser, &profile, &url);
    assert_eq!(common::browser::node_ids(&dom), vec!["n1"], "{dom}");
    assert!(dom.contains(r#"data-healthy="true""#) && dom.contains(r#"data-collection="docs""#), "{dom}");
    let png = common::browser::screenshot(browser, &profile, &url, "cluster-status-page.png");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    runtime.shutdown_timeout(Duration::from_secs(1));
}
