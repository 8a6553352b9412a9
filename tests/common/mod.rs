//! Starting a real `tessera up` process on free ports with a temp data dir.
#![allow(dead_code)]
pub mod browser;
pub mod cluster;
pub mod otlp;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The models folder, or None (skip) outside CI when the models are absent.
pub fn models() -> Option<PathBuf> {
    let dir = std::env::var_os("TESSERA_MODELS").map(PathBuf::from).unwrap_or_else(|| workspace().join("models"));
    if dir.join("all-MiniLM-L6-v2/model.safetensors").exists() {
        return Some(dir);
    }
    assert!(!in_ci(), "models missing at {} under CI: run scripts/fetch-models.sh", dir.display());
    eprintln!("skipping: models missing at {} (run scripts/fetch-models.sh)", dir.display());
    None
}

/// The optional Gemma 3 GGUF under `models`, or None (skip) outside CI when
/// absent; CI fetches it (scripts/test.sh).
pub fn gemma(models: &Path) -> Option<PathBuf> {
    let path = models.join("gemma-3-270m/gemma-3-270m-q4_k_m.gguf");
    if path.exists() {
        return Some(path);
    }
    assert!(!in_ci(), "{} missing under CI: run scripts/fetch-models.sh models --with gemma3", path.display());
    eprintln!("skipping: {} missing (run scripts/fetch-models.sh models --with gemma3)", path.display());
    None
}

/// A loopback port nothing listens on, below the kernel's ephemeral range
/// (32768-60999 on Linux). Ports from `bind(:0)` come from that range, where any
/// outgoing connection (a node to etcd, the CLI to a coordinator) may take one as
/// its source port between the test choosing it and the child binding it; a node
/// that cannot bind never joins (a CI run waited 90 s for three nodes). Each test
/// process walks its own stretch (by pid), threads share one counter.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = (std::process::id() * 97) % SPAN;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < SPAN, "no free loopback port left below the ephemeral range");
        let port = (LOW + (start + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A running `tessera up`.
pub struct Server {
    child: Option<Child>,
    pub grpc: String,
    pub http: String,
    pub data_dir: PathBuf,
    models: PathBuf,
    log: PathBuf,
    extra: Vec<String>,
}

impl Server {
    /// Starts a server over `data_dir` and waits until /healthz answers 200.
    pub fn start(data_dir: &Path, models: &Path) -> Server {
        Self::start_with(data_dir, models, &[])
    }

    /// Like [`Server::start`], with extra `tessera up` arguments.
    pub fn start_with(data_dir: &Path, models: &Path, extra: &[&str]) -> Server {
        let grpc = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        let mut s = Server {
            child: None,
            grpc,
            http,
            data_dir: data_dir.to_path_buf(),
            models: models.to_path_buf(),
            log: data_dir.with_extension("log"),
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(["up", "--data-dir"])
            .arg(&self.data_dir)
            .arg("--models")
            .arg(&self.models)
            .args(["--grpc", &self.grpc, "--http", &self.http])
            .args(&self.extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start tessera up");
        self.child = Some(child);
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if http_get(&self.http, "/healthz").is_some_and(|(code, _)| code == 200) {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("tessera up exited with {status}; log:\n{}", self.log_text());
                }
            }
            assert!(Instant::now() < deadline, "tessera up not healthy in time; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The internal Node service's loopback address, read from the start-up log
    /// line (it is an ephemeral port, never on the public listener).
    pub fn internal_url(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(addr) = serving_field(&self.log_text(), "internal=") {
                return format!("http://{addr}");
            }
            assert!(Instant::now() < deadline, "no start-up line in the log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("server running")
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// kill -9, then start again on the same ports and data.
    pub fn kill_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        self.spawn();
    }

    /// SIGTERM, wait for a clean exit (asserted), then start again.
    pub fn stop_and_restart(&mut self) {
        self.terminate();
        self.spawn();
    }

    /// SIGTERM and wait; asserts the process exited successfully.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id().to_string();
            Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            let status = c.wait().unwrap();
            assert!(status.success(), "unclean exit {status}; log:\n{}", self.log_text());
        }
    }

    /// Runs a client command of the binary against this server.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .env("TESSERA_SERVER", self.url())
            .output()
            .expect("run tessera")
    }

    /// Like [`Server::cli`], asserting success and returning stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "tessera {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `tessera search --json`, parsed.
    pub fn search_json(&self, collection: &str, extra: &[&str], query: &str) -> serde_json::Value {
        let mut args = vec!["search", "--collection", collection, "--json"];
        args.extend_from_slice(extra);
        args.push(query);
        serde_json::from_str(&self.cli_ok(&args)).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A minimal HTTP/1.0 GET (status code and body), None when nothing answers.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    http_get_with(addr, path, None)
}

/// [`http_get`] with an `authorization: Bearer KEY` header.
pub fn http_get_with(addr: &str, path: &str, key: Option<&str>) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let auth = key.map(|k| format!("authorization: Bearer {k}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((code, body))
}

/// Doc ids of a `--json` search result, best first.
pub fn doc_ids(result: &serde_json::Value) -> Vec<String> {
    result["hits"].as_array().unwrap().iter().map(|h| h["doc_id"].as_str().unwrap().to_string()).collect()
}

const CP: &str = "# cp: copy files and directories\n\n`cp SOURCE DEST` copies a file. To copy a whole directory with everything \
inside it, use the recursive flag: `cp -r src_dir dest_dir`. Without -r, cp refuses to copy a directory.\n\n\
`cp -p` preserves the mode, ownership and timestamps (the file permissions) of the files it copies; `cp -a` combines -r and -p.\n";
const TAR: &str = "# tar: archives\n\n`tar -czf out.tar.gz dir` packs a directory into a gzip-compressed archive; \
`tar -xzf out.tar.gz` unpacks it again. Use -v to list the files while working.\n";
const KILL: &str = "# kill: signals\n\n`kill PID` sends SIGTERM to a process so it can shut down cleanly; \
`kill -9 PID` sends SIGKILL, which cannot be caught.\n";
const ZH: &str =
    "# 磁盘空间\n\n使用 `df -h` 查看每个文件系统的剩余空间，使用 `du -sh 目录` 查看一个目录占用了多少空间。\n";

/// A small folder of command docs (English and Chinese) whose answers tests know.
pub fn write_command_docs(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in [("cp.md", CP), ("tar.md", TAR), ("kill.md", KILL), ("disk-zh.md", ZH)] {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

#[allow(unused_imports)]
pub use tessera_node::load::testing::tiny_pdf;

/// A minimal HTTP/1.0 POST of a JSON body: status code and body.
pub fn http_post(addr: &str, path: &str, body: &str) -> (u16, String) {
    http_post_with_headers(addr, path, &[], body)
}

/// Like [`http_post`], with extra request headers.
pub fn http_post_with_headers(addr: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let code = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// A field of the "tessera up: serving" log line, colour codes removed.
fn serving_field(log: &str, field: &str) -> Option<String> {
    let mut plain = String::new();
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            plain.push(c);
        }
    }
    let line = plain.lines().rev().find(|l| l.contains("tessera up: serving"))?;
    line.split(field).nth(1).and_then(|r| r.split_whitespace().next()).map(str::to_string)
}
