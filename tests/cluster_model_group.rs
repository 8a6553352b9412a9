//! A tensor-parallel model group of world size 2 over two `tessera node`
//! processes (rank 0 serves, rank 1 computes; TCP communicator between them)
//! answers through a coordinator with the same greedy tokens as world size 1
//! (llama.cpp's reference in ../shared/fixtures, before its first near tie).
mod common;

use std::time::Duration;

use common::cluster::{coordinator, etcd, free_port, node_with, wait_for};

/// llama.cpp's first greedy tokens for "What is the capital of France?" with the
/// default system prompt (see tests/generate.rs).
const FIXTURE_PREFIX: &str = "L'Étoile, la";

#[test]
fn a_model_group_over_two_node_processes_generates_like_one_rank() {
    let Some(models) = common::models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some((_etcd, etcd_url)) = etcd(tmp.path()) else { return };
    let group = format!("127.0.0.1:{}", free_port());
    let secret = tmp.path().join("group.secret");
    std::fs::write(&secret, "a shared secret for this test group\n").unwrap();
    let secret = secret.to_str().unwrap();
    let world = ["--model-world", "2", "--model-group", group.as_str(), "--model-group-secret-file", secret];
    let rank0: Vec<&str> = world.iter().copied().chain(["--model-rank", "0"]).collect();
    let rank1: Vec<&str> = world.iter().copied().chain(["--model-rank", "1"]).collect();
    let grpc = |_: ()| format!("127.0.0.1:{}", free_port());
    let n1 = node_with(tmp.path(), &etcd_url, "n1", "loader,embedder,shard,model", &grpc(()), &models, &rank0);
    let n2 = node_with(tmp.path(), &etcd_url, "n2", "model", &grpc(()), &models, &rank1);
    let c1 = format!("127.0.0.1:{}", free_port());
    let _c = coordinator(tmp.path(), &etcd_url, &c1, "c1");
    wait_for("the group's rank 0 serving", Duration::from_secs(120), || n1.log().contains("tessera node: serving"));
    assert!(n2.log().contains("model rank joined its group"), "{}", n2.log());
    assert!(n1.log().contains("model group over processes started (rank 0)"), "{}", n1.log());
    wait_for("both nodes in the coordinator", Duration::from_secs(30), || {
        common::cluster::cli(&c1, &["status", "--json"]).stdout.windows(4).filter(|w| w == b"\"n2\"").count() > 0
    });
    let out = common::cluster::cli_ok(
        &c1,
        &["generate", "--temperature", "0", "--max-tokens", "8", "What is the capital of France?"],
    );
    assert!(out.starts_with(FIXTURE_PREFIX), "world size 2 over processes gave {out:?}");
    let status = common::cluster::status(&c1);
    let n2_roles = status["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "n2").unwrap()["roles"].clone();
    assert_eq!(n2_roles, serde_json::json!([]), "rank 1 serves no model requests itself");
}
