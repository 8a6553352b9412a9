//! Replica rebuild with real processes: etcd, four `tessera node`s, two
//! coordinators (one elected placement leader, which is killed half-way so the
//! other takes over), a collection with 2 shards × 2 replicas. When a node holding replicas is killed, the leader promotes a
//! follower where needed and rebuilds every lost replica on a spare node by a
//! snapshot transfer; later writes reach the new replica by replication. After
//! both original holders of shard 0 are gone, every document is still found —
//! from replicas that were built by transfer.
mod common;

use std::time::Duration;

use common::cluster::{cli_ok, coordinator, etcd, free_port, node, status, wait_for, Proc};
use serde_json::Value;
use tessera_proto::v1 as pb;
use tessera_proto::v1::tessera_client::TesseraClient;

fn docs(range: std::ops::Range<usize>) -> Vec<pb::DocumentInput> {
    range
        .map(|i| pb::DocumentInput {
            id: format!("doc-{i}"),
            text: format!("Entry {i} has the unique word wq{i}z among common words."),
            ..Default::default()
        })
        .collect()
}

fn shard_replicas(s: &Value, shard: usize) -> Vec<String> {
    s["collections"][0]["shards"][shard]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect()
}

fn alive_ids(s: &Value) -> Vec<String> {
    s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["alive"] == true)
        .map(|n| n["id"].as_str().unwrap().to_string())
        .collect()
}

/// Every shard has two replicas, all alive, none of them in `gone`, all at the primary's sequence.
fn healed(s: &Value, gone: &[String]) -> bool {
    let alive = alive_ids(s);
    s["collections"][0]["shards"].as_array().unwrap().iter().all(|p| {
        let replicas: Vec<&str> = p["replicas"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
        let seqs = p["replica_sequences"].as_object().unwrap();
        replicas.len() == 2
            && replicas.iter().all(|r| alive.iter().any(|a| a == r) && !gone.iter().any(|g| g == r))
            && seqs.len() == 2
            && seqs.values().all(|v| v == &p["applied_sequence"])
    })
}

#[test]
fn lost_replicas_are_rebuilt_on_spare_nodes_by_transfer() {
    let Some(models) = common::models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some((_etcd, etcd_url)) = etcd(tmp.path()) else { return };
    let mut nodes: Vec<Option<Proc>> = (1..=4)
        .map(|i| {
            let grpc = format!("127.0.0.1:{}", free_port());
            Some(node(tmp.path(), &etcd_url, &format!("n{i}"), "loader,embedder,shard", &grpc, &models))
        })
        .collect();
    let (c1, c2) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let coordinator = |g: &str, name: &str| coordinator(tmp.path(), &etcd_url, g, name);
    // c1 starts first and becomes the placement leader; c2 campaigns behind it.
    let mut leader = coordinator(&c1, "c1");
    wait_for("c1 to lead", Duration::from_secs(30), || leader.log().contains("became the placement leader"));
    let follower = coordinator(&c2, "c2");
    wait_for("four nodes", Duration::from_secs(90), || {
        let out = common::cluster::cli(&c1, &["status", "--json"]);
        out.status.success() && serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|s| alive_ids(&s).len() == 4)
    });
    cli_ok(&c1, &["collections", "create", "docs", "--shards", "2", "--replication", "2"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ingest = |range: std::ops::Range<usize>| {
        rt.block_on(async {
            let mut c = TesseraClient::connect(format!("http://{c1}")).await.unwrap();
            let r = c
                .ingest(pb::IngestRequest { collection: "docs".into(), documents: docs(range), ..Default::default() })
                .await;
            r.map(|r| r.into_inner()).map_err(|e| e.message().to_string())
        })
    };
    assert_eq!(ingest(0..20).unwrap().documents, 20);

    // Kill a node that holds shard 0's primary.
    let first = status(&c1)["collections"][0]["shards"][0]["primary"].as_str().unwrap().to_string();
    let partner: String = shard_replicas(&status(&c1), 0).into_iter().find(|r| *r != first).unwrap();
    nodes[first[1..].parse::<usize>().unwrap() - 1].as_mut().unwrap().kill9();
    let mut gone = vec![first.clone()];
    // The leader moves the primary and rebuilds the lost replicas; the next writes reach them.
    wait_for("replicas rebuilt after the first loss", Duration::from_secs(30), || {
        let s = status(&c2);
        let rebuilt = s["collections"][0]["shards"].as_array().unwrap().iter().all(|p| {
            let r: Vec<&str> = p["replicas"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
            r.len() == 2 && !r.contains(&first.as_str())
        });
        rebuilt
    });
    wait_for("writes accepted again", Duration::from_secs(20), || ingest(20..30).is_ok());
    wait_for("every replica caught up", Duration::from_secs(20), || healed(&status(&c2), &gone));
    let s = status(&c2);
    assert!(s["collections"][0]["shards"][0]["epoch"].as_u64().unwrap() >= 2, "{s}");

    // Lose the placement leader, then the other original holder of shard 0 (its data now
    // survives only on the rebuilt replica): c2 takes over leadership and rebuilds.
    leader.kill9();
    nodes[partner[1..].parse::<usize>().unwrap() - 1].as_mut().unwrap().kill9();
    gone.push(partner.clone());
    wait_for("replicas rebuilt after the second loss, by the new leader", Duration::from_secs(40), || {
        let s = status(&c2);
        (0..2).all(|shard| {
            let r = shard_replicas(&s, shard);
            r.len() == 2 && !r.iter().any(|x| gone.contains(x))
        })
    });
    assert!(follower.log().contains("became the placement leader"), "c2 took over leadership");
    let ingest2 = |range: std::ops::Range<usize>| {
        rt.block_on(async {
            let mut c = TesseraClient::connect(format!("http://{c2}")).await.unwrap();
            let r = c
                .ingest(pb::IngestRequest { collection: "docs".into(), documents: docs(range), ..Default::default() })
                .await;
            r.map(|r| r.into_inner()).map_err(|e| e.message().to_string())
        })
    };
    wait_for("writes accepted again", Duration::from_secs(20), || ingest2(30..31).is_ok());
    wait_for("every replica caught up", Duration::from_secs(20), || healed(&status(&c2), &gone));

    rt.block_on(async {
        let mut c = TesseraClient::connect(format!("http://{c2}")).await.unwrap();
        for i in 0..31 {
            let top = common::cluster::bm25_top(&mut c, &format!("wq{i}z")).await;
            assert_eq!(top, Some(format!("doc-{i}")), "doc-{i} lost");
        }
    });
}
