//! The decoder as a differentiable candle graph, for training LoRA adapters.
//!
//! The served decoder (`model::decoder`) runs quantized weights through this
//! crate's kernels, which have no backward pass, and candle's fused
//! `softmax_last_dim`, `rms_norm` and `rope` have none either: a graph that
//! used them would silently stop the gradient. So training runs on a
//! dequantized copy of the base, and every op here has a backward pass:
//! candle's own (matmul, adds, reshapes) or this module's fused ones
//! ([`super::fused`], [`super::ops`]), each checked against the composed
//! candle ops they replace.
//! Rows stay in the GGUF's order, the one the served decoder and
//! [`LoraAdapter`] use; RoPE rotates adjacent pairs as llama.cpp does on a
//! llama GGUF, or halves on a NeoX one (Gemma 3).
//!
//! Both families the served decoder runs are trained: the llama family
//! (pre-norm, SwiGLU, full causal attention) and Gemma 3 (embeddings scaled
//! by √hidden, per-head q/k RMS norms before RoPE, post-attention and
//! post-FFN norms before each residual add, GeGLU through candle's tanh GELU,
//! queries scaled by 1/√head_dim, a RoPE table per layer base, sliding-window
//! layers masked as llama.cpp masks them).
//!
//! The base weights are plain tensors (no gradient is kept for them); the
//! adapter's `A` and `B` are [`Var`]s held by [`LoraParams`].
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::Content;
use candle_core::{DType, Device, Tensor, Var};

use super::fused::{CausalSoftmax, RmsNorm, Rope, SwiGlu};
use super::ops::{CrossEntropy, FrozenMatmul, HeadLoss, LoraProjection};
use crate::model::adapter::{LoraAdapter, LoraMatrix, Target};
use crate::model::decoder::{Activation, DecoderConfig, Family};
use crate::model::ModelError;

/// One layer's f32 weights; the projections frozen (`x · W`, no weight
/// gradient), stored transposed (`input × output`).
#[derive(Clone)]
struct TrainLayer {
    attn_norm: Arc<Vec<f32>>,
    /// Gemma 3: per-head RMS norms of queries and keys (`head_dim` long).
    q_norm: Option<Arc<Vec<f32>>>,
    k_norm: Option<Arc<Vec<f32>>>,
    /// Gemma 3: norms of the attention and feed-forward outputs before their residual adds.
    post_attn_norm: Option<Arc<Vec<f32>>>,
    post_ffn_norm: Option<Arc<Vec<f32>>>,
    wq: FrozenMatmul,
    wk: FrozenMatmul,
    wv: FrozenMatmul,
    wo: FrozenMatmul,
    ffn_norm: Arc<Vec<f32>>,
    w_gate: FrozenMatmul,
    w_up: FrozenMatmul,
    w_down: FrozenMatmul,
}

