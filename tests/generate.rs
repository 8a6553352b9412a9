//! Generation through a real `tessera up --tp 2`: the CLI streams text and
//! reports usage, the chat template and raw prompts agree with llama.cpp's
//! greedy output, a client that disconnects is cancelled and its cache freed,
//! a full queue answers RESOURCE_EXHAUSTED, bad input gets INVALID_ARGUMENT.
mod common;

use std::time::{Duration, Instant};

use common::Server;
use tessera_proto::v1 as pb;
use tessera_proto::v1::node_client::NodeClient;
use tessera_proto::v1::tessera_client::TesseraClient;
use tonic::Code;

/// llama.cpp's first greedy tokens for "What is the capital of France?" with
/// the default system prompt (../shared/fixtures/smollm2_greedy.json, before its first near tie).
const FIXTURE_PREFIX: &str = "L'Étoile, la";

fn greedy(prompt: &str, max_tokens: u32) -> pb::GenerateRequest {
    pb::GenerateRequest { prompt: prompt.into(), max_tokens, temperature: Some(0.0), ..Default::default() }
}

#[test]
fn cli_streams_text_and_usage() {
    let Some(models) = common::models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(&tmp.path().join("data"), &models, &["--tp", "2"]);
    let raw = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
    let out = server.cli(&["generate", "--raw", "--temperature", "0", "--max-tokens", "48", raw]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let usage = String::from_utf8(out.stderr).unwrap();
    assert!(text.starts_with(FIXTURE_PREFIX), "{text:?}");
    assert!(usage.contains("prompt_tokens=37 "), "{usage}");
    assert!(usage.contains("finish_reason=length") || usage.contains("finish_reason=eos"), "{usage}");
    // Without --raw the prompt is one user message through the chat template: same prompt, same start.
    let chat =
        server.cli_ok(&["generate", "--temperature", "0", "--max-tokens", "8", "What is the capital of France?"]);
    assert!(chat.starts_with(FIXTURE_PREFIX), "{chat:?}");
    // Stop sequences and bad flags.
    let stopped = server.cli_ok(&[
        "generate",
        "--temperature",
        "0",
        "--max-tokens",
        "16",
        "--stop",
        "toile",
        "What is the capital of France?",
    ]);
    assert_eq!(stopped.trim_end(), "L'É");
    let bad = server.cli(&["generate", "--temperature", "-1", "hello"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("temperature"), "{}", String::from_utf8_lossy(&bad.stderr));

    // Constrained output from the CLI (tp 2: the guide runs on rank 0, the ranks follow).
    let schema = tmp.path().join("point.json");
    std::fs::write(
        &schema,
        r#"{"type":"object","properties":{"x":{"type":"integer"},"y":{"type":"integer"}},"required":["x","y"]}"#,
    )
    .unwrap();
    let out = server.cli_ok(&[
        "generate",
        "--temperature",
        "1",
        "--seed",
        "4",
        "--max-tokens",
        "48",
        "--json-schema",
        schema.to_str().unwrap(),
        "Give a point as JSON.",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap_or_else(|e| panic!("{out:?}: {e}"));
    assert!(v["x"].is_i64() && v["y"].is_i64(), "{v}");
    let out = server.cli_ok(&["generate", "--temperature", "1", "--choice", "yes", "--choice", "no", "Is water wet?"]);
    assert!(["yes", "no"].contains(&out.trim_end()), "{out:?}");
    let out = server.cli_ok(&[
        "generate",
        "--temperature",
        "1",
        "--max-tokens",
        "16",
        "--regex",
        "[0-9]{4}-[0-9]{2}",
        "A date?",
    ]);
    assert!(regex_like_date(out.trim_end()), "{out:?}");
    let bad = server.cli(&["generate", "--regex", "([0-9]", "A date?"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("InvalidArgument") && err.contains("regex"), "{err}");
}

/// `NNNN-NN`.
fn regex_like_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 7 && b[4] == b'-' && b.iter().enumerate().all(|(i, c)| i == 4 || c.is_ascii_digit())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_cancellation_backpressure_and_bad_input() {
    let Some(models) = common::models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::start_with(
        &tmp.path().join("data"),
        &models,
        &["--tp", "2", "--max-running", "1", "--max-queued", "1"],
    );
    let mut c = TesseraClient::connect(server.url()).await.unwrap();
    let mut node = NodeClient::connect(server.internal_url()).await.unwrap();

    // Tokens arrive as a stream, the last chunk with usage.
    let mut stream = c.generate(greedy("What is the capital of France?", 12)).await.unwrap().into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        chunks.push(chunk);
    }
    let last = chunks.last().unwrap();
    assert_eq!(chunks.len(), 13, "one chunk per token plus the final one");
    assert_eq!(last.usage.unwrap().completion_tokens, 12);
    assert_eq!(last.finish_reason, "length");
    let text: String = chunks.iter().map(|c| c.text.as_str()).collect();
    assert!(text.starts_with(FIXTURE_PREFIX), "{text:?}");

    // A client that goes away is cancelled and its KV cache freed.
    let mut stream = c.generate(greedy("Tell me a long story about a lighthouse.", 500)).await.unwrap().into_inner();
    for _ in 0..3 {
        stream.message().await.unwrap().unwrap();
    }
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = node.info(pb::NodeInfoRequest {}).await.unwrap().into_inner();
        let model = info.model.expect("model info");
        assert_eq!(model.tensor_parallel, 2);
        if model.cached_sequences == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "cache still held after the client left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // With one running and one queued, more concurrent requests are refused.
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move {
                match c.generate(greedy(&format!("Count to {i}."), 48)).await {
                    Ok(r) => {
                        let mut s = r.into_inner();
                        loop {
                            match s.message().await {
                                Ok(Some(_)) => {}
                                Ok(None) => return Code::Ok,
                                Err(e) => return e.code(),
                            }
                        }
                    }
                    Err(e) => e.code(),
                }
            })
        })
        .collect();
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    assert!(codes.contains(&Code::ResourceExhausted), "{codes:?}");
    assert!(codes.contains(&Code::Ok), "{codes:?}");

    // Bad input.
    let code = |r: Result<tonic::Response<tonic::Streaming<pb::GenerateChunk>>, tonic::Status>| {
        r.map(|_| ()).unwrap_err().code()
    };
    assert_eq!(code(c.generate(greedy("", 8)).await), Code::InvalidArgument);
    assert_eq!(
        code(c.generate(pb::GenerateRequest { temperature: Some(-0.5), ..greedy("hi", 8) }).await),
        Code::InvalidArgument
    );
    let e = c.generate(greedy("hi", 100_000)).await.map(|_| ()).unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("context"), "{e:?}");
    let long = "hello ".repeat(9000);
    let e = c.generate(pb::GenerateRequest { raw: true, ..greedy(&long, 4) }).await.map(|_| ()).unwrap_err();
    assert!(e.code() == Code::InvalidArgument && e.message().contains("context"), "{e:?}");
    let bad_role = pb::GenerateRequest {
        messages: vec![pb::ChatMessage { role: "robot".into(), content: "x".into() }],
        ..greedy("", 4)
    };
    assert_eq!(code(c.generate(bad_role).await), Code::InvalidArgument);
}
