//! One request is one trace: an OTLP/gRPC receiver inside the test collects the
//! spans `tessera up` exports while it answers a retrieval chat request that
//! arrives with a W3C `traceparent`. The HTTP span continues the caller's trace,
//! the ask chain runs under it, every call to the node (the `Node` gRPC service
//! over loopback, trace context in the metadata) continues it, the model's
//! generate/prefill spans hang under the node's Generate call, and every span's
//! parent is a span of the same trace.
mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::time::Duration;

use common::otlp::{Receiver, SpanRecord};
use common::{http_post_with_headers, Server};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;

#[test]
fn one_ask_is_one_trace_across_http_coordinator_node_and_model() {
    let Some(models) = common::models() else { return };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let receiver = Receiver::default();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let svc = TraceServiceServer::new(receiver.clone());
    runtime.spawn(async move { tonic::transport::Server::builder().add_service(svc).serve(addr).await });

    let tmp = tempfile::tempdir().unwrap();
    common::write_command_docs(&tmp.path().join("docs"));
    // Exported every 200 ms.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{port}"));
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "200");
    let server = Server::start(&tmp.path().join("data"), &models);
    server.cli_ok(&["ingest", "--collection", "docs", tmp.path().join("docs").to_str().unwrap()]);

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let (code, body) = http_post_with_headers(
        &server.http,
        "/v1/chat/completions",
        &[("traceparent", &format!("00-{trace_id}-{caller_span}-01"))],
        r#"{"model":"default","max_tokens":4,"temperature":0,"collection":"docs","top_k":1,"session":"traced",
            "messages":[{"role":"user","content":"How do I pack a folder?"}]}"#,
    );
    assert_eq!(code, 200, "{body}");

    let spans = receiver.wait_for_trace(trace_id, &["model.generate", "ask.chain"], Duration::from_secs(30));
    let by_id: HashMap<&str, &SpanRecord> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();

    // The HTTP span continues the caller's trace.
    let http = spans.iter().find(|s| s.name == "POST /v1/chat/completions").unwrap_or_else(|| panic!("{names:?}"));
    assert_eq!(http.parent, caller_span);
    // Every other span's parent is a span of this trace.
    for s in &spans {
        if s.id != http.id {
            assert!(
                by_id.contains_key(s.parent.as_str()),
                "span {} has parent {} outside the trace; spans: {names:?}",
                s.name,
                s.parent
            );
        }
    }
    let ancestors = |s: &SpanRecord| {
        let mut out = Vec::new();
        let mut cur = by_id.get(s.parent.as_str()).copied();
        while let Some(p) = cur {
            out.push(p.name.clone());
            cur = by_id.get(p.parent.as_str()).copied();
        }
        out
    };
    // The node's RPC spans (from gRPC metadata) sit under the ask chain.
    for rpc in [
        "/tessera.v1.Node/EmbedBatch",
        "/tessera.v1.Node/ShardSearch",
        "/tessera.v1.Node/Generate",
        "/tessera.v1.Node/SessionAppend",
    ] {
        let s = spans.iter().find(|s| s.name == rpc).unwrap_or_else(|| panic!("no {rpc} span in {names:?}"));
        let up = ancestors(s);
        assert!(up.contains(&"ask.chain".to_string()), "{rpc} ancestors: {up:?}");
        assert_eq!(up.last().map(String::as_str), Some("POST /v1/chat/completions"), "{rpc} ancestors: {up:?}");
    }
    // The model's spans hang under the node's Generate call.
    let generate = spans.iter().find(|s| s.name == "model.generate").unwrap();
    assert!(ancestors(generate).contains(&"/tessera.v1.Node/Generate".to_string()), "{:?}", ancestors(generate));
    let prefill = spans.iter().find(|s| s.name == "model.prefill").unwrap_or_else(|| panic!("{names:?}"));
    assert_eq!(prefill.parent, generate.id);
    assert!(names.contains(&"shard.search") && names.contains(&"session.append"), "{names:?}");
    drop(server);
    runtime.shutdown_timeout(Duration::from_secs(1));
}
