//! LoRA adapters through the real server (`tessera up`, gRPC over a
//! socket, the CLI, the OpenAI API): `--adapter NAME=DIR` at start, `model`
//! selecting it in Generate and /v1/chat/completions, `/v1/models` listing
//! it with its parent, `tessera adapters load|list|unload`, clear errors for
//! bad folders and unknown names, and `tessera finetune --collection` as a
//! job on the server whose adapter is served when it ends.
mod common;

use std::collections::BTreeMap;

use common::{http_post, Server};
use serde_json::Value;
use tessera_node::finetune::model::SplitMix;
use tessera_node::model::adapter::{peft, LoraAdapter, LoraMatrix, Target};
use tessera_node::model::decoder::RankModel;
use tessera_proto::v1 as pb;
use tessera_proto::v1::tessera_client::TesseraClient;
use tonic::Code;

/// A PEFT folder holding an adapter of random A and B (`size` 0: B zero).
fn write_adapter(dir: &std::path::Path, gguf: &std::path::Path, size: f32) {
    let cfg = RankModel::load(gguf, 0, 1).unwrap().config().clone();
    let mut rng = SplitMix(5);
    let rank = 8;
    let layers = (0..cfg.n_layer)
        .map(|_| {
            [Target::Q, Target::K, Target::V, Target::O]
                .iter()
                .map(|&t| {
                    let (input, output) = t.shape(&cfg);
                    let a = (0..rank * input).map(|_| (rng.unit() * 2.0 - 1.0) / (input as f32).sqrt()).collect();
                    let b = (0..output * rank).map(|_| (rng.unit() * 2.0 - 1.0) * size).collect();
                    (t, LoraMatrix { a, b, input, output })
                })
                .collect::<BTreeMap<_, _>>()
        })
        .collect();
    let adapter = LoraAdapter { rank, alpha: 16.0, layers };
    peft::save(&adapter, &cfg, dir, &peft::SaveInfo::default()).unwrap();
}

fn greedy(model: &str) -> pb::GenerateRequest {
    pb::GenerateRequest {
        prompt: "Name three colours.".into(),
        max_tokens: 8,
        temperature: Some(0.0),
        model: model.into(),
        ..Default::default()
    }
}

