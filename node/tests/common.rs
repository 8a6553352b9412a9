//! Locating the models and the shared reference fixtures for tests.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::time::Duration;

use tessera_node::model::comm::Communicator;
use tessera_node::model::decoder::{RankModel, SeqStep};
use tessera_node::model::sampler::argmax;
use tessera_node::model::tcp::{GroupSecret, TcpCommunicator};

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

/// Communicators of a `world`-rank TCP group over loopback (each rank a thread here).
pub fn tcp_group(world: usize) -> Vec<Box<dyn Communicator>> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let secret = GroupSecret::new(b"the test group's shared secret").unwrap();
    let followers: Vec<_> = (1..world)
        .map(|r| {
            let secret = secret.clone();
            std::thread::spawn(move || {
                TcpCommunicator::follower(addr, r, world, &secret, Duration::from_secs(30)).unwrap()
            })
        })
        .collect();
    let mut comms: Vec<Box<dyn Communicator>> =
        vec![Box::new(TcpCommunicator::leader(listener, world, &secret, Duration::from_secs(30)).unwrap())];
    comms.extend(followers.into_iter().map(|h| Box::new(h.join().unwrap()) as Box<dyn Communicator>));
    comms
}

/// Greedy generation on the ranks of `comms`, returning rank 0's tokens and per-step logits.
pub fn greedy_on(
    path: &Path,
    comms: Vec<Box<dyn Communicator>>,
    prompt: &[u32],
    steps: usize,
) -> (Vec<u32>, Vec<Vec<f32>>) {
    let world = comms.len();
    let prompt = prompt.to_vec();
    let handles: Vec<_> = comms
        .into_iter()
        .map(|comm| {
            let path = path.to_path_buf();
            let prompt = prompt.clone();
            std::thread::spawn(move || {
                let mut model = RankModel::load(&path, comm.rank(), world).unwrap();
                let mut tokens = Vec::new();
                let mut all = Vec::new();
                let mut step = SeqStep { seq: 1, tokens: prompt.clone(), start: 0, adapter: None };
                for _ in 0..steps {
                    let logits = model.forward(std::slice::from_ref(&step), comm.as_ref()).unwrap();
                    // Every rank needs the next token: rank 0 picks it, all agree through a broadcast.
                    let mut next =
                        if comm.rank() == 0 { argmax(&logits[0]).to_le_bytes().to_vec() } else { Vec::new() };
                    comm.broadcast(&mut next, 0).unwrap();
                    let t = u32::from_le_bytes(next[..4].try_into().unwrap());
                    if comm.rank() == 0 {
                        all.push(logits[0].clone());
                    }
                    tokens.push(t);
                    step = SeqStep { seq: 1, tokens: vec![t], start: step.start + step.tokens.len(), adapter: None };
                }
                (tokens, all)
            })
        })
        .collect();
    let mut results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    results.swap_remove(0)
}
