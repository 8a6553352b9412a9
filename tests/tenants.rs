//! Tenants on a real `tessera up` with API keys: two tenants each create a
//! collection called `docs` and a session called `s1`; each sees, searches,
//! asks over and clears only its own, over gRPC (the CLI) and the OpenAI HTTP
//! API; no tenant can spell another's stored name; an admin key sees both.
mod common;

use common::{http_post_with_headers, Server};
use serde_json::Value;

const ADMIN: &str = "admin-0123456789abcdef";
const ACME: &str = "acme-writer-0123456789";
const GLOBEX: &str = "globex-writer-0123456789";

fn cli(server: &Server, key: &str, args: &[&str]) -> (bool, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--api-key", key]);
    let out = server.cli(&all);
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
}

fn cli_json(server: &Server, key: &str, args: &[&str]) -> Value {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--api-key", key]);
    let out = server.cli(&all);
    assert!(out.status.success(), "tessera {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Every string under `field` anywhere in `v`, sorted.
fn strings(v: &Value, field: &str) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(v: &Value, field: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match x.as_str() {
                        Some(s) if k == field => out.push(s.to_string()),
                        _ => walk(x, field, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, field, out)),
            _ => {}
        }
    }
    walk(v, field, &mut out);
    out.sort();
    out
}

#[test]
fn tenants_see_and_touch_only_their_own_collections_and_sessions() {
    let Some(models) = common::models() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let keys = tmp.path().join("keys");
    std::fs::write(&keys, format!("{ADMIN} ops admin\n{ACME} acme read-write\n{GLOBEX} globex read-write\n")).unwrap();
    let server = Server::start_with(&tmp.path().join("data"), &models, &["--api-keys", keys.to_str().unwrap()]);

    // The same collection name in two tenants, each with its own document.
    for (key, file, text) in [
        (ACME, "acme-plan.md", "The zebrafish project ships in March. 斑马鱼项目三月发布。"),
        (GLOBEX, "globex-plan.md", "The quokka project ships in June."),
    ] {
        let (ok, out) = cli(&server, key, &["collections", "create", "docs"]);
        assert!(ok, "{out}");
        let path = tmp.path().join(file);
        std::fs::write(&path, text).unwrap();
        let (ok, out) = cli(&server, key, &["ingest", "--collection", "docs", path.to_str().unwrap()]);
        assert!(ok && out.contains("stored 1 documents"), "{out}");
    }
    let names = |key: &str| strings(&cli_json(&server, key, &["collections", "list", "--json"]), "name");
    assert_eq!(names(ACME), vec!["docs"]);
    assert_eq!(names(GLOBEX), vec!["docs"]);
    assert_eq!(names(ADMIN), vec!["acme:docs", "globex:docs"]);

    // Search finds only the tenant's own document, even for the other's unique word.
    let search = |key: &str, q: &str| {
        let v = cli_json(&server, key, &["search", "--collection", "docs", "--mode", "bm25", "--json", q]);
        common::doc_ids(&v).join(" ")
    };
    assert!(search(ACME, "zebrafish project").contains("acme-plan.md"));
    let acme_sees = search(ACME, "quokka project");
    assert!(!acme_sees.contains("globex"), "{acme_sees}");
    assert!(search(GLOBEX, "quokka").contains("globex-plan.md"));
    assert!(!search(GLOBEX, "zebrafish 斑马鱼").contains("acme"));

    // Nobody spells another tenant's stored name; the admin may.
    let (ok, out) = cli(&server, ACME, &["search", "--collection", "globex:docs", "quokka"]);
    assert!(!ok && out.contains("InvalidArgument") && out.contains("':'"), "{out}");
    let (ok, out) = cli(&server, ACME, &["collections", "drop", "globex:docs"]);
    assert!(!ok && out.contains("InvalidArgument"), "{out}");
    assert!(strings(
        &cli_json(&server, ADMIN, &["search", "--collection", "globex:docs", "--json", "quokka"]),
        "doc_id"
    )
    .iter()
    .any(|d| d.contains("globex-plan.md")));

    // Sessions: the same id in both tenants holds two histories.
    for (key, question) in [(ACME, "When does zebrafish ship?"), (GLOBEX, "When does quokka ship?")] {
        let args = [
            "ask",
            "--collection",
            "docs",
            "--mode",
            "bm25",
            "--session",
            "s1",
            "--max-tokens",
            "2",
            "--json",
            question,
        ];
        let v = cli_json(&server, key, &args);
        assert_eq!(v["session"], "s1", "{v}");
    }
    let sessions = |key: &str| strings(&cli_json(&server, key, &["sessions", "list", "--json"]), "session");
    assert_eq!(sessions(ACME), vec!["s1"]);
    assert_eq!(sessions(GLOBEX), vec!["s1"]);
    assert_eq!(sessions(ADMIN), vec!["acme:s1", "globex:s1"]);
    let (ok, history) = cli(&server, ACME, &["sessions", "show", "s1"]);
    assert!(ok && history.contains("zebrafish") && !history.contains("quokka"), "{history}");
    let (ok, out) = cli(&server, ACME, &["sessions", "show", "globex:s1"]);
    assert!(!ok && out.contains("InvalidArgument"), "{out}");

    // The OpenAI API scopes the collection named in the body the same way.
    let chat = |key: &str, q: &str| {
        let body = serde_json::json!({
            "model": "default", "max_tokens": 1, "collection": "docs", "mode": "bm25",
            "messages": [{"role": "user", "content": q}],
        });
        let auth = format!("Bearer {key}");
        http_post_with_headers(&server.http, "/v1/chat/completions", &[("authorization", &auth)], &body.to_string())
    };
    let (code, body) = chat(GLOBEX, "quokka zebrafish project");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("globex-plan.md") && !body.contains("acme-plan.md"), "{body}");

    // Clearing and dropping touch only the tenant's own.
    assert!(cli(&server, ACME, &["sessions", "clear", "s1"]).0);
    assert_eq!(sessions(GLOBEX), vec!["s1"]);
    assert!(cli(&server, ACME, &["collections", "drop", "docs"]).0);
    assert!(names(ACME).is_empty());
    assert_eq!(names(GLOBEX), vec!["docs"]);
    assert!(search(GLOBEX, "quokka").contains("globex-plan.md"));
}
