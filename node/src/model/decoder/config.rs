//! The shape of a decoder, read from GGUF metadata, and what its architecture
//! changes in the layer: the llama family (llama, mistral, qwen2) and Gemma 3.
//!
//! Gemma 3 is a llama-shaped decoder with these differences (as llama.cpp's
//! `gemma3` graph runs it, whose outputs are the reference):
//! - token embeddings multiplied by `√hidden`;
//! - an RMS norm over each query and key head before RoPE, and a second RMS
//!   norm on the attention and feed-forward outputs before each residual add
//!   (the GGUF converter has already added Gemma's `1 +` to every norm weight);
//! - GeGLU (tanh GELU) instead of SwiGLU; NeoX RoPE pairs;
//! - queries scaled by `1/√head_dim` before attention (the score scale is 1);
//! - five sliding-window layers (RoPE base 10 000, a window of
//!   `attention.sliding_window` positions) to every global one (the GGUF's
//!   `rope.freq_base`, full causal attention);
//! - a tied output head; an optional final logit soft-cap.
use candle_core::quantized::gguf_file::{Content, Value};

use crate::model::ModelError;

/// The architectures this decoder runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// llama, mistral, qwen2: pre-norm, SwiGLU, full causal attention.
    Llama,
    /// gemma3: see the module documentation.
    Gemma3,
}

/// The gated feed-forward's activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu(gate) · up` (SwiGLU).
    Silu,
    /// `gelu_tanh(gate) · up` (GeGLU).
    GeluTanh,
}

/// How one layer attends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerAttention {
    /// RoPE frequency base.
    pub rope_base: f32,
    /// RoPE linear position scale (1 = none).
    pub rope_scale: f32,
    /// Positions visible to a token, itself included (`None`: all before it).
    pub window: Option<usize>,
}

/// Shape of the model, from GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    /// `general.architecture` (llama, qwen2, gemma3, ...).
    pub arch: String,
    /// What the architecture changes in the layer.
    pub family: Family,
    /// Decoder layers.
    pub n_layer: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads.
    pub n_kv_head: usize,
    /// Per-head dimension.
    pub head_dim: usize,
    /// Model width.
    pub hidden: usize,
    /// Feed-forward width.
    pub ffn: usize,
    /// RMS norm epsilon.
    pub eps: f64,
    /// Context window (positions).
    pub context_length: usize,
    /// RoPE pairs (i, i+d/2) instead of (2i, 2i+1).
    pub rope_neox: bool,
    /// The feed-forward activation.
    pub activation: Activation,
    /// Multiplies the token embeddings (Gemma: `√hidden`).
    pub embed_scale: Option<f32>,
    /// Multiplies the queries before attention (Gemma: `1/√head_dim`).
    pub query_scale: Option<f32>,
    /// Multiplies the attention scores (llama: `1/√head_dim`; Gemma: 1).
    pub score_scale: f32,
    /// Per layer: RoPE base and window.
    pub layers: Vec<LayerAttention>,
    /// Final logits soft-capped at this value.
    pub final_softcap: Option<f32>,
}

fn meta_u32(ct: &Content, key: &str) -> Result<usize, ModelError> {
    match ct.metadata.get(key) {
        Some(v) => v
            .to_u32()
            .map(|x| x as usize)
            .or_else(|_| v.to_u64().map(|x| x as usize))
            .map_err(|_| ModelError::Format(format!("{key} is not an integer"))),
        None => Err(ModelError::Format(format!("GGUF metadata lacks {key}"))),
    }
}

fn meta_f32(ct: &Content, key: &str) -> Option<f32> {
    ct.metadata.get(key).and_then(|v| v.to_f32().ok())
}

/// Layers of a Gemma 3 sliding-window pattern: every `pattern`-th layer is global.
const GEMMA3_SWA_PATTERN: usize = 6;
/// RoPE base of Gemma 3's sliding-window layers (not in the GGUF; llama.cpp's value).
const GEMMA3_LOCAL_ROPE_BASE: f32 = 10_000.0;