impl TrainLayer {
    fn weight(&self, t: Target) -> &FrozenMatmul {
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

    fn weight_mut(&mut self, t: Target) -> &mut FrozenMatmul {
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

/// How the frozen base's products are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 weights and products (PEFT's default on CPU; exact reference).
    F32,
    /// Weights and inputs rounded to bf16 on the AMX tiles, sums in f32
    /// (mixed precision; f32 where the CPU has no AMX). The adapter, its
    /// gradients, norms, softmax and the optimizer stay f32.
    Bf16,
}

impl Precision {
    fn apply(self, m: FrozenMatmul) -> FrozenMatmul {
        match self {
            Precision::F32 => m,
            Precision::Bf16 => m.with_bf16_tiles(),
        }
    }
}

/// The base decoder in f32 (see the module documentation).
pub struct TrainModel {
    cfg: DecoderConfig,
    /// `vocab × hidden`, for the lookup.
    embed: Tensor,
    /// The output head (the embedding matrix itself when tied).
    head: FrozenMatmul,
    norm: Arc<Vec<f32>>,
    layers: Vec<TrainLayer>,
    /// RoPE tables (cos, sin), `positions × head_dim/2` each, one per distinct
    /// base and scale; `rope_of[l]` is layer `l`'s.
    ropes: Vec<(Table, Table)>,
    rope_of: Vec<usize>,
}

impl TrainModel {
    /// Dequantizes the GGUF at `path` (llama family or Gemma 3); products in f32.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        Self::load_with(path, Precision::F32)
    }

    /// [`TrainModel::load`] with the frozen products in `precision`.
    pub fn load_with(path: &Path, precision: Precision) -> Result<Self, ModelError> {
        let mut file = std::fs::File::open(path).map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
        let ct = Content::read(&mut file).map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
        let cfg = DecoderConfig::from_gguf(&ct)?;
        if cfg.final_softcap.is_some() {
            return Err(ModelError::Unsupported(format!(
                "fine-tuning a {} base with a final logit soft-cap (not in the training graph)",
                cfg.arch
            )));
        }
        let dev = Device::Cpu;
        let present = |name: &str| ct.tensor_infos.contains_key(name);
        if present("blk.0.attn_q.bias") {
            // qwen2's q/k/v biases are served but not in this graph: it would train another model.
            return Err(ModelError::Unsupported(format!(
                "fine-tuning a {} base with attention biases (not in the training graph)",
                cfg.arch
            )));
        }
        let mut get = |name: &str| -> Result<Tensor, ModelError> {
            let q = ct.tensor(&mut file, name, &dev).map_err(|e| ModelError::Format(format!("tensor {name}: {e}")))?;
            Ok(q.dequantize(&dev)?.to_dtype(DType::F32)?)
        };
        // `output × input` as stored, kept `input × output` for the forward.
        let frozen = |w: Tensor| -> Result<FrozenMatmul, ModelError> {
            let (out, input) = w.dims2()?;
            let data = w.t()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            Ok(precision.apply(FrozenMatmul::input_major(Arc::new(data), input, out)))
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            let mut t = |s: &str| get(&format!("blk.{l}.{s}"));
            let tr = frozen;
            let vector = |t: Tensor| -> Result<Arc<Vec<f32>>, ModelError> { Ok(Arc::new(t.to_vec1::<f32>()?)) };
            let gemma = cfg.family == Family::Gemma3;
            let mut extra = |s: &str| -> Result<Option<Arc<Vec<f32>>>, ModelError> {
                let name = format!("blk.{l}.{s}");
                match (gemma, present(&name)) {
                    (true, true) => Ok(Some(vector(t(s)?)?)),
                    (true, false) => Err(ModelError::Format(format!("Gemma 3 GGUF lacks {name}"))),
                    (false, _) => Ok(None),
                }
            };
            let (q_norm, k_norm) = (extra("attn_q_norm.weight")?, extra("attn_k_norm.weight")?);
            let (post_attn_norm, post_ffn_norm) =
                (extra("post_attention_norm.weight")?, extra("post_ffw_norm.weight")?);
            layers.push(TrainLayer {
                q_norm,
                k_norm,
                post_attn_norm,
                post_ffn_norm,
                attn_norm: vector(t("attn_norm.weight")?)?,
                wq: tr(t("attn_q.weight")?)?,
                wk: tr(t("attn_k.weight")?)?,
                wv: tr(t("attn_v.weight")?)?,
                wo: tr(t("attn_output.weight")?)?,
                ffn_norm: vector(t("ffn_norm.weight")?)?,
                w_gate: tr(t("ffn_gate.weight")?)?,
                w_up: tr(t("ffn_up.weight")?)?,
                w_down: tr(t("ffn_down.weight")?)?,
            });
        }
        let embed = get("token_embd.weight")?;
        let as_head = |w: &Tensor| -> Result<FrozenMatmul, ModelError> {
            let (vocab, hidden) = w.dims2()?;
            Ok(precision.apply(FrozenMatmul::output_major(Arc::new(w.flatten_all()?.to_vec1::<f32>()?), vocab, hidden)))
        };
        let head = match get("output.weight") {
            Ok(h) => as_head(&h)?,
            Err(_) => as_head(&embed)?,
        };
        let norm = Arc::new(get("output_norm.weight")?.to_vec1::<f32>()?);
        let (ropes, rope_of) = rope_tables(&cfg)?;
        Ok(Self { cfg, embed, head, norm, layers, ropes, rope_of })
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
            let mut merged = layer.clone();
            for (&t, m) in lora {
                // Stored transposed: W'ᵀ[i][o] = Wᵀ[i][o] + s · Σ_j A[j][i] B[o][j].
                let w = merged.weight_mut(t);
                *w = w.plus_low_rank(&m.a, &m.b, adapter.rank, adapter.scale());
            }
            layers.push(merged);
        }
        Ok(Self {
            cfg: self.cfg.clone(),
            embed: self.embed.clone(),
            head: self.head.clone(),
            norm: self.norm.clone(),
            layers,
            ropes: self.ropes.clone(),
            rope_of: self.rope_of.clone(),
        })
    }

