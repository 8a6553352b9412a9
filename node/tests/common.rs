//! Locating the models and the shared reference fixtures for tests.
#![allow(dead_code)]
use std::path::PathBuf;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// True under CI, where a missing model or fixture is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The default embedding model folder, or None (skip) outside CI when absent.
pub fn minilm_dir() -> Option<PathBuf> {
    let base = std::env::var_os("TESSERA_MODELS").map(PathBuf::from).unwrap_or_else(|| workspace().join("models"));
    let dir = base.join("all-MiniLM-L6-v2");
    if dir.join("model.safetensors").exists() {
        return Some(dir);
    }
    assert!(!in_ci(), "model missing at {} under CI: run scripts/fetch-models.sh", dir.display());
    eprintln!("skipping: {} missing (run scripts/fetch-models.sh)", dir.display());
    None
}

/// A file of ../shared/fixtures, or None (skip) outside CI when absent.
pub fn fixture(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("TESSERA_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("../shared/fixtures"));
    let path = dir.join(name);
    if path.exists() {
        return Some(path);
    }
    assert!(!in_ci(), "fixture missing at {} under CI", path.display());
    eprintln!("skipping: fixture {} missing", path.display());
    None
}

/// A file under the models folder, or None (skip) outside CI when absent;
/// `fetch` is the command that brings it.
fn model_file(rel: &str, fetch: &str) -> Option<PathBuf> {
    let base = std::env::var_os("TESSERA_MODELS").map(PathBuf::from).unwrap_or_else(|| workspace().join("models"));
    let path = base.join(rel);
    if path.exists() {
        return Some(path);
    }
    assert!(!in_ci(), "model missing at {} under CI: run {fetch}", path.display());
    eprintln!("skipping: {} missing (run {fetch})", path.display());
    None
}

/// The default GGUF chat model, or None (skip) outside CI when absent.
pub fn smollm_path() -> Option<PathBuf> {
    model_file("SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf", "scripts/fetch-models.sh")
}

/// The optional Gemma 3 GGUF, or None (skip) outside CI when absent; CI
/// fetches it (scripts/test.sh).
pub fn gemma_path() -> Option<PathBuf> {
    model_file("gemma-3-270m/gemma-3-270m-q4_k_m.gguf", "scripts/fetch-models.sh models --with gemma3")
}

/// A reference made by a script of this project (tests/fixtures), e.g. from llama.cpp.
pub fn project_fixture(name: &str) -> PathBuf {
    workspace().join("tests/fixtures").join(name)
}
