//! Cluster processes for tests: etcd from Debian's etcd-server on free loopback
//! ports, `tessera node` and `tessera coordinator` processes, CLI helpers.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use super::free_port;

/// A child process killed on drop, its stderr in a log file.
pub struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(cmd: &mut Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd.stdout(Stdio::null()).stderr(file).spawn().expect("spawn");
        Proc { child: Some(child), log }
    }
    /// True once the process has exited by itself.
    pub fn exited(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))))
    }
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn etcd(dir: &Path) -> Option<(Proc, String)> {
    if Command::new("etcd").arg("--version").output().is_err() {
        assert!(!super::in_ci(), "etcd missing under CI (scripts/setup.sh installs etcd-server)");
        eprintln!("skipping: no etcd binary (run scripts/setup.sh)");
        return None;
    }
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let p = Proc::spawn(
        Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args(["--initial-cluster", &format!("default=http://127.0.0.1:{peer}")]),
        dir.join("etcd.log"),
    );
    // Nodes and coordinators check etcd once at start: answer only when it is serving.
    let addr = url.trim_start_matches("http://").to_string();
    wait_for("etcd", Duration::from_secs(20), || {
        super::http_get(&addr, "/health").is_some_and(|(code, body)| code == 200 && body.contains("true"))
    });
    Some((p, url))
}

/// A `tessera coordinator` on `grpc` (HTTP on a free port), its log under `dir`.
pub fn coordinator(dir: &Path, etcd: &str, grpc: &str, name: &str) -> Proc {
    let http = format!("127.0.0.1:{}", free_port());
    Proc::spawn(
        tessera().args(["coordinator", "--etcd", etcd, "--grpc", grpc, "--http", &http]),
        dir.join(format!("{name}.log")),
    )
}

pub fn tessera() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"));
    c.env("RUST_LOG", "info");
    c
}

pub fn node(dir: &Path, etcd: &str, id: &str, roles: &str, grpc: &str, models: &Path) -> Proc {
    node_with(dir, etcd, id, roles, grpc, models, &[])
}

/// Like [`node`], with extra `tessera node` arguments.
pub fn node_with(dir: &Path, etcd: &str, id: &str, roles: &str, grpc: &str, models: &Path, extra: &[&str]) -> Proc {
    Proc::spawn(
        tessera()
            .args(["node", "--etcd", etcd, "--id", id, "--roles", roles, "--grpc", grpc, "--lease-ttl", "2"])
            .arg("--data-dir")
            .arg(dir.join(id))
            .arg("--models")
            .arg(models)
            .args(extra),
        dir.join(format!("{id}-{}.log", free_port())),
    )
}

pub fn cli(server: &str, args: &[&str]) -> Output {
    tessera().args(args).env("TESSERA_SERVER", format!("http://{server}")).output().unwrap()
}

pub fn cli_ok(server: &str, args: &[&str]) -> String {
    let out = cli(server, args);
    assert!(out.status.success(), "tessera {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

pub fn status(server: &str) -> Value {
    serde_json::from_str(&cli_ok(server, &["status", "--json"])).unwrap()
}

pub fn alive(status: &Value) -> Vec<(String, bool)> {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap().to_string(), n["alive"].as_bool().unwrap()))
        .collect()
}

/// Waits until every node of `nodes` logs that it serves and the coordinator
/// at `coordinator` lists each of `ids` in its status.
pub fn wait_cluster(coordinator: &str, nodes: &[&Proc], ids: &[&str]) {
    wait_for("the nodes serving", Duration::from_secs(120), || {
        nodes.iter().all(|n| n.log().contains("tessera node: serving"))
    });
    wait_for("the nodes in the coordinator", Duration::from_secs(30), || {
        let status = String::from_utf8_lossy(&cli(coordinator, &["status", "--json"]).stdout).to_string();
        ids.iter().all(|id| status.contains(&format!("\"{id}\"")))
    });
}

pub fn wait_for(what: &str, timeout: Duration, ok: impl FnMut() -> bool) {
    wait_for_procs(what, timeout, std::iter::empty(), ok)
}

/// Like [`wait_for`], for a condition on running processes: a process that
/// exits fails the wait at once, and a timeout shows the end of every log, so
/// a failure says why instead of only how long it waited.
pub fn wait_for_procs<'a>(
    what: &str,
    timeout: Duration,
    procs: impl IntoIterator<Item = &'a mut Proc>,
    mut ok: impl FnMut() -> bool,
) {
    let mut procs: Vec<&mut Proc> = procs.into_iter().collect();
    let tails = |procs: &[&mut Proc]| {
        procs.iter().map(|p| format!("--- {}\n{}", p.log.display(), tail(&p.log(), 30))).collect::<Vec<_>>().join("\n")
    };
    let deadline = Instant::now() + timeout;
    while !ok() {
        for p in procs.iter_mut() {
            if p.exited() {
                panic!("waiting for {what}: {} exited\n{}", p.log.display(), tail(&p.log(), 40));
            }
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}\n{}", tails(&procs));
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The id of the best BM25 hit for `query` in collection `docs`, through a coordinator client.
pub async fn bm25_top(
    client: &mut tessera_proto::v1::tessera_client::TesseraClient<tonic::transport::Channel>,
    query: &str,
) -> Option<String> {
    use tessera_proto::v1 as pb;
    let req = pb::SearchRequest {
        collection: "docs".into(),
        query: query.to_string(),
        top_k: 1,
        mode: pb::SearchMode::Bm25 as i32,
        ..Default::default()
    };
    client.search(req).await.unwrap().into_inner().hits.into_iter().next().map(|h| h.doc_id)
}
