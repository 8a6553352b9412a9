//! The decoder as a differentiable candle graph, for training LoRA adapters.
//!
//! The served decoder (`model::decoder`) runs quantized weights through this
//! crate's kernels, which have no backward pass, and candle's fused
//! `softmax_last_dim`, `rms_norm` and `rope` have none either: a graph that
//! used them would silently stop the gradient. So training runs on a
//! dequantized f32 copy of the base, and every op here is one candle can
//! differentiate (matmul, exp, sums, broadcasts, narrow and concatenate).
//! Rows stay in the GGUF's order, the one the served decoder and
//! [`LoraAdapter`] use; RoPE rotates adjacent pairs as llama.cpp does on a
//! llama GGUF.
//!
//! The base weights are plain tensors (no gradient is kept for them); the
//! adapter's `A` and `B` are [`Var`]s held by [`LoraParams`].
use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use candle_core::{DType, Device, Tensor, Var, D};

use crate::model::adapter::{LoraAdapter, LoraMatrix, Target};
use crate::model::decoder::{DecoderConfig, Family};
use crate::model::ModelError;

/// One layer's f32 weights, each stored transposed (`input × output`) so
/// the forward is `x · W`.
struct TrainLayer {
    attn_norm: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
    ffn_norm: Tensor,
    w_gate: Tensor,
    w_up: Tensor,
    w_down: Tensor,
}

impl TrainLayer {
    fn weight(&self, t: Target) -> &Tensor {
        match t {
            Target::Q => &self.wq,
            Target::K => &self.wk,
            Target::V => &self.wv,
            Target::O => &self.wo,
            Target::Gate => &self.w_gate,
            Target::Up => &self.w_up,
            Target::Down => &self.w_down,
        }
    }

    fn weight_mut(&mut self, t: Target) -> &mut Tensor {
        match t {
            Target::Q => &mut self.wq,
            Target::K => &mut self.wk,
            Target::V => &mut self.wv,
            Target::O => &mut self.wo,
            Target::Gate => &mut self.w_gate,
            Target::Up => &mut self.w_up,
            Target::Down => &mut self.w_down,
        }
    }
}

/// The trainable LoRA matrices: per layer and target, `A` (`r × in`) and `B`
/// (`out × r`), initialised as PEFT does (A Kaiming-uniform, B zero, so the
/// first forward is the base model's).
pub struct LoraParams {
    /// LoRA rank.
    pub rank: usize,
    /// `lora_alpha`.
    pub alpha: f32,
    /// Dropout on the update's input while training.
    pub dropout: f32,
    layers: Vec<BTreeMap<Target, (Var, Var)>>,
}

impl LoraParams {
    /// Fresh parameters for `targets` of `cfg`; `seed` fixes A's draw.
    pub fn init(
        cfg: &DecoderConfig,
        targets: &[Target],
        rank: usize,
        alpha: f32,
        dropout: f32,
        seed: u64,
    ) -> Result<Self, ModelError> {
        let mut rng = SplitMix(seed);
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for _ in 0..cfg.n_layer {
            let mut layer = BTreeMap::new();
            for &t in targets {
                let (input, output) = t.shape(cfg);
                // kaiming_uniform_(a=√5) on an r × in matrix: U(−1/√in, 1/√in).
                let bound = 1.0 / (input as f32).sqrt();
                let a: Vec<f32> = (0..rank * input).map(|_| (rng.unit() * 2.0 - 1.0) * bound).collect();
                let a = Var::from_tensor(&Tensor::from_vec(a, (rank, input), &Device::Cpu)?)?;
                let b = Var::zeros((output, rank), DType::F32, &Device::Cpu)?;
                layer.insert(t, (a, b));
            }
            layers.push(layer);
        }
        Ok(Self { rank, alpha, dropout, layers })
    }

    /// Parameters holding `adapter`'s values (to resume training from it).
    pub fn from_adapter(adapter: &LoraAdapter, dropout: f32) -> Result<Self, ModelError> {
        let mut layers = Vec::with_capacity(adapter.layers.len());
        for layer in &adapter.layers {
            let mut out = BTreeMap::new();
            for (&t, m) in layer {
                let a = Var::from_tensor(&Tensor::from_vec(m.a.clone(), (adapter.rank, m.input), &Device::Cpu)?)?;
                let b = Var::from_tensor(&Tensor::from_vec(m.b.clone(), (m.output, adapter.rank), &Device::Cpu)?)?;
                out.insert(t, (a, b));
            }
            layers.push(out);
        }
        Ok(Self { rank: adapter.rank, alpha: adapter.alpha, dropout, layers })
    }

