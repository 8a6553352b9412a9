//! The ask chain through a real `tessera up` with the real models: answers cite
//! the document that holds the answer, follow-ups use the session's history,
//! every turn survives kill -9, templates and output parsers work from the CLI,
//! summary memory writes a summary, and bad input gets clear errors.
mod common;

use std::time::{Duration, Instant};

use common::Server;
use serde_json::Value;

fn ask_json(server: &Server, args: &[&str]) -> Value {
    let mut all = vec!["ask", "--collection", "docs", "--top-k", "2", "--max-tokens", "24", "--json"];
    all.extend_from_slice(args);
    let out = server.cli_ok(&all);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn source_docs(v: &Value) -> Vec<String> {
    v["sources"].as_array().unwrap().iter().map(|s| s["doc_id"].as_str().unwrap().to_string()).collect()
}

fn show(server: &Server, session: &str) -> Value {
    serde_json::from_str(&server.cli_ok(&["sessions", "show", session, "--json"])).unwrap()
}

fn fails_with(server: &Server, args: &[&str], needles: &[&str]) {
    let out = server.cli(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{args:?} should fail; stdout: {}", String::from_utf8_lossy(&out.stdout));
    for n in needles {
        assert!(err.contains(n), "{args:?}: expected '{n}' in: {err}");
    }
}

#[test]
fn answers_cite_sources_follow_ups_use_history_and_turns_survive_kill_9() {
    let Some(models) = common::models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    common::write_command_docs(&tmp.path().join("docs"));
    let mut server = Server::start(&tmp.path().join("data"), &models);
    server.cli_ok(&["ingest", "--collection", "docs", tmp.path().join("docs").to_str().unwrap()]);

    let q1 = "What does the -r flag of cp do?";
    let first = ask_json(&server, &["--session", "alice", q1]);
    assert_eq!(source_docs(&first)[0], "cp.md", "{first}");
    assert!(!first["answer"].as_str().unwrap().trim().is_empty(), "{first}");
    assert_eq!(first["session"], "alice");
    assert_eq!(first["history_messages"], 0);
    assert_eq!(first["standalone_question"], q1, "no history, no rewrite");
    let t = &first["timings_ms"];
    assert!(t["total"].as_f64().unwrap() >= t["first_token"].as_f64().unwrap(), "{t}");
    assert!(t["first_token"].as_f64().unwrap() > 0.0, "{t}");

    // A follow-up that only makes sense with the history.
    let q2 = "And how do I keep file permissions?";
    let second = ask_json(&server, &["--session", "alice", q2]);
    assert_eq!(second["history_messages"], 2, "the first turn went into the prompt: {second}");
    assert_ne!(second["standalone_question"], q2, "the follow-up was rewritten: {second}");
    assert!(source_docs(&second).contains(&"cp.md".to_string()), "{second}");

    let before = show(&server, "alice");
    let msgs = before["messages"].as_array().unwrap();
    let roles: Vec<&str> = msgs.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    assert_eq!(msgs[0]["content"], q1);
    assert_eq!(msgs[1]["content"], first["answer"]);
    assert_eq!(msgs[2]["content"], q2);

    // Chinese question, another session.
    let zh = ask_json(&server, &["--session", "张三", "如何查看目录占用了多少磁盘空间？"]);
    assert_eq!(source_docs(&zh)[0], "disk-zh.md", "{zh}");

    // Every acknowledged turn survives kill -9.
    server.kill_and_restart();
    assert_eq!(show(&server, "alice"), before);
    let list: Value = serde_json::from_str(&server.cli_ok(&["sessions", "list", "--json"])).unwrap();
    let sessions: Vec<(String, u64)> = list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["session"].as_str().unwrap().to_string(), s["messages"].as_u64().unwrap()))
        .collect();
    assert_eq!(sessions, vec![("alice".to_string(), 4), ("张三".to_string(), 2)]);
    // The same list a page at a time over gRPC, and a page too large refused.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use tessera_proto::v1 as pb;
        let mut c = tessera_proto::v1::tessera_client::TesseraClient::connect(server.url()).await.unwrap();
        let page =
            |token: &str| pb::ListSessionsRequest { page_size: 1, page_token: token.into(), ..Default::default() };
        let first = c.list_sessions(page("")).await.unwrap().into_inner();
        assert_eq!((first.sessions[0].session.as_str(), first.next_page_token.as_str()), ("alice", "alice"));
        let second = c.list_sessions(page("alice")).await.unwrap().into_inner();
        assert_eq!(second.sessions.iter().map(|s| s.session.as_str()).collect::<Vec<_>>(), vec!["张三"]);
        let last = c.list_sessions(page("张三")).await.unwrap().into_inner();
        assert!(last.sessions.is_empty() && last.next_page_token.is_empty(), "{last:?}");
        let big = pb::ListSessionsRequest { page_size: 5000, ..Default::default() };
        assert_eq!(c.list_sessions(big).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    });

    // The history is used after the restart too.
    let third = ask_json(&server, &["--session", "alice", "Can it also copy links?"]);
    assert_eq!(third["history_messages"], 4, "{third}");

    let cleared = server.cli_ok(&["sessions", "clear", "alice", "--json"]);
    assert!(cleared.contains("\"messages\":6"), "{cleared}");
    fails_with(&server, &["sessions", "show", "alice"], &["NotFound", "alice"]);
}

