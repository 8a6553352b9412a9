//! API keys on a real `tessera up`: no key, a wrong key and a too-weak key are
//! refused over gRPC (the CLI) and HTTP, probes stay open, and SIGHUP swaps
//! the key file.
mod common;

use std::time::Duration;

use common::{http_get_with, Server};

const ADMIN: &str = "admin-0123456789abcdef";
const WRITER: &str = "writer-0123456789abcdef";
const READER: &str = "reader-0123456789abcdef";

fn cli(server: &Server, key: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut all: Vec<&str> = args.to_vec();
    if let Some(k) = key {
        all.extend(["--api-key", k]);
    }
    let out = server.cli(&all);
    (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout))
}

#[test]
fn keys_roles_probes_and_reload() {
    let Some(models) = common::models() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    std::fs::write(
        &keys,
        format!("# test keys\n{ADMIN} acme admin\n{WRITER} acme read-write\n{READER} acme read-only\n"),
    )
    .unwrap();
    let server = Server::start_with(&tmp.path().join("data"), &models, &["--api-keys", keys.to_str().unwrap()]);

    // gRPC through the CLI.
    let (ok, out) = cli(&server, None, &["collections", "list"]);
    assert!(!ok && out.contains("Unauthenticated") && out.contains("missing API key"), "{out}");
    let (ok, out) = cli(&server, Some("wrong-0123456789abcdef"), &["collections", "list"]);
    assert!(!ok && out.contains("Unauthenticated") && out.contains("invalid API key"), "{out}");
    let (ok, out) = cli(&server, Some(READER), &["collections", "create", "docs"]);
    assert!(!ok && out.contains("PermissionDenied") && out.contains("read-only"), "{out}");
    assert!(cli(&server, Some(WRITER), &["collections", "create", "docs"]).0);
    let doc = tmp.path().join("note.md");
    std::fs::write(&doc, "Keys are rotated every ninety days. 密钥每九十天轮换一次。").unwrap();
    let (ok, out) = cli(&server, Some(WRITER), &["ingest", "--collection", "docs", doc.to_str().unwrap()]);
    assert!(ok && out.contains("stored 1 documents"), "{out}");
    let (ok, out) =
        cli(&server, Some(READER), &["search", "--collection", "docs", "--json", "how often are keys rotated"]);
    assert!(ok && out.contains("note.md"), "{out}");
    let (ok, out) = cli(&server, Some(WRITER), &["status"]);
    assert!(!ok && out.contains("PermissionDenied"), "{out}");
    assert!(cli(&server, Some(ADMIN), &["status"]).0);

    // HTTP: probes open, the OpenAI API needs a key, metrics an admin key.
    let code = |path: &str, key: Option<&str>| http_get_with(&server.http, path, key).map(|(c, _)| c);
    assert_eq!(code("/healthz", None), Some(200));
    assert_eq!(code("/readyz", None), Some(200));
    assert_eq!(code("/v1/models", None), Some(401));
    assert_eq!(code("/v1/models", Some(READER)), Some(200));
    assert_eq!(code("/metrics", None), Some(401));
    assert_eq!(code("/metrics", Some(READER)), Some(403));
    assert_eq!(code("/metrics", Some(ADMIN)), Some(200));
    let (_, body) = http_get_with(&server.http, "/v1/models", Some("nope-0123456789abcdef")).unwrap();
    assert!(body.contains("invalid_api_key"), "{body}");

    // SIGHUP: the reader key is replaced; a broken file later changes nothing.
    const NEW_READER: &str = "reader2-0123456789abcdef";
    std::fs::write(&keys, format!("{ADMIN} acme admin\n{NEW_READER} acme read-only\n")).unwrap();
    let hup = |pid: u32| {
        assert!(std::process::Command::new("kill").args(["-HUP", &pid.to_string()]).status().unwrap().success())
    };
    hup(server.pid());
    common::cluster::wait_for("the new key file", Duration::from_secs(10), || {
        cli(&server, Some(NEW_READER), &["collections", "list"]).0
    });
    assert!(!cli(&server, Some(READER), &["collections", "list"]).0, "the old key is gone");
    std::fs::write(&keys, "not a key file\n").unwrap();
    hup(server.pid());
    std::thread::sleep(Duration::from_millis(500));
    assert!(cli(&server, Some(NEW_READER), &["collections", "list"]).0, "a broken file keeps the keys in force");
    assert!(server.log_text().contains("API key file not re-read"), "{}", server.log_text());
}
