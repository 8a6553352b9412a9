//! Cluster mode with real processes: an etcd server (Debian's etcd-server) on a
//! free loopback port, two `tessera node` processes with different roles and two
//! `tessera coordinator` processes. Collections, documents, sessions and
//! generation work through either coordinator; placement and membership show in
//! `tessera status`; a node killed with -9 leaves the membership after its lease
//! TTL, searches that need its shards then fail with a clear UNAVAILABLE (there
//! is no replication yet), and the restarted node rejoins with its data.
mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed on drop, its stderr in a log file.
struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(cmd: &mut Command, log: PathBuf) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd.stdout(Stdio::null()).stderr(file).spawn().expect("spawn");
        Proc { child: Some(child), log }
    }
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn etcd(dir: &Path) -> Option<(Proc, String)> {
    if Command::new("etcd").arg("--version").output().is_err() {
        assert!(!common::in_ci(), "etcd missing under CI (scripts/setup.sh installs etcd-server)");
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
    Some((p, url))
}

fn tessera() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"));
    c.env("RUST_LOG", "info");
    c
}

fn node(dir: &Path, etcd: &str, id: &str, roles: &str, grpc: &str, models: &Path) -> Proc {
    Proc::spawn(
        tessera()
            .args(["node", "--etcd", etcd, "--id", id, "--roles", roles, "--grpc", grpc, "--lease-ttl", "2"])
            .arg("--data-dir")
            .arg(dir.join(id))
            .arg("--models")
            .arg(models),
        dir.join(format!("{id}-{}.log", free_port())),
    )
}

fn cli(server: &str, args: &[&str]) -> Output {
    tessera().args(args).env("TESSERA_SERVER", format!("http://{server}")).output().unwrap()
}

fn cli_ok(server: &str, args: &[&str]) -> String {
    let out = cli(server, args);
    assert!(out.status.success(), "tessera {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn status(server: &str) -> Value {
    serde_json::from_str(&cli_ok(server, &["status", "--json"])).unwrap()
}

fn alive(status: &Value) -> Vec<(String, bool)> {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap().to_string(), n["alive"].as_bool().unwrap()))
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_nodes_two_coordinators_membership_placement_and_node_loss() {
    let Some(models) = common::models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let Some((_etcd, etcd_url)) = etcd(tmp.path()) else { return };
    common::write_command_docs(&tmp.path().join("docs"));
    // Nodes and coordinators check etcd once at start: wait until it answers.
    let etcd_addr = etcd_url.trim_start_matches("http://").to_string();
    wait_for("etcd", Duration::from_secs(20), || {
        common::http_get(&etcd_addr, "/health").is_some_and(|(code, body)| code == 200 && body.contains("true"))
    });
    let (g1, g2) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let _n1 = node(tmp.path(), &etcd_url, "n1", "loader,embedder,shard,session", &g1, &models);
    let mut n2 = node(tmp.path(), &etcd_url, "n2", "embedder,shard,model", &g2, &models);
    let (c1, c2) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let coordinator = |grpc: &str, name: &str| {
        Proc::spawn(
            tessera().args([
                "coordinator",
                "--etcd",
                &etcd_url,
                "--grpc",
                grpc,
                "--http",
                &format!("127.0.0.1:{}", free_port()),
            ]),
            tmp.path().join(format!("{name}.log")),
        )
    };
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
    let repl = cli(&c2, &["collections", "create", "other", "--replication", "2"]);
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
    assert!(!out.status.success() && err.contains("Unavailable") && err.contains("'n2', which is not alive"), "{err}");

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
