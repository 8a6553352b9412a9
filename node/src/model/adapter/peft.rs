//! PEFT's adapter layout: `adapter_config.json` beside
//! `adapter_model.safetensors`, tensors named
//! `base_model.model.model.layers.{l}.self_attn.q_proj.lora_A.weight` (and
//! `mlp.gate_proj`, ...), `lora_A` of shape `r × in`, `lora_B` of `out × r`,
//! rows in Hugging Face order.
//!
//! llama.cpp's converter permutes the query and key rows of llama-family
//! models so that RoPE rotates adjacent pairs (GGUF's order); PEFT's rows are
//! in HF's order (halves rotated). Reading permutes `lora_B` of `q_proj` and
//! `k_proj` into the decoder's order and writing permutes it back, so an
//! adapter trained by PEFT on the HF model serves here and ours load in PEFT.
//! Models whose RoPE already pairs halves (Gemma 3) are not permuted.
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use super::{LoraAdapter, LoraMatrix, Target};
use crate::model::decoder::DecoderConfig;
use crate::model::ModelError;

/// The adapter's settings file.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The adapter's weights.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// What `adapter_config.json` says that this crate uses or must refuse.
#[derive(Debug, Clone, PartialEq)]
pub struct PeftConfig {
    /// `r`.
    pub rank: usize,
    /// `lora_alpha`.
    pub alpha: f32,
    /// `lora_dropout` (training only).
    pub dropout: f32,
    /// `target_modules`.
    pub targets: Vec<Target>,
    /// `base_model_name_or_path`.
    pub base: String,
}

fn format_err(dir: &Path, m: impl std::fmt::Display) -> ModelError {
    ModelError::Format(format!("{}: {m}", dir.display()))
}

/// Reads and checks `adapter_config.json` in `dir`: a LoRA adapter of a
/// causal LM without the variants this build does not serve (DoRA, biases,
/// per-module ranks, transposed weights).
pub fn read_config(dir: &Path) -> Result<PeftConfig, ModelError> {
    let path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format_err(&path, e))?;
    if v.get("peft_type").and_then(Value::as_str).is_some_and(|t| t != "LORA") {
        return Err(format_err(&path, "only peft_type LORA is served"));
    }
    let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    if flag("use_dora") || flag("fan_in_fan_out") {
        return Err(ModelError::Unsupported(format!("{}: DoRA and fan_in_fan_out adapters", path.display())));
    }
    if v.get("bias").and_then(Value::as_str).is_some_and(|b| b != "none") {
        return Err(ModelError::Unsupported(format!("{}: LoRA biases", path.display())));
    }
    for k in ["rank_pattern", "alpha_pattern"] {
        if v.get(k).and_then(Value::as_object).is_some_and(|o| !o.is_empty()) {
            return Err(ModelError::Unsupported(format!("{}: {k}", path.display())));
        }
    }
    let rank = v
        .get("r")
        .and_then(Value::as_u64)
        .filter(|&r| r > 0 && r <= 1024)
        .ok_or_else(|| format_err(&path, "r must be an integer in 1..=1024"))? as usize;
    let mut alpha = v.get("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0) as f32;
    if flag("use_rslora") {
        // rsLoRA scales by alpha / √r; as alpha' / r that is alpha' = alpha · √r.
        alpha *= (rank as f32).sqrt();
    }
    let targets = match v.get("target_modules") {
        Some(Value::Array(names)) => names
            .iter()
            .map(|n| {
                n.as_str()
                    .and_then(Target::parse)
                    .ok_or_else(|| ModelError::Unsupported(format!("{}: target module {n}", path.display())))
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => return Err(format_err(&path, "target_modules must be a list of module names")),
    };
    Ok(PeftConfig {
        rank,
        alpha,
        dropout: v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0) as f32,
        targets,
        base: v.get("base_model_name_or_path").and_then(Value::as_str).unwrap_or("").to_string(),
    })
}

/// Where a projection sits in PEFT's key names.
fn block(t: Target) -> &'static str {
    match t {
        Target::Q | Target::K | Target::V | Target::O => "self_attn",
        Target::Gate | Target::Up | Target::Down => "mlp",
    }
}

/// Whether `t`'s output rows are in a different order in the decoder than in HF.
fn permuted(t: Target, cfg: &DecoderConfig) -> Option<usize> {
    match t {
        Target::Q if !cfg.rope_neox => Some(cfg.n_head),
        Target::K if !cfg.rope_neox => Some(cfg.n_kv_head),
        _ => None,
    }
}

