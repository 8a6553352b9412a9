//! Replication with real processes: etcd, three `tessera node`s, two
//! coordinators, a collection with 2 shards × 3 replicas (writes acknowledged by
//! a majority). Under a concurrent ingest + search load, the primary of shard 0
//! is killed with -9. Writes to it fail only until the coordinators promote the
//! follower with the most applied writes (new epoch); searches fail over to
//! followers at once. Afterwards every acknowledged document is found, no search
//! fails after the failover window (lease TTL + 2 s), and the restarted node
//! catches up from the new primary's log on the next writes.
mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{alive, cli_ok, coordinator, etcd, free_port, node_with, status, wait_for, wait_for_procs, Proc};
use serde_json::Value;
use tessera_proto::v1 as pb;
use tessera_proto::v1::tessera_client::TesseraClient;

const TTL_S: f64 = 2.0;

fn doc(i: usize) -> pb::DocumentInput {
    pb::DocumentInput {
        id: format!("doc-{i}"),
        text: format!("Record {i} of the replication test carries the unique word qz{i}x and some ordinary words."),
        ..Default::default()
    }
}

#[test]
fn primary_loss_under_load_loses_no_acknowledged_write_and_the_node_catches_up() {
    let Some(models) = common::models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some((_etcd, etcd_url)) = etcd(tmp.path()) else { return };
    let grpc: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let roles = ["loader,embedder,shard,session", "loader,embedder,shard", "loader,embedder,shard"];
    let http: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let start = |i: usize| {
        node_with(tmp.path(), &etcd_url, &format!("n{}", i + 1), roles[i], &grpc[i], &models, &["--http", &http[i]])
    };
    let mut nodes: Vec<Option<Proc>> = (0..3).map(|i| Some(start(i))).collect();
    let (c1, c2) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let mut coordinators: Vec<Proc> =
        [(&c1, "c1"), (&c2, "c2")].iter().map(|(g, name)| coordinator(tmp.path(), &etcd_url, g, name)).collect();
    let all_up = vec![("n1".to_string(), true), ("n2".to_string(), true), ("n3".to_string(), true)];
    let procs = nodes.iter_mut().flatten().chain(coordinators.iter_mut());
    wait_for_procs("three nodes", Duration::from_secs(180), procs, || {
        [&c1, &c2].iter().all(|c| {
            let out = common::cluster::cli(c, &["status", "--json"]);
            out.status.success() && serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|s| alive(&s) == all_up)
        })
    });
    cli_ok(&c1, &["collections", "create", "docs", "--shards", "2", "--replication", "3"]);
    let s = status(&c1);
    let victim = s["collections"][0]["shards"][0]["primary"].as_str().unwrap().to_string();
    let victim_idx: usize = victim[1..].parse::<usize>().unwrap() - 1;

    let rt = tokio::runtime::Runtime::new().unwrap();
    let acked: Arc<Mutex<BTreeSet<usize>>> = Arc::default();
    let write_errors: Arc<Mutex<Vec<(f64, String)>>> = Arc::default();
    let search_errors: Arc<Mutex<Vec<(f64, String)>>> = Arc::default();
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let since_kill = |k: &Mutex<Option<Instant>>| k.lock().unwrap().map(|t| t.elapsed().as_secs_f64()).unwrap_or(-1.0);

    // Writer: one document per request through c1; searcher: through c2.
    let writer = {
        let (acked, errors, killed_at, stop, url) =
            (acked.clone(), write_errors.clone(), killed_at.clone(), stop.clone(), format!("http://{c1}"));
        rt.spawn(async move {
            let mut c = TesseraClient::connect(url).await.unwrap();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let req =
                    pb::IngestRequest { collection: "docs".into(), documents: vec![doc(i)], ..Default::default() };
                match c.ingest(req).await {
                    Ok(r) if r.get_ref().errors.is_empty() => {
                        acked.lock().unwrap().insert(i);
                    }
                    Ok(r) => errors.lock().unwrap().push((since_kill(&killed_at), format!("{:?}", r.get_ref().errors))),
                    Err(e) => errors.lock().unwrap().push((since_kill(&killed_at), e.message().to_string())),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let searcher = {
        let (errors, killed_at, stop, url) =
            (search_errors.clone(), killed_at.clone(), stop.clone(), format!("http://{c2}"));
        rt.spawn(async move {
            let mut c = TesseraClient::connect(url).await.unwrap();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let req = pb::SearchRequest {
                    collection: "docs".into(),
                    query: "ordinary words of a record".into(),
                    top_k: 5,
                    ..Default::default()
                };
                if let Err(e) = c.search(req).await {
                    errors.lock().unwrap().push((since_kill(&killed_at), e.message().to_string()));
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            n
        })
    };

    wait_for("20 acknowledged writes", Duration::from_secs(60), || acked.lock().unwrap().len() >= 20);
    nodes[victim_idx].as_mut().unwrap().kill9();
    *killed_at.lock().unwrap() = Some(Instant::now());
    // Load continues through the failover window and beyond.
    wait_for("load after failover", Duration::from_secs(60), || {
        since_kill(&killed_at) > TTL_S + 6.0 && acked.lock().unwrap().len() >= 40
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    rt.block_on(writer).unwrap();
    let searches = rt.block_on(searcher).unwrap();

    let window = TTL_S + 2.0;
    let late_search: Vec<_> = search_errors.lock().unwrap().iter().filter(|(t, _)| *t > window).cloned().collect();
    assert!(late_search.is_empty(), "searches failed after the failover window: {late_search:?}");
    let late_write: Vec<_> = write_errors.lock().unwrap().iter().filter(|(t, _)| *t > window).cloned().collect();
    assert!(late_write.is_empty(), "writes failed after the failover window: {late_write:?}");
    {
        let (se, we, ok) = (search_errors.lock().unwrap(), write_errors.lock().unwrap(), acked.lock().unwrap().len());
        let times = |v: &Vec<(f64, String)>| v.iter().map(|(t, _)| format!("{t:.1}")).collect::<Vec<_>>();
        eprintln!(
            "{searches} searches, {} failed (s after the kill: {:?}); {ok} writes acknowledged, {} failed (s after the kill: {:?})",
            se.len(),
            times(&se),
            we.len(),
            times(&we)
        );
    }

    // The placement moved: shard 0 has a new primary in epoch 2.
    let s = status(&c2);
    let shard0 = &s["collections"][0]["shards"][0];
    assert_ne!(shard0["primary"], victim.as_str(), "{s}");
    assert_eq!(shard0["epoch"], 2, "{s}");

    // Every acknowledged document is found (BM25 on its unique word, through both coordinators).
    let acked: Vec<usize> = acked.lock().unwrap().iter().copied().collect();
    rt.block_on(async {
        for c in [&c1, &c2] {
            let mut client = TesseraClient::connect(format!("http://{c}")).await.unwrap();
            for i in &acked {
                let top = common::cluster::bm25_top(&mut client, &format!("qz{i}x")).await;
                assert_eq!(top.as_deref(), Some(format!("doc-{i}").as_str()), "acknowledged doc-{i} lost");
            }
        }
    });

    // The killed node restarts, rejoins as a follower and catches up on the next writes.
    nodes[victim_idx] = Some(start(victim_idx));
    wait_for("the node to rejoin", Duration::from_secs(60), || alive(&status(&c1)) == all_up);
    rt.block_on(async {
        let mut c = TesseraClient::connect(format!("http://{c1}")).await.unwrap();
        let docs: Vec<pb::DocumentInput> = (1000..1010).map(doc).collect();
        c.ingest(pb::IngestRequest { collection: "docs".into(), documents: docs, ..Default::default() }).await.unwrap();
    });
    wait_for("every replica at its primary's sequence", Duration::from_secs(30), || {
        let s = status(&c1);
        s["collections"][0]["shards"].as_array().unwrap().iter().all(|p| {
            let seqs = p["replica_sequences"].as_object().unwrap();
            seqs.len() == 3 && seqs.values().all(|v| v == &p["applied_sequence"])
        })
    });
    // The primaries export replica lag per follower; after the catch-up it is 0 everywhere.
    let lags: Vec<(String, f64)> = http
        .iter()
        .filter_map(|h| common::http_get(h, "/metrics"))
        .flat_map(|(_, text)| {
            text.lines()
                .filter(|l| l.starts_with("tessera_shard_replica_lag{"))
                .map(|l| {
                    let (series, v) = l.rsplit_once(' ').unwrap();
                    (series.to_string(), v.parse::<f64>().unwrap())
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(!lags.is_empty(), "no replica lag exported");
    let victim_url = format!("http://{}", grpc[victim_idx]);
    assert!(lags.iter().any(|(s, _)| s.contains(&victim_url)), "lag of the restarted follower: {lags:?}");
    assert!(lags.iter().all(|(_, v)| *v == 0.0), "{lags:?}");
}