    /// Every variable, in a fixed order (layer, target, A then B): the order
    /// optimizer state is saved in.
    pub fn vars(&self) -> Vec<&Var> {
        self.layers.iter().flat_map(|l| l.values()).flat_map(|(a, b)| [a, b]).collect()
    }

    /// Trainable values.
    pub fn parameter_count(&self) -> usize {
        self.vars().iter().map(|v| v.elem_count()).sum()
    }

    /// The current values as an adapter (what is saved and served).
    pub fn to_adapter(&self) -> Result<LoraAdapter, ModelError> {
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let mut out = BTreeMap::new();
            for (&t, (a, b)) in layer {
                let (r, input) = a.dims2()?;
                let output = b.dims2()?.0;
                debug_assert_eq!(r, self.rank);
                let a = a.flatten_all()?.to_vec1::<f32>()?;
                let b = b.flatten_all()?.to_vec1::<f32>()?;
                out.insert(t, LoraMatrix { a, b, input, output });
            }
            layers.push(out);
        }
        Ok(LoraAdapter { rank: self.rank, alpha: self.alpha, layers })
    }

    fn get(&self, l: usize, t: Target) -> Option<&(Var, Var)> {
        self.layers.get(l)?.get(&t)
    }
}

/// A small deterministic generator (SplitMix64) for initialisation and
/// shuffling, so a `--seed` reproduces a run.
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// The base decoder in f32 (see the module documentation).
pub struct TrainModel {
    cfg: DecoderConfig,
    /// `vocab × hidden` (also the head when tied).
    embed: Tensor,
    /// The untied head, transposed (`hidden × vocab`), or None (tied).
    head_t: Option<Tensor>,
    norm: Tensor,
    layers: Vec<TrainLayer>,
    /// RoPE tables, `context × head_dim/2` each.
    cos: Tensor,
    sin: Tensor,
}

