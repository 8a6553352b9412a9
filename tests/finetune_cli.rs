//! `tessera finetune` as a user runs it: a real process training on the
//! facts fixture, stopped by Ctrl-C (SIGINT) mid-run. What must hold: it
//! stops after the step in flight, says so, exits 130, and leaves a
//! checkpoint that `--resume` continues from (the step count carries on, the
//! log is appended to), with the adapter written beside it.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// `tessera finetune` on the facts fixture with a small rank, `extra` appended.
fn finetune(models: &std::path::Path, out: &std::path::Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"));
    let data = common::workspace().join("tests/fixtures/peft_facts.jsonl");
    c.args(["finetune", "--data"]).arg(&data).arg("--out").arg(out).arg("--models").arg(models);
    c.args(["--rank", "2", "--batch-size", "1", "--eval-split", "0", "--max-seq-len", "64", "--json"]);
    c.args(extra);
    c
}

/// The JSON lines of a run's stdout that carry `key`.
fn lines_with(stdout: &str, key: &str) -> Vec<Value> {
    stdout.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).filter(|v| v.get(key).is_some()).collect()
}

#[test]
fn ctrl_c_stops_with_a_checkpoint_that_resume_continues() {
    let Some(models) = common::models() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("adapter");
    // Many epochs and no periodic checkpoint: the only checkpoint is the one Ctrl-C leaves.
    let mut child = finetune(&models, &out, &["--epochs", "1000", "--checkpoint-every", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Two steps done, then Ctrl-C.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut seen = Vec::new();
    while lines_with(&seen.join("\n"), "progress").len() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("no two steps within 300 s; stdout so far: {seen:?}");
            }
        }
    }
    let sigint = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(sigint.success());
    let stopped_by = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > stopped_by {
            let _ = child.kill();
            panic!("still training 120 s after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    reader.join().unwrap();
    seen.extend(rx.try_iter());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "stderr: {stderr}");
    assert!(stderr.contains("stopping after this step"), "{stderr}");
    let stdout = seen.join("\n");
    let summary = &lines_with(&stdout, "summary")[0]["summary"];
    assert_eq!(summary["interrupted"], true, "{stdout}");
    let stopped_at = summary["steps"].as_u64().unwrap();
    assert!(stopped_at >= 2, "{stdout}");
    assert!(stopped_at < 1000, "stopped long before the end: {stdout}");

    // The checkpoint is whole: adapter, optimizer state and the step it reached.
    let ckpt = out.join("checkpoint");
    for file in ["adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json"] {
        assert!(ckpt.join(file).exists(), "checkpoint lacks {file}");
    }
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("trainer_state.json")).unwrap()).unwrap();
    assert_eq!(state["step"].as_u64(), Some(stopped_at), "{state}");
    assert!(out.join("adapter_model.safetensors").exists(), "the adapter so far is written beside the checkpoint");
    let logged = |out: &std::path::Path| {
        lines_with(&std::fs::read_to_string(out.join("train_log.jsonl")).unwrap(), "step")
            .iter()
            .filter(|l| l.get("loss").is_some_and(|x| !x.is_null()))
            .count() as u64
    };
    assert_eq!(logged(&out), stopped_at);

    // --resume carries on from the checkpoint's step to the new end.
    let target = stopped_at + 1;
    let resumed = finetune(&models, &out, &["--resume", "--max-steps", &target.to_string()]).output().unwrap();
    let resumed_out = String::from_utf8_lossy(&resumed.stdout);
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    let summary = &lines_with(&resumed_out, "summary")[0]["summary"];
    assert_eq!((summary["steps"].as_u64(), summary["interrupted"].as_bool()), (Some(target), Some(false)));
    let progress = lines_with(&resumed_out, "progress");
    assert_eq!(progress.len(), 1, "one step left to run: {resumed_out}");
    assert_eq!(progress[0]["progress"]["step"].as_u64(), Some(target));
    assert_eq!(logged(&out), target, "the log is appended to, not restarted");
}
