//! Drop and re-create of a replicated collection with real processes (etcd,
//! two shard nodes, a coordinator; replication 2): the drop removes the
//! followers' replicas too, so the re-created collection (same name, so the
//! same nodes, now f32 where it was int8) opens on both nodes and holds only
//! the new documents on every replica.
mod common;

use common::cluster::{cli_ok, coordinator, etcd, free_port, node, wait_cluster};
use tessera_proto::v1 as pb;
use tessera_proto::v1::node_client::NodeClient;

fn ingest(server: &str, dir: &std::path::Path, prefix: &str, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        std::fs::write(dir.join(format!("{prefix}{i}.txt")), format!("Document {prefix}{i} talks about topic {i}."))
            .unwrap();
    }
    cli_ok(server, &["ingest", "--collection", "docs", dir.to_str().unwrap()]);
}

/// `(quantization, documents)` of each shard replica on the node at `addr`.
fn replicas(addr: &str, shards: u32) -> Vec<(String, u64)> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = NodeClient::connect(format!("http://{addr}")).await.unwrap();
        let mut out = Vec::new();
        for shard in 0..shards {
            let req = pb::ShardStatsRequest { shard: Some(pb::ShardRef { collection: "docs".into(), shard }) };
            let s = c.get_shard_stats(req).await.unwrap().into_inner();
            out.push((s.quantization, s.documents));
        }
        out
    })
}

#[test]
fn a_dropped_replicated_collection_leaves_no_replica_behind() {
    let Some(models) = common::models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some((_etcd, etcd_url)) = etcd(tmp.path()) else { return };
    let (g1, g2, c1) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let n1 = node(tmp.path(), &etcd_url, "n1", "loader,embedder,shard", &g1, &models);
    let n2 = node(tmp.path(), &etcd_url, "n2", "shard", &g2, &models);
    let _c = coordinator(tmp.path(), &etcd_url, &c1, "c1");
    wait_cluster(&c1, &[&n1, &n2], &["n1", "n2"]);
    let create = |quantization: &str| {
        cli_ok(
            &c1,
            &["collections", "create", "docs", "--shards", "2", "--replication", "2", "--quantization", quantization],
        )
    };
    create("int8");
    ingest(&c1, &tmp.path().join("old"), "old", 12);
    let old: u64 = replicas(&g1, 2).iter().map(|r| r.1).sum();
    assert_eq!(old, 12);
    assert_eq!(replicas(&g1, 2), replicas(&g2, 2), "both nodes hold every shard");
    cli_ok(&c1, &["collections", "drop", "docs"]);
    create("none");
    ingest(&c1, &tmp.path().join("new"), "new", 5);
    for addr in [&g1, &g2] {
        let r = replicas(addr, 2);
        assert!(r.iter().all(|(q, _)| q == "none"), "{addr}: {r:?}");
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), 5, "{addr} holds only the new documents: {r:?}");
    }
}