impl DecoderConfig {
    /// Reads the shape of a supported decoder; other architectures are refused.
    pub fn from_gguf(ct: &Content) -> Result<Self, ModelError> {
        let arch = match ct.metadata.get("general.architecture") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(ModelError::Format("GGUF metadata lacks general.architecture".into())),
        };
        let family = match arch.as_str() {
            "llama" | "mistral" | "qwen2" => Family::Llama,
            "gemma3" => Family::Gemma3,
            _ => {
                return Err(ModelError::Unsupported(format!(
                    "architecture '{arch}' (llama, mistral, qwen2 and gemma3 are supported)"
                )))
            }
        };
        let k = |s: &str| format!("{arch}.{s}");
        let n_head = meta_u32(ct, &k("attention.head_count"))?;
        let hidden = meta_u32(ct, &k("embedding_length"))?;
        if n_head == 0 || hidden == 0 {
            return Err(ModelError::Format("the model has no attention heads or zero width".into()));
        }
        // Gemma's heads are wider than hidden / heads: key_length says so.
        let head_dim = meta_u32(ct, &k("attention.key_length"))
            .or_else(|_| meta_u32(ct, &k("rope.dimension_count")))
            .unwrap_or(hidden / n_head);
        if head_dim == 0 || head_dim % 2 == 1 {
            return Err(ModelError::Format(format!("head dimension {head_dim} cannot be rotated")));
        }
        let eps = meta_f32(ct, &k("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5) as f64;
        let rope_base = meta_f32(ct, &k("rope.freq_base")).unwrap_or(10_000.0);
        let n_layer = meta_u32(ct, &k("block_count"))?;
        let global = LayerAttention { rope_base, rope_scale: 1.0, window: None };
        let mut cfg = Self {
            family,
            n_layer,
            n_head,
            n_kv_head: meta_u32(ct, &k("attention.head_count_kv")).unwrap_or(n_head),
            head_dim,
            hidden,
            ffn: meta_u32(ct, &k("feed_forward_length"))?,
            eps,
            context_length: meta_u32(ct, &k("context_length")).unwrap_or(2048),
            rope_neox: arch == "qwen2",
            activation: Activation::Silu,
            embed_scale: None,
            query_scale: None,
            score_scale: 1.0 / (head_dim as f32).sqrt(),
            layers: vec![global; n_layer],
            // A cap of 0 (or less) means none, not NaN logits.
            final_softcap: meta_f32(ct, &k("final_logit_softcapping")).filter(|c| *c > 0.0),
            arch,
        };
        if family == Family::Gemma3 {
            cfg.gemma3(ct)?;
        }
        Ok(cfg)
    }

    /// Gemma 3's changes to the llama shape (module documentation).
    fn gemma3(&mut self, ct: &Content) -> Result<(), ModelError> {
        let k = |s: &str| format!("{}.{s}", self.arch);
        if ct.metadata.contains_key(&k("attn_logit_softcapping")) {
            return Err(ModelError::Unsupported("attention logit soft-capping (Gemma 2 style)".into()));
        }
        let window = meta_u32(ct, &k("attention.sliding_window"))?;
        let pattern = meta_u32(ct, &k("attention.sliding_window_pattern")).unwrap_or(GEMMA3_SWA_PATTERN).max(1);
        // Linear RoPE scaling (the 4B and larger models) applies to the global layers only.
        let global_scale = match ct.metadata.get(&k("rope.scaling.type")).and_then(|v| v.to_string().ok()) {
            // A factor of 0 (or below 1) means no scaling, as llama.cpp reads it.
            Some(t) if t == "linear" => 1.0 / meta_f32(ct, &k("rope.scaling.factor")).unwrap_or(1.0).max(1.0),
            Some(t) if t != "none" => return Err(ModelError::Unsupported(format!("RoPE scaling '{t}'"))),
            _ => 1.0,
        };
        let local_base = meta_f32(ct, &k("rope.freq_base_swa")).unwrap_or(GEMMA3_LOCAL_ROPE_BASE);
        for (il, layer) in self.layers.iter_mut().enumerate() {
            if il % pattern < pattern - 1 {
                *layer = LayerAttention { rope_base: local_base, rope_scale: 1.0, window: Some(window.max(1)) };
            } else {
                layer.rope_scale = global_scale;
            }
        }
        self.rope_neox = true;
        self.activation = Activation::GeluTanh;
        self.embed_scale = Some((self.hidden as f32).sqrt());
        // llama.cpp scales the 27B model (62 layers) by its width per head instead.
        let per_head = if self.n_layer == 62 { self.hidden / self.n_head } else { self.head_dim };
        self.query_scale = Some(1.0 / (per_head as f32).sqrt());
        self.score_scale = 1.0;
        Ok(())
    }
}
