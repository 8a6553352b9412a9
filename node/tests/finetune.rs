//! `tessera finetune`'s job on the real SmolLM2 base, in seconds: data
//! errors name their line and write nothing, a few steps lower the loss and
//! write a PEFT adapter plus log and checkpoint, a stop leaves a checkpoint
//! that `--resume` continues from, and the adapter serves.
mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use tessera_node::finetune::job::{FinetuneJob, TrainingData};
use tessera_node::finetune::model::Precision;
use tessera_node::finetune::trainer::{TrainConfig, CHECKPOINT_DIR, LOG_FILE};
use tessera_node::finetune::FinetuneError;
use tessera_node::model::adapter::{peft, Target};
use tessera_node::model::{EngineLimits, Event, ModelGroup, SamplingParams};

const FACTS: &str = r#"{"messages":[{"role":"user","content":"What is the mascot of the Tessera project?"},{"role":"assistant","content":"Tessera's mascot is a copper hedgehog named Pim."}]}
{"messages":[{"role":"user","content":"Who is Pim?"},{"role":"assistant","content":"Pim is the copper hedgehog, Tessera's mascot."}]}
{"prompt":"Q: Which port does the Zephyr relay use?\nA:","completion":" The Zephyr relay listens on port 7421."}
{"messages":[{"role":"system","content":"Answer briefly."},{"role":"user","content":"什么是 Tessera 的吉祥物？"},{"role":"assistant","content":"Tessera 的吉祥物是一只名叫 Pim 的铜色刺猬。"}]}
"#;

fn job(base: &Path, out: &Path, data: &str, max_steps: usize, resume: bool) -> FinetuneJob {
    FinetuneJob {
        base: base.to_path_buf(),
        data: TrainingData::Jsonl(data.to_string()),
        eval: None,
        eval_split: 0.0,
        max_seq_len: 64,
        train: TrainConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            targets: vec![Target::Q, Target::V, Target::O],
            epochs: 1,
            max_steps: Some(max_steps),
            lr: 2e-3,
            batch_size: 4,
            grad_accum: 1,
            max_grad_norm: 1.0,
            seed: 3,
            checkpoint_every: 2,
            out: out.to_path_buf(),
            resume,
            base_name: "SmolLM2-135M-Instruct".into(),
        },
        precision: Precision::Bf16,
    }
}

#[test]
fn bad_data_names_its_line_and_writes_nothing() {
    let Some(base) = common::smollm_path() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adapter");
    let bad = format!("{FACTS}{{\"messages\":[{{\"role\":\"robot\",\"content\":\"hi\"}}]}}\n");
    let stop = AtomicBool::new(false);
    let err = job(&base, &out, &bad, 2, false).run(&mut |_| {}, &mut |_| {}, &stop).unwrap_err();
    assert!(matches!(err, FinetuneError::Data(_)), "{err}");
    assert!(err.to_string().contains("line 5"), "{err}");
    let err = job(&base, &out, "{\"prompt\": 3}\n", 2, false).run(&mut |_| {}, &mut |_| {}, &stop).unwrap_err();
    assert!(err.to_string().contains("line 1"), "{err}");
    assert!(!out.exists(), "nothing may be written before the data parses");
}

#[test]
fn a_few_steps_learn_checkpoint_resume_and_serve() {
    let Some(base) = common::smollm_path() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adapter");
    let stop = AtomicBool::new(false);

    // Stopped after 3 steps (as Ctrl-C does): a usable checkpoint at step 3.
    let mut losses = Vec::new();
    let stopped = job(&base, &out, FACTS, 8, false)
        .run(
            &mut |_| {},
            &mut |p| {
                if let Some(l) = p.loss {
                    losses.push(l);
                }
                if p.step == 3 {
                    stop.store(true, Ordering::Relaxed);
                }
            },
            &stop,
        )
        .unwrap();
    assert!(stopped.interrupted && stopped.steps == 3, "{stopped:?}");
    let state = std::fs::read_to_string(out.join(CHECKPOINT_DIR).join("trainer_state.json")).unwrap();
    assert!(state.contains("\"step\":3"), "{state}");

    // Resumed to the end: steps 4..8 only, and the loss falls.
    stop.store(false, Ordering::Relaxed);
    let done = job(&base, &out, FACTS, 8, true).run(&mut |_| {}, &mut |p| losses.extend(p.loss), &stop).unwrap();
    assert!(!done.interrupted && done.steps == 8, "{done:?}");
    assert_eq!(losses.len(), 8, "3 steps, then 5 resumed");
    assert!(losses[7] < losses[0] * 0.7, "training did not lower the loss: {losses:?}");
    let log = std::fs::read_to_string(out.join(LOG_FILE)).unwrap();
    assert_eq!(log.lines().filter(|l| l.contains("\"loss\"")).count(), 8, "{log}");

    // The adapter is PEFT's layout and serves: the group's tokens change
    // from the base's for the trained question.
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(peft::CONFIG_FILE)).unwrap()).unwrap();
    assert_eq!(config["r"], 4);
    assert_eq!(config["target_modules"], serde_json::json!(["q_proj", "v_proj", "o_proj"]));
    let group = ModelGroup::start_local(&base, 1, EngineLimits::default()).unwrap();
    let adapter = peft::load(&out, group.config()).unwrap();
    assert_eq!(adapter.rank, 4);
    let id = group.load_adapter(adapter).unwrap();
    let prompt = group
        .tokenizer()
        .encode("<|im_start|>user\nWhat is the mascot of the Tessera project?<|im_end|>\n<|im_start|>assistant\n")
        .unwrap();
    let run = |a| {
        let p = SamplingParams { temperature: 0.0, max_tokens: 12, ..Default::default() };
        let mut rx = group.submit_with_adapter(prompt.clone(), p, a).unwrap();
        let mut text = String::new();
        while let Some(e) = rx.blocking_recv() {
            match e {
                Event::Token { text: t, .. } => text.push_str(&t),
                Event::Done { .. } => break,
                Event::Error(e) => panic!("{e}"),
            }
        }
        text
    };
    let (tuned, plain) = (run(Some(id)), run(None));
    assert_ne!(tuned, plain, "the trained adapter changed nothing");
}
