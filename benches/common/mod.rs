//! Shared pieces of the bench binaries: a deterministic RNG, a text generator
//! and latency statistics. No external benchmark harness: each bench prints a
//! Markdown table that goes into BENCHMARKS.md as is.
#![allow(dead_code)]
use std::path::PathBuf;
use std::time::Duration;

/// xorshift64*: deterministic, so every run measures the same texts.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn gaussian(&mut self) -> f32 {
        // Box-Muller.
        let u1 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 + 1e-12;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

const WORDS: &[&str] = &[
    "shard",
    "index",
    "vector",
    "query",
    "embedding",
    "cluster",
    "node",
    "replica",
    "leader",
    "follower",
    "latency",
    "throughput",
    "batch",
    "token",
    "model",
    "prompt",
    "context",
    "window",
    "cache",
    "memory",
    "session",
    "stream",
    "request",
    "response",
    "server",
    "client",
    "retry",
    "deadline",
    "timeout",
    "failover",
    "snapshot",
    "log",
    "sequence",
    "commit",
    "durable",
    "flush",
    "disk",
    "file",
    "directory",
    "copy",
    "move",
    "delete",
    "permission",
    "owner",
    "group",
    "network",
    "packet",
    "route",
    "address",
    "port",
    "socket",
    "protocol",
    "encrypt",
    "certificate",
    "key",
    "secret",
    "database",
    "table",
    "row",
    "column",
    "schema",
    "migration",
    "backup",
    "restore",
    "compress",
    "archive",
    "search",
    "rank",
    "score",
    "filter",
    "metadata",
    "document",
    "chunk",
    "split",
    "overlap",
    "loader",
    "parser",
    "format",
    "json",
    "csv",
    "html",
    "markdown",
    "pdf",
    "language",
    "english",
    "chinese",
    "translate",
    "summary",
    "answer",
    "question",
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "for",
    "with",
    "on",
    "that",
    "by",
    "this",
    "from",
    "when",
    "after",
    "before",
    "every",
    "each",
    "all",
    "some",
    "many",
    "fast",
    "slow",
    "large",
    "small",
    "new",
    "old",
    "first",
    "last",
    "向量",
    "检索",
    "数据库",
    "索引",
    "分片",
    "副本",
    "模型",
    "会话",
    "内存",
    "延迟",
    "吞吐",
    "文档",
    "查询",
    "集群",
];

/// A sentence-like string of about `words` words.
pub fn sentence(rng: &mut Rng, words: usize) -> String {
    let mut s = String::new();
    for i in 0..words {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[rng.below(WORDS.len())]);
    }
    s.push('.');
    s
}

/// Text of about `chars` characters made of sentences.
pub fn passage(rng: &mut Rng, chars: usize) -> String {
    let mut s = String::new();
    while s.chars().count() < chars {
        let n = 6 + rng.below(12);
        s.push_str(&sentence(rng, n));
        s.push(' ');
    }
    s.trim_end().to_string()
}

/// p-th percentile (0..=100) of durations, in milliseconds.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

pub fn models_dir() -> PathBuf {
    std::env::var_os("TESSERA_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"))
}

/// `--name value` from the bench's own arguments.
pub fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A `tessera up` process on free loopback ports with a temporary data dir; killed on drop.
pub struct UpProcess {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for UpProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `tessera up` (the bench's own binary) and waits until its gRPC API answers.
pub async fn start_up() -> (UpProcess, tessera_proto::v1::tessera_client::TesseraClient<tonic::transport::Channel>) {
    use tessera_proto::v1 as pb;
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["up", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--models")
        .arg(models_dir())
        .args(["--grpc", &grpc, "--http", &http])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://{grpc}");
    let client = loop {
        if let Ok(c) = pb::tessera_client::TesseraClient::connect(url.clone()).await {
            if c.clone().list_collections(pb::ListCollectionsRequest {}).await.is_ok() {
                break c;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    (UpProcess { child, _dir: dir }, client)
}

/// Searches `queries` over `clients` concurrent gRPC clients (queries dealt round
/// robin); returns (QPS, p50 ms, p99 ms).
pub async fn search_load(
    client: &tessera_proto::v1::tessera_client::TesseraClient<tonic::transport::Channel>,
    collection: &str,
    queries: &[String],
    mode: tessera_proto::v1::SearchMode,
    clients: usize,
) -> (f64, f64, f64) {
    use tessera_proto::v1 as pb;
    let start = std::time::Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|k| {
            let mut c = client.clone();
            let qs: Vec<String> = queries.iter().skip(k).step_by(clients).cloned().collect();
            let collection = collection.to_string();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                for query in qs {
                    let t = std::time::Instant::now();
                    let req = pb::SearchRequest {
                        collection: collection.clone(),
                        query,
                        top_k: 10,
                        mode: mode as i32,
                        ..Default::default()
                    };
                    c.search(req).await.unwrap();
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    (all.len() as f64 / secs, percentile_ms(&all, 50.0), percentile_ms(&all, 99.0))
}
