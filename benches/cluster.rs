//! Cluster mode on this machine: etcd (Debian's etcd-server) and `tessera node` /
//! `tessera coordinator` processes on loopback.
//! - search QPS through one coordinator with 1, 2 and 3 shard nodes (3 shards);
//! - failover: a shard primary is killed with -9 under write + search load
//!   (replication 3, lease TTL 2 s); how long writes to it fail, how many searches fail;
//! - shard transfer throughput: a node copies a shard replica from another (Node/ShardTransfer).
//!
//! Run: cargo test --bench cluster -- [--docs 2000] [--queries 200]
mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{arg, models_dir, passage, search_load, sentence, Rng};
use tessera_proto::v1 as pb;
use tessera_proto::v1::node_client::NodeClient;
use tessera_proto::v1::tessera_client::TesseraClient;

fn port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str], dir: &Path) -> Kill {
    let bin = env!("CARGO_BIN_EXE_tessera");
    let _ = dir;
    Kill(
        Command::new(bin)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn start_node(dir: &Path, etcd: &str, id: &str, roles: &str) -> (Kill, String) {
    let grpc = format!("127.0.0.1:{}", port());
    let data = dir.join(id);
    let models = models_dir();
    let k = spawn(
        &[
            "node",
            "--etcd",
            etcd,
            "--id",
            id,
            "--roles",
            roles,
            "--grpc",
            &grpc,
            "--lease-ttl",
            "2",
            "--data-dir",
            data.to_str().unwrap(),
            "--models",
            models.to_str().unwrap(),
        ],
        dir,
    );
    (k, grpc)
}

async fn client(addr: &str) -> TesseraClient<tonic::transport::Channel> {
    loop {
        if let Ok(c) = TesseraClient::connect(format!("http://{addr}")).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_nodes(c: &mut TesseraClient<tonic::transport::Channel>, n: usize) {
    loop {
        if let Ok(s) = c.cluster_status(pb::ClusterStatusRequest {}).await {
            if s.get_ref().nodes.iter().filter(|x| x.alive).count() >= n {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn ingest(c: &mut TesseraClient<tonic::transport::Channel>, collection: &str, docs: &[pb::DocumentInput]) {
    for batch in docs.chunks(100) {
        c.ingest(pb::IngestRequest { collection: collection.into(), documents: batch.to_vec(), ..Default::default() })
            .await
            .unwrap();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let docs_n: usize = arg("--docs", 2000);
    let queries_n: usize = arg("--queries", 200);
    let dir = tempfile::tempdir().unwrap();
    let (cport, pport) = (port(), port());
    let etcd_url = format!("http://127.0.0.1:{cport}");
    let _etcd = Kill(
        Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.path().join("etcd"))
            .args(["--listen-client-urls", &etcd_url, "--advertise-client-urls", &etcd_url])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{pport}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{pport}")])
            .args(["--initial-cluster", &format!("default=http://127.0.0.1:{pport}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (run scripts/setup.sh)"),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut rng = Rng::new(5);
    let docs: Vec<pb::DocumentInput> = (0..docs_n)
        .map(|i| pb::DocumentInput { id: format!("doc-{i}"), text: passage(&mut rng, 400), ..Default::default() })
        .collect();
    let queries: Vec<String> = (0..queries_n).map(|_| sentence(&mut rng, 6)).collect();

    let caddr = format!("127.0.0.1:{}", port());
    let _coord = spawn(
        &["coordinator", "--etcd", &etcd_url, "--grpc", &caddr, "--http", &format!("127.0.0.1:{}", port())],
        dir.path(),
    );
    let mut c = client(&caddr).await;

    // Search QPS with 1, 2, 3 shard nodes (a fresh collection each time, 3 shards, replication 1).
    println!("Search through one coordinator, {docs_n} documents of ~400 characters, 3 shards, replication 1, 4 concurrent clients, top_k 10:");
    println!();
    println!("| shard nodes | mode | QPS | p50 ms | p99 ms |");
    println!("|---:|---|---:|---:|---:|");
    let mut nodes = Vec::new();
    for n in 1..=3usize {
        nodes.push(start_node(dir.path(), &etcd_url, &format!("n{n}"), "loader,embedder,shard"));
        wait_nodes(&mut c, n).await;
        let name = format!("q{n}");
        c.create_collection(pb::CreateCollectionRequest {
            name: name.clone(),
            shards: 3,
            replication: 1,
            settings: None,
            ..Default::default()
        })
        .await
        .unwrap();
        ingest(&mut c, &name, &docs).await;
        for (label, mode) in [("vector", pb::SearchMode::Vector), ("bm25", pb::SearchMode::Bm25)] {
            let (q, p50, p99) = search_load(&c, &name, &queries, mode, 4).await;
            println!("| {n} | {label} | {q:.0} | {p50:.1} | {p99:.1} |");
        }
        c.drop_collection(pb::DropCollectionRequest { name }).await.unwrap();
    }
    println!();

    // Shard transfer throughput: n3 copies shard 0 of a fresh collection placed on n1/n2.
    c.create_collection(pb::CreateCollectionRequest {
        name: "t".into(),
        shards: 1,
        replication: 1,
        settings: None,
        ..Default::default()
    })
    .await
    .unwrap();
    ingest(&mut c, "t", &docs).await;
    let st = c.cluster_status(pb::ClusterStatusRequest {}).await.unwrap().into_inner();
    let primary = st.collections.iter().find(|x| x.name == "t").unwrap().shards[0].primary.clone();
    let source = st.nodes.iter().find(|x| x.id == primary).unwrap().address.clone();
    let target = nodes.iter().map(|(_, g)| g.clone()).find(|g| !source.ends_with(g.as_str())).unwrap();
    let mut tn = NodeClient::connect(format!("http://{target}")).await.unwrap();
    let t = Instant::now();
    let stats = tn
        .shard_transfer(pb::ShardTransferRequest {
            shard: Some(pb::ShardRef { collection: "t".into(), shard: 0 }),
            source_url: source,
        })
        .await
        .unwrap()
        .into_inner();
    let secs = t.elapsed().as_secs_f64();
    let mb = (docs_n * (400 + 384 * 4)) as f64 / 1e6;
    println!("Shard transfer (snapshot + install, one shard of {} documents / {} chunks, ~{mb:.1} MB of text and vectors): {secs:.2} s, {:.0} documents/s", stats.documents, stats.chunks, stats.documents as f64 / secs);
    println!();
    c.drop_collection(pb::DropCollectionRequest { name: "t".into() }).await.unwrap();

    // Failover under load: replication 3, kill the primary of shard 0.
    c.create_collection(pb::CreateCollectionRequest {
        name: "f".into(),
        shards: 2,
        replication: 3,
        settings: None,
        ..Default::default()
    })
    .await
    .unwrap();
    ingest(&mut c, "f", &docs[..200]).await;
    let st = c.cluster_status(pb::ClusterStatusRequest {}).await.unwrap().into_inner();
    let victim = st.collections.iter().find(|x| x.name == "f").unwrap().shards[0].primary.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killed = std::sync::Arc::new(std::sync::Mutex::new(None::<Instant>));
    let writer = {
        let (mut c, stop, killed) = (c.clone(), stop.clone(), killed.clone());
        tokio::spawn(async move {
            let (mut last_fail, mut fails, mut i) = (None::<f64>, 0, 0);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let d = pb::DocumentInput { id: format!("w{i}"), text: format!("write {i}"), ..Default::default() };
                let ok = c
                    .ingest(pb::IngestRequest { collection: "f".into(), documents: vec![d], ..Default::default() })
                    .await
                    .is_ok();
                if !ok {
                    fails += 1;
                    last_fail = killed.lock().unwrap().map(|t| t.elapsed().as_secs_f64());
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (fails, last_fail)
        })
    };
    let searcher = {
        let (mut c, stop) = (c.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut n, mut fails) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let r = c
                    .search(pb::SearchRequest {
                        collection: "f".into(),
                        query: "write".into(),
                        top_k: 5,
                        mode: pb::SearchMode::Bm25 as i32,
                        ..Default::default()
                    })
                    .await;
                n += 1;
                if r.is_err() {
                    fails += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (n, fails)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idx: usize = victim[1..].parse::<usize>().unwrap() - 1;
    let _ = nodes[idx].0 .0.kill();
    *killed.lock().unwrap() = Some(Instant::now());
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (wfails, last) = writer.await.unwrap();
    let (searches, sfails) = searcher.await.unwrap();
    println!("Failover (replication 3, write acks majority, lease TTL 2 s; kill -9 of shard 0's primary under load):");
    println!();
    println!("| writes failed | last failed write after the kill | searches | searches failed |");
    println!("|---:|---:|---:|---:|");
    println!("| {wfails} | {} | {searches} | {sfails} |", last.map(|s| format!("{s:.2} s")).unwrap_or("-".into()));
}