#[test]
fn templates_parsers_summary_memory_and_bad_input() {
    let Some(models) = common::models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    common::write_command_docs(&tmp.path().join("docs"));
    let templates = tmp.path().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(templates.join("terse.j2"), "Context: {{ context }}\nIn a {{ tone }} way, answer: {{ question }}")
        .unwrap();
    let server = Server::start_with(&tmp.path().join("data"), &models, &["--templates", templates.to_str().unwrap()]);
    server.cli_ok(&["ingest", "--collection", "docs", tmp.path().join("docs").to_str().unwrap()]);
    let base = ["ask", "--collection", "docs", "--top-k", "1", "--max-tokens", "16"];
    let with = |extra: &[&str]| -> Vec<String> { base.iter().chain(extra).map(|s| s.to_string()).collect() };
    let run = |args: Vec<String>| server.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());

    // User template: a missing variable is named; given, the template is used.
    fails_with(
        &server,
        &with(&["--template", "terse", "How do I pack a folder?"]).iter().map(String::as_str).collect::<Vec<_>>(),
        &["InvalidArgument", "needs variable 'tone'"],
    );
    let out = run(with(&["--template", "terse", "--var", "tone=brief", "--json", "How do I pack a folder?"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sources"][0]["doc_id"], "tar.md", "{v}");

    // Output parsers: regex gives named groups; json gives a value or an error that carries the raw text.
    let out = run(with(&["--output", "regex", "--pattern", r"(?P<word>\w+)", "How do I stop a process?"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let parsed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(parsed["word"].as_str().is_some_and(|w| !w.is_empty()), "{parsed}");
    // A regex the grammar engine cannot constrain with (a word boundary) is
    // generated free and parsed as before, not refused.
    let out = run(with(&["--output", "regex", "--pattern", r"\b(?P<word>\w+)\b", "How do I stop a process?"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let parsed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(parsed["word"].as_str().is_some_and(|w| !w.is_empty()), "{parsed}");
    let out = run(with(&["--output", "list", "Which commands are documented?"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let items: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!items.as_array().unwrap().is_empty());
    // JSON under a schema (a file given to --json-schema) is generated
    // constrained: it always validates, no repair round trip, at temperature 1 too.
    let schema_file = tmp.path().join("answer.schema.json");
    std::fs::write(
        &schema_file,
        r#"{"type":"object","properties":{"command":{"type":"string"},"flags":{"type":"array","items":{"type":"string"}}},"required":["command","flags"]}"#,
    )
    .unwrap();
    for temperature in ["0", "1"] {
        let args = ["ask", "--collection", "docs", "--top-k", "1", "--output", "json", "--json-schema"];
        let out = run(args
            .iter()
            .copied()
            .chain([
                schema_file.to_str().unwrap(),
                "--temperature",
                temperature,
                "--max-tokens",
                "96",
                "Which command packs a folder?",
            ])
            .map(String::from)
            .collect());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["command"].is_string() && v["flags"].is_array(), "schema-checked output: {v}");
    }

    // Summary memory: older turns get summarised by the model (in the background).
    for q in ["How do I pack a folder?", "How do I unpack it?", "How do I list the files?"] {
        let out = run(with(&["--session", "sum", "--memory", "summary", "--window", "1", q]));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = show(&server, "sum");
        if s["summary"].as_str().is_some_and(|t| !t.trim().is_empty()) {
            assert_eq!(s["messages"].as_array().unwrap().len(), 6, "summaries never drop stored messages");
            break;
        }
        assert!(Instant::now() < deadline, "no summary was written: {s}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Interactive chat: one question, the history command, exit.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["chat", "--collection", "docs", "--session", "tty", "--top-k", "1", "--max-tokens", "8"])
        .env("TESSERA_SERVER", server.url())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all("How do I stop a process?\n/history\n/exit\n".as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("user: How do I stop a process?"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sources: kill.md#0"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(show(&server, "tty")["messages"].as_array().unwrap().len(), 2);

    // Bad input.
    fails_with(&server, &["sessions", "show", "nobody"], &["NotFound"]);
    fails_with(
        &server,
        &with(&["--template", "nope", "q?"]).iter().map(String::as_str).collect::<Vec<_>>(),
        &["InvalidArgument", "unknown template 'nope'"],
    );
    let long = "why ".repeat(3000);
    fails_with(
        &server,
        &with(&[long.as_str()]).iter().map(String::as_str).collect::<Vec<_>>(),
        &["InvalidArgument", "question is"],
    );
    fails_with(&server, &["ask", "--collection", "missing", "q?"], &["NotFound", "missing"]);
    fails_with(
        &server,
        &with(&["--output", "regex", "--pattern", "(", "q?"]).iter().map(String::as_str).collect::<Vec<_>>(),
        &["InvalidArgument", "regex"],
    );
    fails_with(
        &server,
        &with(&["--output", "json", "--schema", "{\"type\": 5}", "q?"]).iter().map(String::as_str).collect::<Vec<_>>(),
        &["InvalidArgument", "Schema"],
    );
    fails_with(
        &server,
        &with(&["--session", "bad\u{7}id", "q?"]).iter().map(String::as_str).collect::<Vec<_>>(),
        &["InvalidArgument", "control"],
    );
}
