//! Two models served at once by one `tessera up` (`--model smol=… --model
//! gemma=… --tp gemma=2`): each answers by name over gRPC, the CLI and the
//! OpenAI API with its own tokenizer and weights (Gemma's greedy tokens are
//! llama.cpp's, tests/fixtures/gemma3_greedy.json); the first is the default;
//! an unknown name is NOT_FOUND / 404 naming the served ones; NodeInfo,
//! `/v1/models` and `tessera status` list both with their placement; each
//! group's metrics carry its name.
mod common;

use common::{http_get, http_post, Server};
use serde_json::Value;
use tessera_proto::v1 as pb;
use tessera_proto::v1::node_client::NodeClient;
use tessera_proto::v1::tessera_client::TesseraClient;
use tonic::Code;

fn raw_greedy(model: &str, prompt: &str, max_tokens: u32) -> pb::GenerateRequest {
    pb::GenerateRequest {
        prompt: prompt.into(),
        raw: true,
        max_tokens,
        temperature: Some(0.0),
        model: model.into(),
        ..Default::default()
    }
}

async fn token_ids(c: &mut TesseraClient<tonic::transport::Channel>, req: pb::GenerateRequest) -> Vec<u32> {
    let mut stream = c.generate(req).await.unwrap().into_inner();
    let mut ids = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        ids.extend(chunk.token_ids);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_answer_by_name_and_unknown_names_are_not_found() {
    let Some(models) = common::models() else { return };
    let Some(gemma) = common::gemma(&models) else { return };
    let smol = models.join("SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let tmp = tempfile::tempdir().unwrap();
    let (smol_arg, gemma_arg) = (format!("smol={}", smol.display()), format!("gemma={}", gemma.display()));
    let server = Server::start_with(
        &tmp.path().join("data"),
        &models,
        &["--model", &smol_arg, "--model", &gemma_arg, "--tp", "gemma=2"],
    );
    let mut c = TesseraClient::connect(server.url()).await.unwrap();

    // Gemma by name: llama.cpp's greedy tokens for the fixture's first prompt.
    let fx: Value = serde_json::from_str(
        &std::fs::read_to_string(common::workspace().join("tests/fixtures/gemma3_greedy.json")).unwrap(),
    )
    .unwrap();
    let case = &fx["prompts"][0];
    let want: Vec<u32> = serde_json::from_value(case["generated_token_ids"].clone()).unwrap();
    let prompt = case["prompt_text"].as_str().unwrap();
    let got = token_ids(&mut c, raw_greedy("gemma", prompt, 4)).await;
    assert_eq!(got, want[..4], "gemma's greedy tokens");

    // The default ("" and "default") is the first model; SmolLM2 gives other tokens.
    let smol_ids = token_ids(&mut c, raw_greedy("smol", prompt, 4)).await;
    assert_ne!(smol_ids, got, "both names reached the same model");
    assert_eq!(token_ids(&mut c, raw_greedy("", prompt, 4)).await, smol_ids);
    assert_eq!(token_ids(&mut c, raw_greedy("default", prompt, 4)).await, smol_ids);

    // An unknown name: NOT_FOUND listing the served ones, before any work.
    let err = c.generate(raw_greedy("llama-70b", prompt, 4)).await.expect_err("unknown model must fail");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("llama-70b") && err.message().contains("gemma"), "{}", err.message());
    // The coordinator lists what every model node serves, not what the last one asked does.
    assert!(
        err.message().contains("no model node serves the model 'llama-70b' (served: smol, gemma"),
        "{}",
        err.message()
    );

    // Each name counts with its own tokenizer; the node lists both, gemma at tp 2.
    let mut node = NodeClient::connect(server.internal_url()).await.unwrap();
    let count = |model: &str| pb::CountTokensRequest {
        texts: vec!["向量数据库把文本变成向量。".into()],
        chat: false,
        model: model.into(),
    };
    let a = node.count_tokens(count("smol")).await.unwrap().into_inner();
    let b = node.count_tokens(count("gemma")).await.unwrap().into_inner();
    assert_ne!(a.counts, b.counts, "one tokenizer counted for both");
    assert_eq!(b.context_length, 32768);
    assert_eq!(node.count_tokens(count("nope")).await.unwrap_err().code(), Code::NotFound);
    let info = node.info(pb::NodeInfoRequest {}).await.unwrap().into_inner();
    let served: Vec<(String, u32)> = info.models.iter().map(|m| (m.name.clone(), m.tensor_parallel)).collect();
    assert_eq!(served, vec![("smol".to_string(), 1), ("gemma".to_string(), 2)]);
    assert_eq!(info.model.map(|m| m.name), Some("smol".to_string()));

    // The CLI picks by --model.
    let text =
        server.cli_ok(&["generate", "--raw", "--model", "gemma", "--temperature", "0", "--max-tokens", "4", prompt]);
    let reference = case["generated_text"].as_str().unwrap();
    assert!(!text.trim().is_empty() && reference.starts_with(text.trim_end()), "{text:?} vs {reference:?}");
    let bad = server.cli(&["generate", "--model", "nope", "hi"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("nope"));

    // OpenAI: /v1/models lists both chat models and the embedder; chat by name; 404 otherwise.
    let h = server.http.as_str();
    let (code, body) = http_get(h, "/v1/models").expect("/v1/models answers");
    assert_eq!(code, 200, "{body}");
    let listed: Vec<String> = serde_json::from_str::<Value>(&body).unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, vec!["smol", "gemma", "all-MiniLM-L6-v2"]);
    let chat = |model: &str| {
        format!(
            r#"{{"model":"{model}","temperature":0,"max_tokens":4,"messages":[{{"role":"user","content":"Hello"}}]}}"#
        )
    };
    let (code, body) = http_post(h, "/v1/chat/completions", &chat("gemma"));
    assert_eq!(code, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["model"], "gemma");
    let (code, body) = http_post(h, "/v1/chat/completions", &chat("default"));
    assert_eq!(code, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["model"], "smol");
    let (code, body) = http_post(h, "/v1/chat/completions", &chat("gpt-4o"));
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("gemma") && body.contains("smol"), "{body}");

    // Each group's metrics carry its name: both generated tokens, apart.
    let (_, metrics) = http_get(h, "/metrics").expect("/metrics answers");
    for name in ["smol", "gemma"] {
        let series = format!("tessera_model_generated_tokens_total{{model=\"{name}\"}} ");
        let value: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .unwrap_or_else(|| panic!("no {series} in /metrics"))
            .trim()
            .parse()
            .unwrap();
        assert!(value >= 4.0, "{series}{value}");
    }

    // `tessera status` shows where each group runs.
    let status: Value = serde_json::from_str(&server.cli_ok(&["status", "--json"])).unwrap();
    let placed: Vec<(String, u64, bool)> = status["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap().into(), m["tensor_parallel"].as_u64().unwrap(), m["default"] == true))
        .collect();
    assert_eq!(placed, vec![("smol".into(), 1, true), ("gemma".into(), 2, false)]);
    assert!(status["models"][0]["node"].as_str().is_some_and(|n| !n.is_empty()));
}

#[test]
fn model_flags_are_checked_before_start() {
    let Some(models) = common::models() else { return };
    let smol = models.join("SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let tmp = tempfile::tempdir().unwrap();
    // A bare path whose stem is an alias of the default could never be named.
    let aliased = tmp.path().join("default.gguf");
    std::os::unix::fs::symlink(&smol, &aliased).unwrap();
    for (args, needle) in [
        (vec!["--model".to_string(), aliased.display().to_string()], "NAME=PATH"),
        (
            vec![
                "--model".to_string(),
                format!("a={}", smol.display()),
                "--model".into(),
                format!("a={}", smol.display()),
            ],
            "two models",
        ),
        (vec!["--model".to_string(), format!("default={}", smol.display())], "default"),
        (vec!["--model".to_string(), "x=/no/such.gguf".into()], "does not exist"),
        (vec!["--model".to_string(), format!("a={}", smol.display()), "--tp".into(), "b=2".into()], "names no --model"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .arg("up")
            .args(["--data-dir", tmp.path().join("d").to_str().unwrap(), "--models", models.to_str().unwrap()])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{args:?}: {err}");
    }
}