    /// Logits (`batch × len × vocab`) of token ids `ids` (`batch × len`),
    /// with `lora` added when given; `train` turns its dropout on.
    pub fn forward(&self, ids: &Tensor, lora: Option<&LoraParams>, train: bool) -> Result<Tensor, ModelError> {
        Ok(self.hidden_states(ids, lora, train)?.apply_op1(self.head.clone())?)
    }

    /// The masked mean next-token loss of `ids` against `targets` (both
    /// `batch × len`, u32) weighted by `weights` (f32): the same value as
    /// [`masked_next_token_loss`] of [`TrainModel::forward`], without ever
    /// holding the whole logits (see [`HeadLoss`]).
    pub fn loss(
        &self,
        ids: &Tensor,
        targets: &Tensor,
        weights: &Tensor,
        lora: Option<&LoraParams>,
        train: bool,
    ) -> Result<Tensor, ModelError> {
        let x = self.hidden_states(ids, lora, train)?;
        let (b, t, h) = x.dims3()?;
        let op = HeadLoss {
            head: self.head.clone(),
            targets: Arc::new(targets.flatten_all()?.to_vec1::<u32>()?),
            weights: Arc::new(weights.flatten_all()?.to_vec1::<f32>()?),
        };
        Ok(x.reshape((b * t, h))?.apply_op1(op)?)
    }

