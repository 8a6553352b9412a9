//! Scale-out with real processes: a collection (2 shards × 2 replicas) on two
//! nodes; two more nodes join; the placement leader moves replicas onto them
//! (snapshot transfer, the new replica added first and caught up, then the old
//! one removed and dropped) while searches and writes keep running. No search
//! fails during the moves, every acknowledged document is found, and in the end
//! every node holds one replica, all at their primary's sequence.
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::cluster::{cli_ok, coordinator, etcd, free_port, node, status, wait_for};
use serde_json::Value;
use tessera_proto::v1 as pb;
use tessera_proto::v1::tessera_client::TesseraClient;

fn doc(i: usize) -> pb::DocumentInput {
    pb::DocumentInput {
        id: format!("doc-{i}"),
        text: format!("Item {i} holds the word vk{i}j and filler text."),
        ..Default::default()
    }
}

fn hosted(s: &Value) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for p in s["collections"][0]["shards"].as_array().unwrap() {
        for r in p["replicas"].as_array().unwrap() {
            *m.entry(r.as_str().unwrap().to_string()).or_insert(0) += 1;
        }
    }
    m
}

#[test]
fn new_nodes_take_replicas_while_searches_keep_working() {
    let Some(models) = common::models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some((_etcd, etcd_url)) = etcd(tmp.path()) else { return };
    let start = |i: usize| {
        node(
            tmp.path(),
            &etcd_url,
            &format!("n{i}"),
            "loader,embedder,shard",
            &format!("127.0.0.1:{}", free_port()),
            &models,
        )
    };
    let mut nodes = vec![start(1), start(2)];
    let c1 = format!("127.0.0.1:{}", free_port());
    let _c = coordinator(tmp.path(), &etcd_url, &c1, "c1");
    wait_for("two nodes", Duration::from_secs(90), || {
        let out = common::cluster::cli(&c1, &["status", "--json"]);
        out.status.success()
            && serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|s| s["nodes"].as_array().unwrap().len() == 2)
    });
    cli_ok(&c1, &["collections", "create", "docs", "--shards", "2", "--replication", "2"]);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let acked: Arc<Mutex<Vec<usize>>> = Arc::default();
    let search_errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("http://{c1}");
    let writer = {
        let (acked, stop, url) = (acked.clone(), stop.clone(), url.clone());
        rt.spawn(async move {
            let mut c = TesseraClient::connect(url).await.unwrap();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let req =
                    pb::IngestRequest { collection: "docs".into(), documents: vec![doc(i)], ..Default::default() };
                if c.ingest(req).await.is_ok_and(|r| r.get_ref().errors.is_empty()) {
                    acked.lock().unwrap().push(i);
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        })
    };
    let searcher = {
        let (errors, stop, url) = (search_errors.clone(), stop.clone(), url.clone());
        rt.spawn(async move {
            let mut c = TesseraClient::connect(url).await.unwrap();
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let req = pb::SearchRequest {
                    collection: "docs".into(),
                    query: "filler text item".into(),
                    top_k: 3,
                    ..Default::default()
                };
                if let Err(e) = c.search(req).await {
                    errors.lock().unwrap().push(e.message().to_string());
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(80)).await;
            }
            n
        })
    };
    wait_for("some writes", Duration::from_secs(30), || acked.lock().unwrap().len() >= 10);
    nodes.push(start(3));
    nodes.push(start(4));
    wait_for("one replica per node", Duration::from_secs(90), || {
        let s = status(&c1);
        let h = hosted(&s);
        h.len() == 4 && h.values().all(|&n| n == 1)
    });
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    rt.block_on(writer).unwrap();
    let searches = rt.block_on(searcher).unwrap();
    let errors = search_errors.lock().unwrap().clone();
    eprintln!(
        "{searches} searches during the scale-out, {} failed; {} writes acknowledged",
        errors.len(),
        acked.lock().unwrap().len()
    );
    assert!(errors.is_empty(), "searches failed during the moves: {errors:?}");

    // One more write, then every replica is at its primary's sequence.
    rt.block_on(async {
        let mut c = TesseraClient::connect(url.clone()).await.unwrap();
        c.ingest(pb::IngestRequest { collection: "docs".into(), documents: vec![doc(100_000)], ..Default::default() })
            .await
            .unwrap();
    });
    wait_for("replicas in step", Duration::from_secs(20), || {
        status(&c1)["collections"][0]["shards"].as_array().unwrap().iter().all(|p| {
            let seqs = p["replica_sequences"].as_object().unwrap();
            seqs.len() == 2 && seqs.values().all(|v| v == &p["applied_sequence"])
        })
    });
    let acked = acked.lock().unwrap().clone();
    rt.block_on(async {
        let mut c = TesseraClient::connect(url).await.unwrap();
        for i in acked.iter().copied().chain([100_000]) {
            let top = common::cluster::bm25_top(&mut c, &format!("vk{i}j")).await;
            assert_eq!(top, Some(format!("doc-{i}")), "acknowledged doc-{i} lost");
        }
    });
}
