//! LoRA adapters: low-rank updates `W + (alpha / r) · B A` of a decoder's
//! projections, trained by `tessera finetune` or by PEFT, served per request.
//!
//! - [`LoraAdapter`]: a whole adapter in the decoder's own row order (the
//!   GGUF's: llama's query and key rows are permuted for interleaved RoPE),
//!   what travels to every rank when an adapter is loaded;
//! - [`peft`]: reading and writing PEFT's layout (`adapter_config.json`,
//!   `adapter_model.safetensors`, PEFT's key names and HF row order), so
//!   adapters move both ways between Tessera and the Python ecosystem;
//! - [`registry`]: the adapters a model group knows, a bounded number resident;
//! - [`rank`]: one tensor-parallel rank's share of an adapter and the per-row
//!   product the forward step adds (each row of a batch its own adapter).
pub mod files;
pub mod peft;
pub mod rank;
pub mod registry;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::decoder::DecoderConfig;
use super::ModelError;

/// The projections an adapter may wrap (PEFT's `target_modules`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Target {
    /// Queries (`q_proj`).
    Q,
    /// Keys (`k_proj`).
    K,
    /// Values (`v_proj`).
    V,
    /// Attention output (`o_proj`).
    O,
    /// Feed-forward gate (`gate_proj`).
    Gate,
    /// Feed-forward up projection (`up_proj`).
    Up,
    /// Feed-forward down projection (`down_proj`).
    Down,
}

impl Target {
    /// Every target, in the order layers apply them.
    pub const ALL: [Target; 7] = [Target::Q, Target::K, Target::V, Target::O, Target::Gate, Target::Up, Target::Down];

    /// The short name `--targets` takes (`q`, `k`, `v`, `o`, `gate`, `up`, `down`).
    pub fn short(&self) -> &'static str {
        match self {
            Target::Q => "q",
            Target::K => "k",
            Target::V => "v",
            Target::O => "o",
            Target::Gate => "gate",
            Target::Up => "up",
            Target::Down => "down",
        }
    }

    /// PEFT's module name (`q_proj`, ...).
    pub fn module(&self) -> &'static str {
        match self {
            Target::Q => "q_proj",
            Target::K => "k_proj",
            Target::V => "v_proj",
            Target::O => "o_proj",
            Target::Gate => "gate_proj",
            Target::Up => "up_proj",
            Target::Down => "down_proj",
        }
    }

    /// The target a short or PEFT name names.
    pub fn parse(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.short() == name || t.module() == name)
    }

    /// Parses a comma-separated list (`q,k,v,o`); duplicates are dropped.
    pub fn parse_list(list: &str) -> Result<Vec<Target>, ModelError> {
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let t = Target::parse(name).ok_or_else(|| {
                ModelError::Input(format!("unknown LoRA target '{name}' (use q, k, v, o, gate, up, down)"))
            })?;
            if !out.contains(&t) {
                out.push(t);
            }
        }
        if out.is_empty() {
            return Err(ModelError::Input("give at least one LoRA target".into()));
        }
        Ok(out)
    }

    /// (input width, output rows) of this projection in `cfg`.
    pub fn shape(&self, cfg: &DecoderConfig) -> (usize, usize) {
        let hd = cfg.head_dim;
        match self {
            Target::Q => (cfg.hidden, cfg.n_head * hd),
            Target::K | Target::V => (cfg.hidden, cfg.n_kv_head * hd),
            Target::O => (cfg.n_head * hd, cfg.hidden),
            Target::Gate | Target::Up => (cfg.hidden, cfg.ffn),
            Target::Down => (cfg.ffn, cfg.hidden),
        }
    }
}

/// One wrapped projection: `A` is `rank × input` and `B` is `output × rank`,
/// both row-major f32.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraMatrix {
    /// The down projection `A` (`rank × input`).
    pub a: Vec<f32>,
    /// The up projection `B` (`output × rank`).
    pub b: Vec<f32>,
    /// Input width.
    pub input: usize,
    /// Output rows.
    pub output: usize,
}

impl LoraMatrix {
    /// The rank `r` (rows of `A`).
    pub fn rank(&self) -> usize {
        self.a.len().checked_div(self.input).unwrap_or(0)
    }
}

/// A whole adapter for one base model, rows in the decoder's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraAdapter {
    /// The LoRA rank `r`.
    pub rank: usize,
    /// `lora_alpha`: updates are scaled by `alpha / r`.
    pub alpha: f32,
    /// What it wraps, per layer (the same targets in every layer).
    pub layers: Vec<BTreeMap<Target, LoraMatrix>>,
}

impl LoraAdapter {
    /// `alpha / r`, the factor on `B A x`.
    pub fn scale(&self) -> f32 {
        if self.rank == 0 {
            0.0
        } else {
            self.alpha / self.rank as f32
        }
    }

    /// The targets it wraps (those of its first layer).
    pub fn targets(&self) -> Vec<Target> {
        self.layers.first().map(|l| l.keys().copied().collect()).unwrap_or_default()
    }

    /// Checks that the adapter fits `cfg`: one entry per layer, every matrix
    /// of the projection's shape and the adapter's rank, and finite values (a
    /// NaN would poison every row that uses it).
    pub fn check(&self, cfg: &DecoderConfig) -> Result<(), ModelError> {
        if self.rank == 0 {
            return Err(ModelError::Format("adapter rank is 0".into()));
        }
        if !self.alpha.is_finite() {
            return Err(ModelError::Format("adapter alpha is not finite".into()));
        }
        if self.layers.len() != cfg.n_layer {
            return Err(ModelError::Format(format!(
                "adapter has {} layers, the model {}",
                self.layers.len(),
                cfg.n_layer
            )));
        }
        for (l, layer) in self.layers.iter().enumerate() {
            for (t, m) in layer {
                let (input, output) = t.shape(cfg);
                if m.input != input || m.output != output {
                    return Err(ModelError::Format(format!(
                        "layer {l} {}: adapter is {}→{}, the model {input}→{output}",
                        t.module(),
                        m.input,
                        m.output
                    )));
                }
                if m.a.len() != self.rank * input || m.b.len() != output * self.rank {
                    return Err(ModelError::Format(format!(
                        "layer {l} {}: lora_A/lora_B do not have rank {}",
                        t.module(),
                        self.rank
                    )));
                }
                if m.a.iter().chain(&m.b).any(|v| !v.is_finite()) {
                    return Err(ModelError::Format(format!("layer {l} {}: non-finite weights", t.module())));
                }
            }
        }
        Ok(())
    }
}
