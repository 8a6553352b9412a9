//! The OpenAI-compatible HTTP API at the wire level: bad requests get 4xx in
//! OpenAI's error shape with a message saying what is wrong, JSON mode returns
//! JSON (or a 422 carrying the raw output), retrieval answers carry sources,
//! and streams end with `[DONE]`.
mod common;

use common::{http_post, Server};
use serde_json::Value;

fn error_of(code: u16, body: &str, want_code: u16, needle: &str) {
    assert_eq!(code, want_code, "{body}");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {body}"));
    let err = &v["error"];
    assert!(err["type"].is_string() && err.get("param").is_some() && err.get("code").is_some(), "{v}");
    let msg = err["message"].as_str().unwrap();
    assert!(msg.contains(needle), "expected '{needle}' in '{msg}'");
}

#[test]
fn bad_requests_get_openai_shaped_errors_and_json_mode_and_retrieval_work() {
    let Some(models) = common::models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    common::write_command_docs(&tmp.path().join("docs"));
    let server = Server::start(&tmp.path().join("data"), &models);
    server.cli_ok(&["ingest", "--collection", "docs", tmp.path().join("docs").to_str().unwrap()]);
    let h = server.http.as_str();
    let chat = "/v1/chat/completions";
    let user = r#"[{"role":"user","content":"hi"}]"#;

    for (body, code, needle) in [
        ("", 400, "empty"),
        ("{not json", 400, "invalid request body"),
        (r#"{"messages":[]}"#, 400, "missing field `model`"),
        (&format!(r#"{{"model":"default","messages":{user},"max_tokens":"ten"}}"#), 400, "invalid type"),
        (&format!(r#"{{"model":"default","messages":{user},"temperature":7}}"#), 400, "temperature"),
        (&format!(r#"{{"model":"default","messages":{user},"n":2}}"#), 400, "n=1"),
        (r#"{"model":"default","messages":[]}"#, 400, "messages must not be empty"),
        (r#"{"model":"default","messages":[{"role":"tool","content":"x"}]}"#, 400, "role 'tool'"),
        (r#"{"model":"default","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#, 400, "image_url"),
        (&format!(r#"{{"model":"default","messages":{user},"response_format":{{"type":"yaml"}}}}"#), 400, "yaml"),
        (&format!(r#"{{"model":"default","messages":{user},"session":"s"}}"#), 400, "collection"),
        (&format!(r#"{{"model":"default","messages":{user},"collection":"nope"}}"#), 404, "nope"),
        (&format!(r#"{{"model":"default","messages":{user},"collection":"docs","mode":"magic"}}"#), 400, "mode"),
        (&format!(r#"{{"model":"gpt-4o","messages":{user}}}"#), 404, "gpt-4o"),
    ] {
        let (c, b) = http_post(h, chat, body);
        error_of(c, &b, code, needle);
    }
    let (c, b) = http_post(h, "/v1/embeddings", r#"{"model":"all-MiniLM-L6-v2","input":[1,2]}"#);
    error_of(c, &b, 400, "token-id");
    let (c, b) = http_post(h, "/v1/embeddings", r#"{"model":"all-MiniLM-L6-v2","input":[]}"#);
    error_of(c, &b, 400, "empty");
    let (c, b) = http_post(h, "/v1/embeddings", r#"{"model":"all-MiniLM-L6-v2","input":"x","dimensions":12}"#);
    error_of(c, &b, 400, "384");
    let (c, b) = http_post(h, "/v1/completions", r#"{"model":"default","prompt":"hi","echo":true}"#);
    error_of(c, &b, 400, "echo");

    // JSON mode and JSON schemas: constrained decoding, so the content is
    // always valid, at temperature 1 too; a schema that cannot compile is a 400.
    let (c, b) = http_post(
        h,
        chat,
        r#"{"model":"default","temperature":0,"max_tokens":48,"response_format":{"type":"json_object"},
            "messages":[{"role":"user","content":"Give a JSON object with the key \"city\" set to Paris."}]}"#,
    );
    assert_eq!(c, 200, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    let content = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(serde_json::from_str::<Value>(content).unwrap().is_object(), "{content}");
    let schema = r#"{"type":"object","properties":{"name":{"type":"string"},"tags":{"type":"array","items":{"enum":["a","b","c"]},"minItems":1}},"required":["name","tags"]}"#;
    for seed in 0..4 {
        let body = format!(
            r#"{{"model":"default","temperature":1,"seed":{seed},"max_tokens":64,"stream":{},
                "response_format":{{"type":"json_schema","json_schema":{{"name":"t","schema":{schema}}}}},
                "messages":[{{"role":"user","content":"Tag this: a red apple."}}]}}"#,
            seed % 2 == 1
        );
        let (c, b) = http_post(h, chat, &body);
        assert_eq!(c, 200, "{b}");
        let content = if seed % 2 == 1 {
            // Streamed: the deltas joined are the JSON.
            b.lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter(|d| *d != "[DONE]")
                .map(|d| serde_json::from_str::<Value>(d).unwrap())
                .filter_map(|e| e["choices"][0]["delta"]["content"].as_str().map(str::to_string))
                .collect::<String>()
        } else {
            let v: Value = serde_json::from_str(&b).unwrap();
            v["choices"][0]["message"]["content"].as_str().unwrap().to_string()
        };
        let v: Value = serde_json::from_str(&content).unwrap_or_else(|e| panic!("not JSON ({e}): {content}"));
        let tags = v["tags"].as_array().unwrap_or_else(|| panic!("no tags: {v}"));
        assert!(v["name"].is_string() && !tags.is_empty(), "{v}");
        assert!(tags.iter().all(|t| ["a", "b", "c"].contains(&t.as_str().unwrap_or(""))), "{v}");
    }
    let (c, b) = http_post(
        h,
        chat,
        r#"{"model":"default","max_tokens":8,"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"integer","minimum":5,"maximum":1}}},
            "messages":[{"role":"user","content":"hi"}]}"#,
    );
    error_of(c, &b, 400, "compile");

    // Retrieval through the API, history from the request's own messages.
    let (c, b) = http_post(
        h,
        chat,
        r#"{"model":"default","temperature":0,"max_tokens":8,"collection":"docs","top_k":2,
            "messages":[{"role":"user","content":"How do I pack a folder?"},{"role":"assistant","content":"Use tar."},
                        {"role":"user","content":"And how do I unpack it again?"}]}"#,
    );
    assert_eq!(c, 200, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    let sources: Vec<&str> = v["sources"].as_array().unwrap().iter().map(|s| s["doc_id"].as_str().unwrap()).collect();
    assert!(sources.contains(&"tar.md"), "{v}");

    // Streams end with [DONE]; completions stream too.
    let (c, b) = http_post(
        h,
        "/v1/completions",
        r#"{"model":"default","prompt":"One, two,","max_tokens":4,"temperature":0,"stream":true}"#,
    );
    assert_eq!(c, 200, "{b}");
    let events: Vec<&str> = b.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{b}");
    let text: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(!text.is_empty(), "{b}");
}