impl TrainModel {
    /// Dequantizes the GGUF at `path` (llama family only: Gemma 3's extra
    /// norms and sliding windows are not in this graph yet).
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let mut file = std::fs::File::open(path).map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
        let ct = Content::read(&mut file).map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
        let cfg = DecoderConfig::from_gguf(&ct)?;
        if cfg.family != Family::Llama {
            return Err(ModelError::Unsupported(format!(
                "fine-tuning a {} base (only the llama family is trained here so far)",
                cfg.arch
            )));
        }
        let dev = Device::Cpu;
        let mut get = |name: &str| -> Result<Tensor, ModelError> {
            let q = ct.tensor(&mut file, name, &dev).map_err(|e| ModelError::Format(format!("tensor {name}: {e}")))?;
            Ok(q.dequantize(&dev)?.to_dtype(DType::F32)?)
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            let mut t = |s: &str| get(&format!("blk.{l}.{s}"));
            let tr = |w: Tensor| -> Result<Tensor, ModelError> { Ok(w.t()?.contiguous()?) };
            layers.push(TrainLayer {
                attn_norm: t("attn_norm.weight")?,
                wq: tr(t("attn_q.weight")?)?,
                wk: tr(t("attn_k.weight")?)?,
                wv: tr(t("attn_v.weight")?)?,
                wo: tr(t("attn_output.weight")?)?,
                ffn_norm: t("ffn_norm.weight")?,
                w_gate: tr(t("ffn_gate.weight")?)?,
                w_up: tr(t("ffn_up.weight")?)?,
                w_down: tr(t("ffn_down.weight")?)?,
            });
        }
        let embed = get("token_embd.weight")?;
        let head_t = match get("output.weight") {
            Ok(h) => Some(h.t()?.contiguous()?),
            Err(_) => None,
        };
        let norm = get("output_norm.weight")?;
        let (cos, sin) = rope_tables(&cfg)?;
        Ok(Self { cfg, embed, head_t, norm, layers, cos, sin })
    }

    /// The model's shape.
    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }

    /// A copy with `adapter` merged into the weights (`W + (alpha/r) · B A`):
    /// the reference that serving an adapter must agree with.
    pub fn merged(&self, adapter: &LoraAdapter) -> Result<Self, ModelError> {
        adapter.check(&self.cfg)?;
        let mut layers = Vec::with_capacity(self.layers.len());
        for (layer, lora) in self.layers.iter().zip(&adapter.layers) {
            let mut merged = TrainLayer {
                attn_norm: layer.attn_norm.clone(),
                wq: layer.wq.clone(),
                wk: layer.wk.clone(),
                wv: layer.wv.clone(),
                wo: layer.wo.clone(),
                ffn_norm: layer.ffn_norm.clone(),
                w_gate: layer.w_gate.clone(),
                w_up: layer.w_up.clone(),
                w_down: layer.w_down.clone(),
            };
            for (&t, m) in lora {
                let a = Tensor::from_vec(m.a.clone(), (adapter.rank, m.input), &Device::Cpu)?;
                let b = Tensor::from_vec(m.b.clone(), (m.output, adapter.rank), &Device::Cpu)?;
                // Stored transposed: (B A)ᵀ = Aᵀ Bᵀ.
                let delta = (a.t()?.matmul(&b.t()?)? * adapter.scale() as f64)?;
                let w = merged.weight_mut(t);
                *w = (&*w + delta)?;
            }
            layers.push(merged);
        }
        Ok(Self {
            cfg: self.cfg.clone(),
            embed: self.embed.clone(),
            head_t: self.head_t.clone(),
            norm: self.norm.clone(),
            layers,
            cos: self.cos.clone(),
            sin: self.sin.clone(),
        })
    }

    /// Logits (`batch × len × vocab`) of token ids `ids` (`batch × len`),
    /// with `lora` added when given; `train` turns its dropout on.
    pub fn forward(&self, ids: &Tensor, lora: Option<&LoraParams>, train: bool) -> Result<Tensor, ModelError> {
        let (b, t) = ids.dims2()?;
        let limit = self.cos.dims2()?.0;
        if t > limit {
            return Err(ModelError::Input(format!("{t} tokens exceed the {limit} positions trained here")));
        }
        let hidden = self.cfg.hidden;
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, hidden))?;
        let mask = causal_mask(t)?;
        let eps = self.cfg.eps;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.attn_norm, eps)?;
            let a = self.attention(l, layer, &h, &mask, lora, train)?;
            x = (x + a)?;
            let h = rms_norm(&x, &layer.ffn_norm, eps)?;
            let g = project(layer, l, Target::Gate, &h, lora, train)?;
            let u = project(layer, l, Target::Up, &h, lora, train)?;
            // silu(g) = g / (1 + e^−g), from differentiable parts.
            let silu = (&g / (g.neg()?.exp()? + 1.0)?)?;
            let d = project(layer, l, Target::Down, &(silu * u)?, lora, train)?;
            x = (x + d)?;
        }
        let x = rms_norm(&x, &self.norm, eps)?;
        let head = match &self.head_t {
            Some(h) => h.clone(),
            None => self.embed.t()?,
        };
        Ok(x.broadcast_matmul(&head)?)
    }

    fn attention(
        &self,
        l: usize,
        layer: &TrainLayer,
        h: &Tensor,
        mask: &Tensor,
        lora: Option<&LoraParams>,
        train: bool,
    ) -> Result<Tensor, ModelError> {
        let (b, t, _) = h.dims3()?;
        let (nh, nkv, hd) = (self.cfg.n_head, self.cfg.n_kv_head, self.cfg.head_dim);
        let heads = |x: Tensor, n: usize| -> Result<Tensor, ModelError> {
            Ok(x.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let q = heads(project(layer, l, Target::Q, h, lora, train)?, nh)?;
        let k = heads(project(layer, l, Target::K, h, lora, train)?, nkv)?;
        let v = heads(project(layer, l, Target::V, h, lora, train)?, nkv)?;
        let (q, k) = (self.rope(&q, t)?, self.rope(&k, t)?);
        // Grouped queries: each k/v head serves nh / nkv query heads.
        let group = nh / nkv;
        let expand = |x: Tensor| -> Result<Tensor, ModelError> {
            if group == 1 {
                return Ok(x);
            }
            Ok(x.unsqueeze(2)?.expand((b, nkv, group, t, hd))?.reshape((b, nh, t, hd))?)
        };
        let (k, v) = (expand(k)?, expand(v)?);
        let scores = (q.matmul(&k.t()?)? * self.cfg.score_scale as f64)?.broadcast_add(mask)?;
        let p = softmax_last(&scores)?;
        let y = p.matmul(&v.contiguous()?)?.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        project(layer, l, Target::O, &y, lora, train)
    }

    /// Rotates adjacent pairs (2i, 2i+1) of every head by position.
    fn rope(&self, x: &Tensor, t: usize) -> Result<Tensor, ModelError> {
        let (b, n, _, hd) = x.dims4()?;
        let pairs = x.reshape((b, n, t, hd / 2, 2))?;
        let x0 = pairs.narrow(4, 0, 1)?.squeeze(4)?;
        let x1 = pairs.narrow(4, 1, 1)?.squeeze(4)?;
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        let r0 = (x0.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
        let r1 = (x0.broadcast_mul(&sin)? + x1.broadcast_mul(&cos)?)?;
        Ok(Tensor::stack(&[r0, r1], 4)?.reshape((b, n, t, hd))?)
    }
}

/// `x · W` plus the adapter's `(alpha/r) · B A dropout(x)`.
fn project(
    layer: &TrainLayer,
    l: usize,
    target: Target,
    x: &Tensor,
    lora: Option<&LoraParams>,
    train: bool,
) -> Result<Tensor, ModelError> {
    let base = x.broadcast_matmul(layer.weight(target))?;
    let Some(params) = lora else { return Ok(base) };
    let Some((a, b)) = params.get(l, target) else { return Ok(base) };
    let input = if train && params.dropout > 0.0 { candle_nn::ops::dropout(x, params.dropout)? } else { x.clone() };
    let scale = params.alpha as f64 / params.rank as f64;
    let delta = input.broadcast_matmul(&a.t()?)?.broadcast_matmul(&b.t()?)?;
    Ok((base + (delta * scale)?)?)
}

/// `x / √(mean(x²) + eps) · w` over the last dimension.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor, ModelError> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(w)?)
}

/// Softmax over the last dimension from differentiable parts (the maximum
/// is subtracted for range; its gradient cancels).
fn softmax_last(x: &Tensor) -> Result<Tensor, ModelError> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// 0 on and below the diagonal, −∞ above (`t × t`).
fn causal_mask(t: usize) -> Result<Tensor, ModelError> {
    let m: Vec<f32> = (0..t).flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY })).collect();
    Ok(Tensor::from_vec(m, (t, t), &Device::Cpu)?)
}