async fn ids(c: &mut TesseraClient<tonic::transport::Channel>, model: &str) -> Result<Vec<u32>, tonic::Status> {
    let mut stream = c.generate(greedy(model)).await?.into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await? {
        out.extend(chunk.token_ids);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapters_serve_by_name_load_unload_and_train_on_the_server() {
    let Some(models) = common::models() else { return };
    let gguf = models.join(tessera_node::node::DEFAULT_MODEL);
    let tmp = tempfile::tempdir().unwrap();
    let (support, zero) = (tmp.path().join("support"), tmp.path().join("zero"));
    write_adapter(&support, &gguf, 0.4);
    write_adapter(&zero, &gguf, 0.0);
    let arg = format!("support={}", support.display());
    let server = Server::start_with(&tmp.path().join("data"), &models, &["--adapter", &arg]);
    let mut c = TesseraClient::connect(server.url()).await.unwrap();

    // `model` picks the adapter; the base answers otherwise.
    let base = ids(&mut c, "default").await.unwrap();
    let tuned = ids(&mut c, "support").await.unwrap();
    assert_ne!(tuned, base, "the adapter changed nothing");

    // The OpenAI API: the adapter by name, listed with its parent; unknown: 404.
    let h = server.http.as_str();
    let body = |m: &str| {
        format!(
            r#"{{"model":"{m}","messages":[{{"role":"user","content":"Name three colours."}}],"max_tokens":8,"temperature":0}}"#
        )
    };
    let (code, text) = http_post(h, "/v1/chat/completions", &body("support"));
    assert_eq!(code, 200, "{text}");
    let (code, base_text) = http_post(h, "/v1/chat/completions", &body("default"));
    assert_eq!(code, 200, "{base_text}");
    let content = |t: &str| serde_json::from_str::<Value>(t).unwrap()["choices"][0]["message"]["content"].clone();
    assert_ne!(content(&text), content(&base_text));
    let (code, text) = http_post(h, "/v1/chat/completions", &body("no-such-adapter"));
    assert_eq!(code, 404, "{text}");
    let (code, listed) = common::http_get(h, "/v1/models").unwrap();
    assert_eq!(code, 200);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let entry = listed["data"].as_array().unwrap().iter().find(|m| m["id"] == "support").cloned();
    assert_eq!(entry.map(|e| e["parent"].clone()), Some(Value::from("SmolLM2-135M-Instruct.Q4_1")), "{listed}");

    // The CLI: a zero adapter loads and answers exactly as the base.
    server.cli_ok(&["adapters", "load", "zero", zero.to_str().unwrap()]);
    assert_eq!(ids(&mut c, "zero").await.unwrap(), base, "a zero adapter must give the base's tokens");
    let list: Value = serde_json::from_str(&server.cli_ok(&["adapters", "list", "--json"])).unwrap();
    let names: Vec<&str> = list["adapters"].as_array().unwrap().iter().filter_map(|a| a["name"].as_str()).collect();
    assert_eq!(names, ["support", "zero"], "{list}");
    server.cli_ok(&["adapters", "unload", "zero"]);
    let err = ids(&mut c, "zero").await.expect_err("an unloaded adapter must be gone");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    // Bad loads: clear errors, nothing served.
    let bad =
        |name: &str, path: &str| pb::LoadAdapterRequest { name: name.into(), path: path.into(), ..Default::default() };
    let err = c.load_adapter(bad("x", "/nonexistent/adapter")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = c.load_adapter(bad("a b", support.to_str().unwrap())).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = c.load_adapter(bad("default", support.to_str().unwrap())).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let broken = tmp.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join(peft::CONFIG_FILE), r#"{"peft_type":"LORA","r":8,"target_modules":["q_proj"]}"#)
        .unwrap();
    std::fs::write(broken.join(peft::WEIGHTS_FILE), b"not safetensors").unwrap();
    let err = c.load_adapter(bad("broken", broken.to_str().unwrap())).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // Fine-tuning on a collection's chunks runs on the server and serves its result.
    let docs = tmp.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(
        docs.join("pim.txt"),
        "Pim is the copper hedgehog of the Tessera project.\n\nPim lives in the relay room.",
    )
    .unwrap();
    server.cli_ok(&["ingest", "--collection", "docs", docs.to_str().unwrap()]);
    let out = tmp.path().join("docs-lm");
    let lines = server.cli_ok(&[
        "finetune",
        "--collection",
        "docs",
        "--out",
        out.to_str().unwrap(),
        "--max-steps",
        "2",
        "--rank",
        "2",
        "--eval-split",
        "0",
        "--json",
        "--server",
        &server.url(),
    ]);
    // Ask names the adapter too (its answer, retrieval and token counts
    // reach the adapter's base); an unknown name is NOT_FOUND.
    let ask = |model: &str| pb::AskRequest {
        collection: "docs".into(),
        question: "Who is Pim?".into(),
        max_tokens: 16,
        model: model.into(),
        ..Default::default()
    };
    let answer = |model: &'static str| {
        let mut c = c.clone();
        let req = ask(model);
        async move {
            let mut stream = c.ask(req).await?.into_inner();
            let mut text = String::new();
            while let Some(chunk) = stream.message().await? {
                text.push_str(&chunk.text);
            }
            Ok::<String, tonic::Status>(text)
        }
    };
    let (tuned_answer, base_answer) = (answer("support").await.unwrap(), answer("default").await.unwrap());
    assert_ne!(tuned_answer, base_answer, "Ask with the adapter answered as the base");
    assert_eq!(answer("no-such-adapter").await.unwrap_err().code(), Code::NotFound);
    let summary: Value = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get("summary").is_some())
        .unwrap();
    assert_eq!(summary["summary"]["steps"], 2, "{lines}");
    assert!(out.join(peft::WEIGHTS_FILE).exists());
    assert!(ids(&mut c, "docs-lm").await.is_ok(), "the trained adapter is served under its folder's name");
}
