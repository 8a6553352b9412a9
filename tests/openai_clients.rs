//! The OpenAI-compatible API with real clients: the official `openai` Python
//! package and LangChain (`langchain-openai`), pinned in tests/python/requirements.txt
//! and installed into an isolated venv by tests/python/setup.sh, run
//! tests/python/openai_clients.py against a real `tessera up`.
mod common;

use std::process::Command;

use common::Server;

#[test]
fn openai_and_langchain_clients_work_against_tessera() {
    let Some(models) = common::models() else { return };
    let python = common::workspace().join("tests/python");
    let setup = Command::new("bash").arg(python.join("setup.sh")).status().expect("run tests/python/setup.sh");
    if !setup.success() {
        assert!(!common::in_ci(), "tests/python/setup.sh failed under CI");
        eprintln!("skipping: could not install the Python clients (no PyPI access?)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    common::write_command_docs(&tmp.path().join("docs"));
    let server = Server::start(&tmp.path().join("data"), &models);
    server.cli_ok(&["ingest", "--collection", "docs", tmp.path().join("docs").to_str().unwrap()]);
    let out = Command::new(python.join(".venv/bin/python"))
        .arg(python.join("openai_clients.py"))
        .arg(format!("http://{}/v1", server.http))
        .arg("docs")
        .output()
        .expect("run openai_clients.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "client checks failed:\n{stdout}\n{stderr}\nserver log:\n{}", server.log_text());
    assert!(stdout.contains("all OpenAI and LangChain client checks passed"), "{stdout}");
}
