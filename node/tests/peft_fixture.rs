//! Adapters move both ways between PEFT and Tessera: on the SmolLM2 base
//! (dequantized, as transformers reads the GGUF), an adapter trained by PEFT
//! gives PEFT's logits here, and PEFT gives for an adapter trained by
//! `tessera finetune` the logits Tessera gives. The served (quantized) path
//! picks PEFT's next token. The fixture (two small adapters, so model files,
//! not committed) is made by scripts/make-peft-fixture.sh (PEFT on PyTorch
//! CPU) into benches/results/peft_fixture/, which scripts/test.sh runs under
//! CI; without it this test is skipped outside CI and fails under CI.
mod common;

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde_json::Value;
use tessera_node::finetune::model::{LoraParams, TrainModel};
use tessera_node::model::adapter::peft;
use tessera_node::model::comm::SingleRank;
use tessera_node::model::decoder::{RankModel, SeqStep};
use tessera_node::model::sampler::argmax;

fn fixture_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../benches/results/peft_fixture");
    if dir.join("logits.json").exists() {
        return Some(dir);
    }
    assert!(!common::in_ci(), "{} missing under CI: run scripts/make-peft-fixture.sh", dir.display());
    eprintln!("skipping: {} missing (run scripts/make-peft-fixture.sh)", dir.display());
    None
}

/// The largest |Δ| between our last-position logits (every `stride`-th) and PEFT's.
fn worst(ours: &[f32], peft: &Value) -> f32 {
    let stride = peft["stride"].as_u64().unwrap() as usize;
    let theirs: Vec<f32> = peft["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    assert_eq!(theirs.len(), ours.len().div_ceil(stride));
    ours.iter().step_by(stride).zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max)
}

#[test]
fn peft_and_tessera_adapters_give_the_same_logits_on_both_sides() {
    let Some(dir) = fixture_dir() else { return };
    let Some(gguf) = common::smollm_path() else { return };
    let fx: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("logits.json")).unwrap()).unwrap();
    let model = TrainModel::load(&gguf).unwrap();
    let logits = |ids: &[u32], lora: Option<&LoraParams>| {
        let t = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu).unwrap();
        let l = model.forward(&t, lora, false).unwrap();
        l.squeeze(0).unwrap().get(ids.len() - 1).unwrap().to_vec1::<f32>().unwrap()
    };
    let ids = |p: &Value| -> Vec<u32> { serde_json::from_value(p["ids"].clone()).unwrap() };

    // The bases agree: what is left below is the adapters'.
    for p in fx["base"]["prompts"].as_array().unwrap() {
        let w = worst(&logits(&ids(p), None), p);
        assert!(w < 2e-3, "base logits differ from transformers' by {w}");
    }
    let mut served = RankModel::load(&gguf, 0, 1).unwrap();
    for (k, name) in ["peft_adapter", "tessera_adapter"].iter().enumerate() {
        let adapter = peft::load(&dir.join(name), model.config()).unwrap();
        let lora = LoraParams::from_adapter(&adapter, 0.0).unwrap();
        served.load_adapter(k as u32 + 1, &adapter).unwrap();
        for (i, p) in fx[name]["prompts"].as_array().unwrap().iter().enumerate() {
            let ours = logits(&ids(p), Some(&lora));
            let w = worst(&ours, p);
            assert!(w < 2e-3, "{name} prompt {i}: logits differ from PEFT's by {w}");
            // The adapter matters here (else agreeing proves nothing).
            let base = &fx["base"]["prompts"][i];
            assert!(worst(&ours, base) > 0.5, "{name} prompt {i}: the adapter hardly changes the logits");
            let step = SeqStep { seq: (k * 10 + i) as u64, tokens: ids(p), start: 0, adapter: Some(k as u32 + 1) };
            let l = served.forward(&[step], &SingleRank).unwrap().remove(0);
            assert_eq!(argmax(&l) as u64, p["argmax"].as_u64().unwrap(), "{name} prompt {i}: served next token");
        }
    }
}
