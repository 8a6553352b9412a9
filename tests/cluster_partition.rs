//! A node cut off from etcd (its etcd traffic goes through a TCP proxy in this
//! test, which the test breaks) while it stays up and reachable: its lease
//! expires, the coordinators remove it, and it refuses shard writes because it
//! cannot prove its membership; when etcd is reachable again it rejoins cleanly
//! and accepts writes again.
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{alive, coordinator, etcd, free_port, node, status, wait_for};
use tessera_proto::v1 as pb;
use tessera_proto::v1::node_client::NodeClient;
use tokio::net::{TcpListener, TcpStream};

/// Forwards TCP to `target` until cut; while cut, drops every connection.
fn proxy(rt: &tokio::runtime::Runtime, target: String) -> (String, Arc<AtomicBool>) {
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let cut = Arc::new(AtomicBool::new(false));
    let flag = cut.clone();
    let live: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
    rt.spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else { continue };
            if flag.load(Ordering::SeqCst) {
                drop(inbound);
                let mut l = live.lock().unwrap();
                l.drain(..).for_each(|h| h.abort());
                continue;
            }
            let target = target.clone();
            let flag2 = flag.clone();
            let task = tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(&target).await else { return };
                let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                let watch = async {
                    while !flag2.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                };
                tokio::select! { _ = copy => {}, _ = watch => {} }
            });
            live.lock().unwrap().push(task.abort_handle());
        }
    });
    (addr, cut)
}

#[test]
fn a_node_cut_off_from_etcd_is_removed_fences_writes_and_rejoins() {
    let Some(models) = common::models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some((_etcd, etcd_url)) = etcd(tmp.path()) else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (proxy_addr, cut) = proxy(&rt, etcd_url.trim_start_matches("http://").to_string());
    let g1 = format!("127.0.0.1:{}", free_port());
    let _n1 = node(tmp.path(), &format!("http://{proxy_addr}"), "n1", "shard", &g1, &models);
    let _n2 =
        node(tmp.path(), &etcd_url, "n2", "loader,embedder,shard", &format!("127.0.0.1:{}", free_port()), &models);
    let c1 = format!("127.0.0.1:{}", free_port());
    let _c = coordinator(tmp.path(), &etcd_url, &c1, "c1");
    let both = vec![("n1".to_string(), true), ("n2".to_string(), true)];
    wait_for("both nodes", Duration::from_secs(90), || {
        let out = common::cluster::cli(&c1, &["status", "--json"]);
        out.status.success() && serde_json::from_slice(&out.stdout).is_ok_and(|s: serde_json::Value| alive(&s) == both)
    });

    // A probe shard on n1, written to directly through the Node API.
    let probe = pb::ShardRef { collection: "fence-probe".into(), shard: 0 };
    let write = |n: usize| pb::ShardWriteRequest {
        shard: Some(probe.clone()),
        writes: vec![pb::DocumentWrite {
            doc_id: format!("d{n}"),
            delete: false,
            chunks: vec![pb::ChunkWithVector {
                chunk: Some(pb::Chunk {
                    chunk_id: format!("d{n}#0"),
                    doc_id: format!("d{n}"),
                    text: "x".into(),
                    metadata_json: String::new(),
                }),
                vector: vec![1.0, 0.0],
            }],
        }],
        ..Default::default()
    };
    let mut n1 = rt.block_on(NodeClient::connect(format!("http://{g1}"))).unwrap();
    rt.block_on(n1.open_shard(pb::OpenShardRequest { shard: Some(probe.clone()), dimension: 2, ..Default::default() }))
        .unwrap();
    rt.block_on(n1.shard_write(write(1))).unwrap();

    // Cut n1 off from etcd: it leaves the membership after its lease (2 s) and fences writes.
    cut.store(true, Ordering::SeqCst);
    let t = Instant::now();
    wait_for("n1 to be removed", Duration::from_secs(15), || {
        // Gone from membership (it holds no placed replica, so it is not listed at all).
        !status(&c1)["nodes"].as_array().unwrap().iter().any(|n| n["id"] == "n1")
    });
    eprintln!("n1 removed {:.1} s after the cut", t.elapsed().as_secs_f64());
    wait_for("n1 to fence writes", Duration::from_secs(10), || {
        rt.block_on(n1.shard_write(write(2)))
            .is_err_and(|e| e.code() == tonic::Code::Unavailable && e.message().contains("membership"))
    });

    // Reconnect: it rejoins and accepts writes again.
    cut.store(false, Ordering::SeqCst);
    let t = Instant::now();
    wait_for("n1 to rejoin", Duration::from_secs(30), || alive(&status(&c1)) == both);
    eprintln!("n1 rejoined {:.1} s after reconnecting", t.elapsed().as_secs_f64());
    let r = rt.block_on(n1.shard_write(write(3))).unwrap().into_inner();
    assert_eq!(r.sequence, 2, "the fenced write was not applied");
}