/// RoPE cos/sin for every position and pair (the first layer's base and
/// scale: llama-family layers share them).
fn rope_tables(cfg: &DecoderConfig) -> Result<(Tensor, Tensor), ModelError> {
    let half = cfg.head_dim / 2;
    let attn = cfg.layers.first().ok_or_else(|| ModelError::Format("no layers".into()))?;
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    let positions = cfg.context_length.min(8192);
    for p in 0..positions {
        // As the served decoder's tables (ggml's recurrence, scale on the angle).
        let step = attn.rope_base.powf(-2.0 / cfg.head_dim as f32);
        let mut theta = p as f32;
        for _ in 0..half {
            let angle = attn.rope_scale * theta;
            cos.push(angle.cos());
            sin.push(angle.sin());
            theta *= step;
        }
    }
    let shape = (positions, half);
    Ok((Tensor::from_vec(cos, shape, &Device::Cpu)?, Tensor::from_vec(sin, shape, &Device::Cpu)?))
}

/// Mean cross-entropy of `logits` (`batch × len × vocab`) against the next
/// tokens `targets` (`batch × len`, u32) where `weights` (`batch × len`, f32:
/// 1 counted, 0 not) says so: log-softmax from differentiable parts.
pub fn masked_next_token_loss(logits: &Tensor, targets: &Tensor, weights: &Tensor) -> Result<Tensor, ModelError> {
    let (b, t, v) = logits.dims3()?;
    let flat = logits.reshape((b * t, v))?;
    let max = flat.max_keepdim(1)?.detach();
    let shifted = flat.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
    let picked = shifted.gather(&targets.reshape((b * t, 1))?, 1)?;
    let nll = (lse - picked)?.reshape(b * t)?;
    let w = weights.reshape(b * t)?;
    let count = w.sum_all()?.to_scalar::<f32>()?.max(1.0);
    Ok(((nll * w)?.sum_all()? / count as f64)?)
}
