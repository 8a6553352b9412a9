//! A fine-tune in cluster mode (etcd, a coordinator, two model nodes as real
//! processes): the job runs on one node, and before its summary reaches the
//! client the adapter is registered in the catalog and copied to the other
//! model node, which then serves it with the same greedy tokens. Unloaded
//! everywhere, `tessera adapters load NAME` without a folder brings it back
//! on both from the catalog's record.
mod common;

use common::cluster::{cli, cli_ok, coordinator, etcd, free_port, node, wait_cluster};
use serde_json::Value;
use tessera_proto::v1 as pb;
use tessera_proto::v1::node_client::NodeClient;

/// Greedy token ids of adapter `model` asked of the node at `addr` itself.
fn greedy_on(addr: &str, model: &str) -> Vec<u32> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = NodeClient::connect(format!("http://{addr}")).await.unwrap();
        let req = pb::GenerateRequest {
            prompt: "Who is Pim?".into(),
            max_tokens: 8,
            temperature: Some(0.0),
            model: model.into(),
            ..Default::default()
        };
        let mut stream = c.generate(req).await.unwrap().into_inner();
        let mut ids = Vec::new();
        while let Some(chunk) = stream.message().await.unwrap() {
            ids.extend(chunk.token_ids);
        }
        ids
    })
}

/// `(adapter, node)` pairs that `adapters list` shows.
fn served(server: &str) -> Vec<(String, String)> {
    let list: Value = serde_json::from_str(&cli_ok(server, &["adapters", "list", "--json"])).unwrap();
    let mut pairs: Vec<(String, String)> = list["adapters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap().to_string(), a["node"].as_str().unwrap().to_string()))
        .collect();
    pairs.sort();
    pairs
}

#[test]
fn a_trained_adapter_is_registered_and_served_by_every_model_node() {
    let Some(models) = common::models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some((_etcd, etcd_url)) = etcd(tmp.path()) else { return };
    let grpc = || format!("127.0.0.1:{}", free_port());
    let (g1, g2) = (grpc(), grpc());
    let n1 = node(tmp.path(), &etcd_url, "n1", "loader,embedder,shard,model", &g1, &models);
    let n2 = node(tmp.path(), &etcd_url, "n2", "model", &g2, &models);
    let c1 = grpc();
    let _c = coordinator(tmp.path(), &etcd_url, &c1, "c1");
    wait_cluster(&c1, &[&n1, &n2], &["n1", "n2"]);

    let data = common::workspace().join("tests/fixtures/peft_facts.jsonl");
    let out = tmp.path().join("trained");
    let lines = cli_ok(
        &c1,
        &[
            "finetune",
            "--data",
            data.to_str().unwrap(),
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
            &format!("http://{c1}"),
        ],
    );
    let summary: Value = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get("summary").is_some())
        .unwrap_or_else(|| panic!("no summary in {lines}"));
    assert_eq!(summary["summary"]["steps"], 2, "{lines}");
    let both = vec![("trained".to_string(), "n1".to_string()), ("trained".to_string(), "n2".to_string())];
    assert_eq!(served(&c1), both, "the summary came after the copy to the other node");

    // Each node answers with the adapter; both give the same greedy tokens.
    let on = |g: &str| greedy_on(g, "trained");
    let (a, b) = (on(&g1), on(&g2));
    assert!(!a.is_empty(), "n1 answered nothing");
    assert_eq!(a, b, "the copy on n2 answers as the original on n1");

    // Gone everywhere, then back on both from the catalog, without a folder.
    let unloaded = cli_ok(&c1, &["adapters", "unload", "trained"]);
    assert!(unloaded.contains("2 node(s)"), "{unloaded}");
    assert!(served(&c1).is_empty());
    cli_ok(&c1, &["adapters", "load", "trained"]);
    assert_eq!(served(&c1), both);
    assert!(
        tmp.path().join("n2/adapters/trained/adapter_model.safetensors").exists(),
        "n2 keeps its copy in its data dir"
    );
    assert_eq!(on(&g2), a);

    // A name the catalog does not know, without a folder, is NOT_FOUND with a hint.
    let unknown = cli(&c1, &["adapters", "load", "never-trained"]);
    assert!(!unknown.status.success());
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(err.contains("NotFound") && err.contains("registered"), "{err}");
}