/// Rows of a `heads · hd × cols` matrix from HF order to GGUF order
/// (`to_gguf`), or back.
fn permute_rows(m: &[f32], heads: usize, hd: usize, cols: usize, to_gguf: bool) -> Vec<f32> {
    let mut out = vec![0f32; m.len()];
    let half = hd / 2;
    for head in 0..heads {
        for i in 0..half {
            for h in 0..2 {
                let gguf = head * hd + 2 * i + h;
                let hf = head * hd + h * half + i;
                let (dst, src) = if to_gguf { (gguf, hf) } else { (hf, gguf) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&m[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Reads the adapter in `dir` for a base of shape `cfg`, checked against it.
pub fn load(dir: &Path, cfg: &DecoderConfig) -> Result<LoraAdapter, ModelError> {
    let conf = read_config(dir)?;
    let path = dir.join(WEIGHTS_FILE);
    if !path.is_file() {
        return Err(ModelError::Io(format!("{}: no such file", path.display())));
    }
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).map_err(|e| format_err(&path, e))?;
    // Keys by their tail, whatever the prefix (`base_model.model.` from a
    // saved PEFT model, or none) and with or without the adapter's name.
    let by_tail: HashMap<String, &Tensor> = tensors
        .iter()
        .filter_map(|(k, t)| {
            let at = k.find("layers.")?;
            Some((k[at..].replace(".default.weight", ".weight"), t))
        })
        .collect();
    let mut layers = Vec::with_capacity(cfg.n_layer);
    for l in 0..cfg.n_layer {
        let mut layer = BTreeMap::new();
        for &t in &conf.targets {
            let (input, output) = t.shape(cfg);
            let get = |ab: &str| -> Result<Vec<f32>, ModelError> {
                let key = format!("layers.{l}.{}.{}.lora_{ab}.weight", block(t), t.module());
                let tensor = by_tail.get(&key).ok_or_else(|| format_err(&path, format!("missing {key}")))?;
                let want = if ab == "A" { (conf.rank, input) } else { (output, conf.rank) };
                if tensor.dims() != [want.0, want.1] {
                    return Err(format_err(&path, format!("{key} is {:?}, expected {want:?}", tensor.dims())));
                }
                Ok(tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
            };
            let a = get("A")?;
            let mut b = get("B")?;
            if let Some(heads) = permuted(t, cfg) {
                b = permute_rows(&b, heads, cfg.head_dim, conf.rank, true);
            }
            layer.insert(t, LoraMatrix { a, b, input, output });
        }
        layers.push(layer);
    }
    let adapter = LoraAdapter { rank: conf.rank, alpha: conf.alpha, layers };
    adapter.check(cfg)?;
    Ok(adapter)
}

/// What `save` writes into `adapter_config.json` beyond the weights' shape.
#[derive(Debug, Clone, Default)]
pub struct SaveInfo {
    /// `lora_dropout` used in training.
    pub dropout: f32,
    /// `base_model_name_or_path`.
    pub base: String,
}

/// Writes `adapter` into `dir` in PEFT's layout (f32 weights, HF row order).
/// The weights go to a temporary name first and are renamed, so a reader
/// (or a crash) never sees half a file.
pub fn save(adapter: &LoraAdapter, cfg: &DecoderConfig, dir: &Path, info: &SaveInfo) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::Io(format!("{}: {e}", dir.display())))?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (l, layer) in adapter.layers.iter().enumerate() {
        for (&t, m) in layer {
            let prefix = format!("base_model.model.model.layers.{l}.{}.{}", block(t), t.module());
            let b = match permuted(t, cfg) {
                Some(heads) => permute_rows(&m.b, heads, cfg.head_dim, adapter.rank, false),
                None => m.b.clone(),
            };
            tensors.insert(
                format!("{prefix}.lora_A.weight"),
                Tensor::from_vec(m.a.clone(), (adapter.rank, m.input), &Device::Cpu)?,
            );
            tensors.insert(
                format!("{prefix}.lora_B.weight"),
                Tensor::from_vec(b, (m.output, adapter.rank), &Device::Cpu)?,
            );
        }
    }
    let tmp = dir.join(format!("{WEIGHTS_FILE}.tmp"));
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, dir.join(WEIGHTS_FILE)).map_err(|e| ModelError::Io(format!("{}: {e}", dir.display())))?;
    let targets: Vec<&str> = adapter.targets().iter().map(Target::module).collect();
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": adapter.rank,
        "lora_alpha": adapter.alpha,
        "lora_dropout": info.dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "base_model_name_or_path": info.base,
    });
    let text = serde_json::to_string_pretty(&config).map_err(|e| ModelError::Io(e.to_string()))?;
    std::fs::write(dir.join(CONFIG_FILE), text).map_err(|e| ModelError::Io(format!("{}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_round_trips_and_pairs_halves() {
        // One head of 4 rows, 1 column: HF rows [a0 a1 | b0 b1] → GGUF [a0 b0 a1 b1].
        let hf = vec![0.0, 1.0, 10.0, 11.0];
        let gguf = permute_rows(&hf, 1, 4, 1, true);
        assert_eq!(gguf, vec![0.0, 10.0, 1.0, 11.0]);
        assert_eq!(permute_rows(&gguf, 1, 4, 1, false), hf);
    }
}