    /// The final normed hidden states (`batch × len × hidden`).
    fn hidden_states(&self, ids: &Tensor, lora: Option<&LoraParams>, train: bool) -> Result<Tensor, ModelError> {
        let (b, t) = ids.dims2()?;
        let limit = self.ropes.first().map_or(0, |(cos, _)| cos.len() / (self.cfg.head_dim / 2).max(1));
        if t > limit {
            return Err(ModelError::Input(format!("{t} tokens exceed the {limit} positions trained here")));
        }
        let hidden = self.cfg.hidden;
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, hidden))?;
        if let Some(scale) = self.cfg.embed_scale {
            x = (x * scale as f64)?;
        }
        let eps = self.cfg.eps as f32;
        let post = |y: Tensor, norm: &Option<Arc<Vec<f32>>>| match norm {
            Some(w) => rms_norm(&y, w, eps),
            None => Ok(y),
        };
        for (l, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.attn_norm, eps)?;
            let a = post(self.attention(l, layer, &h, lora, train)?, &layer.post_attn_norm)?;
            x = (x + a)?;
            let h = rms_norm(&x, &layer.ffn_norm, eps)?;
            let g = project(layer, l, Target::Gate, &h, lora, train)?;
            let u = project(layer, l, Target::Up, &h, lora, train)?;
            let m = match self.cfg.activation {
                Activation::Silu => g.contiguous()?.apply_op2(&u.contiguous()?, SwiGlu)?,
                // candle's `gelu` is the tanh approximation (Gemma's), with a backward pass.
                Activation::GeluTanh => (g.gelu()? * u)?,
            };
            let d = post(project(layer, l, Target::Down, &m, lora, train)?, &layer.post_ffn_norm)?;
            x = (x + d)?;
        }
        rms_norm(&x, &self.norm, eps)
    }

    fn attention(
        &self,
        l: usize,
        layer: &TrainLayer,
        h: &Tensor,
        lora: Option<&LoraParams>,
        train: bool,
    ) -> Result<Tensor, ModelError> {
        let (b, t, _) = h.dims3()?;
        let (nh, nkv, hd) = (self.cfg.n_head, self.cfg.n_kv_head, self.cfg.head_dim);
        let heads = |x: Tensor, n: usize| -> Result<Tensor, ModelError> {
            Ok(x.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let mut q = heads(project(layer, l, Target::Q, h, lora, train)?, nh)?;
        let mut k = heads(project(layer, l, Target::K, h, lora, train)?, nkv)?;
        let v = heads(project(layer, l, Target::V, h, lora, train)?, nkv)?;
        let eps = self.cfg.eps as f32;
        if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
            (q, k) = (rms_norm(&q, qn, eps)?, rms_norm(&k, kn, eps)?);
        }
        let (mut q, k) = (self.rope(l, &q)?, self.rope(l, &k)?);
        if let Some(scale) = self.cfg.query_scale {
            q = (q * scale as f64)?;
        }
        // Grouped queries: the nh / nkv query heads of each k/v head stacked
        // as one (group · t) × hd block, so keys and values are not copied.
        let group = nh / nkv;
        let q = q.reshape((b, nkv, group * t, hd))?;
        let scores = q.matmul(&k.t()?)?;
        let window = self.cfg.layers.get(l).and_then(|a| a.window);
        let p = scores.contiguous()?.apply_op1(CausalSoftmax { scale: self.cfg.score_scale, window })?;
        let y = p.matmul(&v)?.reshape((b, nh, t, hd))?.transpose(1, 2)?.reshape((b, t, nh * hd))?;
        project(layer, l, Target::O, &y, lora, train)
    }

    /// Rotates every head of layer `l` by position (pairs as the GGUF's family pairs them).
    fn rope(&self, l: usize, x: &Tensor) -> Result<Tensor, ModelError> {
        let (cos, sin) = &self.ropes[self.rope_of.get(l).copied().unwrap_or(0)];
        let op = Rope { cos: cos.clone(), sin: sin.clone(), half: self.cfg.head_dim / 2, neox: self.cfg.rope_neox };
        Ok(x.contiguous()?.apply_op1(op)?)
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
    let frozen = layer.weight(target).clone();
    let Some((params, (a, b))) = lora.and_then(|p| Some((p, p.get(l, target)?))) else {
        return Ok(x.apply_op1(frozen)?);
    };
    let mask = if train && params.dropout > 0.0 {
        // Inverted dropout, as torch.nn.Dropout: kept inputs scaled by 1/(1−p).
        let keep = 1.0 / (1.0 - params.dropout);
        let draw = Tensor::rand(0f32, 1.0, x.elem_count(), x.device())?.to_vec1::<f32>()?;
        Some(Arc::new(draw.into_iter().map(|u| if u < params.dropout { 0.0 } else { keep }).collect::<Vec<f32>>()))
    } else {
        None
    };
    let op = LoraProjection { base: frozen, scale: params.alpha / params.rank as f32, mask };
    Ok(x.contiguous()?.apply_op3(a.as_tensor(), b.as_tensor(), op)?)
}

/// `x / √(mean(x²) + eps) · w` over the last dimension (frozen `w`).
fn rms_norm(x: &Tensor, w: &Arc<Vec<f32>>, eps: f32) -> Result<Tensor, ModelError> {
    Ok(x.contiguous()?.apply_op1(RmsNorm { weight: w.clone(), eps })?)
}

/// A RoPE table, `positions × head_dim/2`.
type Table = Arc<Vec<f32>>;

/// A (cos, sin) pair of tables per distinct RoPE base, and each layer's index into them.
type RopeTables = (Vec<(Table, Table)>, Vec<usize>);

/// RoPE cos/sin for every position and pair, one pair of tables per distinct
/// (base, scale) among the layers (llama-family layers share one; Gemma 3's
/// global and sliding-window layers have two), and each layer's table index.
fn rope_tables(cfg: &DecoderConfig) -> Result<RopeTables, ModelError> {
    if cfg.layers.is_empty() {
        return Err(ModelError::Format("no layers".into()));
    }
    let half = cfg.head_dim / 2;
    let positions = cfg.context_length.min(8192);
    let mut keys: Vec<(u32, u32)> = Vec::new();
    let mut tables = Vec::new();
    let mut rope_of = Vec::with_capacity(cfg.layers.len());
    for attn in &cfg.layers {
        let key = (attn.rope_base.to_bits(), attn.rope_scale.to_bits());
        if let Some(i) = keys.iter().position(|k| *k == key) {
            rope_of.push(i);
            continue;
        }
        let (mut cos, mut sin) = (Vec::with_capacity(positions * half), Vec::with_capacity(positions * half));
        // As the served decoder's tables (ggml's recurrence, scale on the angle).
        let step = attn.rope_base.powf(-2.0 / cfg.head_dim as f32);
        for p in 0..positions {
            let mut theta = p as f32;
            for _ in 0..half {
                let angle = attn.rope_scale * theta;
                cos.push(angle.cos());
                sin.push(angle.sin());
                theta *= step;
            }
        }
        rope_of.push(keys.len());
        keys.push(key);
        tables.push((Arc::new(cos), Arc::new(sin)));
    }
    Ok((tables, rope_of))
}

/// Mean cross-entropy of `logits` (`batch × len × vocab`) against the next
/// tokens `targets` (`batch × len`, u32) where `weights` (`batch × len`, f32:
/// 1 counted, 0 not) says so (one fused op, [`CrossEntropy`]).
pub fn masked_next_token_loss(logits: &Tensor, targets: &Tensor, weights: &Tensor) -> Result<Tensor, ModelError> {
    let (b, t, v) = logits.dims3()?;
    let op = CrossEntropy {
        targets: Arc::new(targets.flatten_all()?.to_vec1::<u32>()?),
        weights: Arc::new(weights.flatten_all()?.to_vec1::<f32>()?),
    };
    Ok(logits.reshape((b * t, v))?.apply_op1(op)?)
}
