//! Cluster mode with real processes: an etcd server (Debian's etcd-server) on a
//! free loopback port, two `tessera node` processes with different roles and two
//! `tessera coordinator` processes. Collections, documents, sessions and
//! generation work through either coordinator; placement and membership show in
//! `tessera status`; a node killed with -9 leaves the membership after its lease
//! TTL, searches that need its shards then fail with a clear UNAVAILABLE (this
//! collection has one replica per shard), and the restarted node rejoins with its data.
mod common;

use std::time::{Duration, Instant};

use common::cluster::{alive, cli, cli_ok, coordinator, etcd, free_port, node, status, wait_for};
use serde_json::Value;

#[test]
fn two_nodes_two_coordinators_membership_placement_and_node_loss() {
    let Some(models) = common::models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some((_etcd, etcd_url)) = etcd(tmp.path()) else { return };
    common::write_command_docs(&tmp.path().join("docs"));
    let (g1, g2) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let _n1 = node(tmp.path(), &etcd_url, "n1", "loader,embedder,shard,session", &g1, &models);
    let mut n2 = node(tmp.path(), &etcd_url, "n2", "embedder,shard,model", &g2, &models);
    let (c1, c2) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let coordinator = |grpc: &str, name: &str| coordinator(tmp.path(), &etcd_url, grpc, name);
    let _c1 = coordinator(&c1, "c1");
    let _c2 = coordinator(&c2, "c2");
    wait_for("both nodes in both coordinators", Duration::from_secs(60), || {
        [&c1, &c2].iter().all(|c| {
            let out = cli(c, &["status", "--json"]);
            out.status.success()
                && serde_json::from_slice::<Value>(&out.stdout)
                    .is_ok_and(|s| alive(&s) == vec![("n1".into(), true), ("n2".into(), true)])
        })
    });

    // Collections are shared through etcd; placement spreads shards over shard nodes.
    cli_ok(&c1, &["collections", "create", "docs", "--shards", "3"]);
    let again = cli(&c2, &["collections", "create", "docs", "--shards", "3"]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("AlreadyExists"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let repl = cli(&c2, &["collections", "create", "other", "--replication", "3"]);
    assert!(
        String::from_utf8_lossy(&repl.stderr).contains("FailedPrecondition"),
        "{}",
        String::from_utf8_lossy(&repl.stderr)
    );
    cli_ok(&c1, &["ingest", "--collection", "docs", tmp.path().join("docs").to_str().unwrap()]);
    let s = status(&c2);
    let shards = s["collections"][0]["shards"].as_array().unwrap().clone();
    assert_eq!(shards.len(), 3);
    let primaries: Vec<&str> = shards.iter().map(|p| p["primary"].as_str().unwrap()).collect();
    assert!(primaries.contains(&"n1") && primaries.contains(&"n2"), "{s}");
    assert!(shards.iter().all(|p| p["epoch"] == 1 && p["replicas"].as_array().unwrap().len() == 1), "{s}");
    assert!(shards.iter().map(|p| p["applied_sequence"].as_u64().unwrap()).sum::<u64>() >= 1, "{s}");

    // Search is the same through either coordinator.
    let search =
        |c: &str| cli_ok(c, &["search", "--collection", "docs", "--top-k", "4", "--json", "how do I copy a folder"]);
    let before = search(&c1);
    assert_eq!(before, search(&c2));
    let hits: Value = serde_json::from_str(&before).unwrap();
    assert_eq!(hits["hits"][0]["doc_id"], "cp.md", "{hits}");
    assert_eq!(hits["hits"].as_array().unwrap().len(), 4, "all documents on both nodes are searched");

    // Ask through c2: model on n2, session on n1; the session is visible through c1.
    let ask = cli_ok(
        &c2,
        &[
            "ask",
            "--collection",
            "docs",
            "--session",
            "cl",
            "--top-k",
            "1",
            "--max-tokens",
            "6",
            "--json",
            "How do I stop a process?",
        ],
    );
    let ask: Value = serde_json::from_str(&ask).unwrap();
    assert_eq!(ask["sources"][0]["doc_id"], "kill.md", "{ask}");
    let session: Value = serde_json::from_str(&cli_ok(&c1, &["sessions", "show", "cl", "--json"])).unwrap();
    assert_eq!(session["messages"].as_array().unwrap().len(), 2);

    // kill -9 n2: it leaves after its 2 s lease; its shards are then reported, not silently skipped.
    n2.kill9();
    let killed = Instant::now();
    // Until its lease expires it is registered but does not answer; then it is gone from membership.
    wait_for("n2 to leave the membership", Duration::from_secs(15), || {
        let s = status(&c1);
        s["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == "n2" && n["error"].as_str().unwrap().contains("not registered"))
    });
    let left = killed.elapsed().as_secs_f64();
    eprintln!("n2 left the membership {left:.1} s after kill -9 (lease TTL 2 s)");
    assert!(left < 2.0 + 5.0, "{left}");
    assert_eq!(alive(&status(&c2)), vec![("n1".into(), true), ("n2".into(), false)]);
    let out = cli(&c1, &["search", "--collection", "docs", "--top-k", "4", "how do I copy a folder"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("Unavailable") && err.contains("is alive (replicas: n2)"), "{err}");

    // Restarted, n2 rejoins with its data and the results are whole again.
    let _n2 = node(tmp.path(), &etcd_url, "n2", "embedder,shard,model", &g2, &models);
    wait_for("n2 to rejoin", Duration::from_secs(60), || {
        alive(&status(&c1)) == vec![("n1".into(), true), ("n2".into(), true)]
    });
    wait_for("whole results again", Duration::from_secs(30), || {
        cli(&c2, &["search", "--collection", "docs", "--top-k", "4", "--json", "how do I copy a folder"]).stdout
            == before.as_bytes()
    });
    let _ = n2.log();
}
