//! A llama-family decoder (SmolLM2, Llama, Mistral, Qwen2 GGUFs), one
//! tensor-parallel rank of it.
//!
//! Each rank holds its share of every layer (see [`super::partition`]): the query,
//! key and value heads of its k/v groups and its slice of the feed-forward
//! features (column parallel). The attention output projection and the down
//! projection are split by output row: each rank all-gathers their input and
//! computes whole dot products for its rows, then the rows are all-gathered, so
//! every output value is one dot product by the same kernel whatever the world
//! size (ARCHITECTURE.md says why this beats Megatron's row-parallel
//! all-reduce here). Embeddings, norms and the output head are replicated (only
//! rank 0 computes logits). With one rank this is a plain llama forward pass.
//!
//! A forward step takes several sequences at once, each with its own tokens
//! (a prompt chunk or one decode token) and its own KV cache: the matmuls run on
//! all tokens together, attention per sequence. That is what continuous
//! batching needs.
use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use serde::{Deserialize, Serialize};

use super::comm::Communicator;
use super::partition::{take_rows, Partition};
use super::q4_1::Q41Matrix;
use super::ModelError;

/// Shape of the model, from GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// `general.architecture` (llama, qwen2, ...).
    pub arch: String,
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
    /// RoPE frequency base.
    pub rope_base: f32,
    /// Context window (positions).
    pub context_length: usize,
    /// RoPE pairs (i, i+d/2) instead of (2i, 2i+1).
    pub rope_neox: bool,
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

impl LlamaConfig {
    /// Reads the shape of a llama-family model.
    pub fn from_gguf(ct: &Content) -> Result<Self, ModelError> {
        let arch = match ct.metadata.get("general.architecture") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(ModelError::Format("GGUF metadata lacks general.architecture".into())),
        };
        if !matches!(arch.as_str(), "llama" | "mistral" | "qwen2") {
            return Err(ModelError::Unsupported(format!(
                "architecture '{arch}' (llama, mistral and qwen2 are supported)"
            )));
        }
        let k = |s: &str| format!("{arch}.{s}");
        let n_head = meta_u32(ct, &k("attention.head_count"))?;
        let hidden = meta_u32(ct, &k("embedding_length"))?;
        let head_dim = meta_u32(ct, &k("rope.dimension_count")).unwrap_or(hidden / n_head.max(1));
        let eps = ct.metadata.get(&k("attention.layer_norm_rms_epsilon")).and_then(|v| v.to_f32().ok()).unwrap_or(1e-5)
            as f64;
        let rope_base = ct.metadata.get(&k("rope.freq_base")).and_then(|v| v.to_f32().ok()).unwrap_or(10_000.0);
        Ok(Self {
            n_layer: meta_u32(ct, &k("block_count"))?,
            n_head,
            n_kv_head: meta_u32(ct, &k("attention.head_count_kv")).unwrap_or(n_head),
            head_dim,
            hidden,
            ffn: meta_u32(ct, &k("feed_forward_length"))?,
            eps,
            rope_base,
            context_length: meta_u32(ct, &k("context_length")).unwrap_or(2048),
            rope_neox: arch == "qwen2",
            arch,
        })
    }
}

/// One sequence's part of a forward step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeqStep {
    /// Sequence id (keys the KV cache).
    pub seq: u64,
    /// Tokens to append (a prompt chunk, or one generated token).
    pub tokens: Vec<u32>,
    /// Position of the first token (= tokens already cached).
    pub start: usize,
}

struct Layer {
    attn_norm: Tensor,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    bias: Option<(Tensor, Tensor, Tensor)>,
    /// o_proj rows of this rank's share of the model width.
    wo: Linear,
    ffn_norm: Tensor,
    w_gate: Linear,
    w_up: Linear,
    /// down_proj rows of this rank's share of the model width.
    w_down: Linear,
}

/// This rank's weights and KV caches.
pub struct RankModel {
    cfg: LlamaConfig,
    part: Partition,
    embed: QTensor,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Option<Linear>,
    cos: Tensor,
    sin: Tensor,
    caches: HashMap<u64, Vec<Option<(Tensor, Tensor)>>>,
    device: Device,
}

/// A weight matrix: Q4_1 through [`Q41Matrix`] (same bits as candle, SIMD), anything else through candle.
enum Linear {
    Q41(Q41Matrix),
    Candle(QMatMul),
}

impl Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        match self {
            Linear::Q41(m) => m.forward(x),
            Linear::Candle(m) => Ok(m.forward(x)?),
        }
    }
}

fn qmm(t: QTensor) -> Result<Linear, ModelError> {
    match Q41Matrix::from_qtensor(&t)? {
        Some(m) => Ok(Linear::Q41(m)),
        None => Ok(Linear::Candle(QMatMul::from_qtensor(t)?)),
    }
}

impl RankModel {
    /// Loads rank `rank` of `world` from a GGUF file: reads each tensor and keeps its share.
    pub fn load(path: &Path, rank: usize, world: usize) -> Result<Self, ModelError> {
        let mut file = std::fs::File::open(path).map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
        let ct = Content::read(&mut file).map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
        let cfg = LlamaConfig::from_gguf(&ct)?;
        let device = Device::Cpu;
        let mut tensor = |name: &str| -> Result<QTensor, ModelError> {
            ct.tensor(&mut file, name, &device).map_err(|e| ModelError::Format(format!("tensor {name}: {e}")))
        };
        let probe = tensor("blk.0.ffn_down.weight")?;
        let part =
            Partition::new(cfg.n_head, cfg.n_kv_head, cfg.ffn, cfg.hidden, probe.dtype().block_size(), world, rank)?;
        let hd = cfg.head_dim;
        let q_rows = part.q_heads().start * hd..part.q_heads().end * hd;
        let kv_rows = part.kv_groups.start * hd..part.kv_groups.end * hd;

        let embed = tensor("token_embd.weight")?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            let name = |s: &str| format!("blk.{l}.{s}");
            let bias = match (tensor(&name("attn_q.bias")), tensor(&name("attn_k.bias")), tensor(&name("attn_v.bias")))
            {
                (Ok(q), Ok(k), Ok(v)) => Some((
                    q.dequantize(&device)?.narrow(0, q_rows.start, q_rows.len())?,
                    k.dequantize(&device)?.narrow(0, kv_rows.start, kv_rows.len())?,
                    v.dequantize(&device)?.narrow(0, kv_rows.start, kv_rows.len())?,
                )),
                _ => None,
            };
            let wo = qmm(take_rows(&tensor(&name("attn_output.weight"))?, part.hidden.clone(), &device)?)?;
            let w_down = qmm(take_rows(&tensor(&name("ffn_down.weight"))?, part.hidden.clone(), &device)?)?;
            layers.push(Layer {
                attn_norm: tensor(&name("attn_norm.weight"))?.dequantize(&device)?,
                wq: qmm(take_rows(&tensor(&name("attn_q.weight"))?, q_rows.clone(), &device)?)?,
                wk: qmm(take_rows(&tensor(&name("attn_k.weight"))?, kv_rows.clone(), &device)?)?,
                wv: qmm(take_rows(&tensor(&name("attn_v.weight"))?, kv_rows.clone(), &device)?)?,
                bias,
                wo,
                ffn_norm: tensor(&name("ffn_norm.weight"))?.dequantize(&device)?,
                w_gate: qmm(take_rows(&tensor(&name("ffn_gate.weight"))?, part.ffn.clone(), &device)?)?,
                w_up: qmm(take_rows(&tensor(&name("ffn_up.weight"))?, part.ffn.clone(), &device)?)?,
                w_down,
            });
        }
        let norm = tensor("output_norm.weight")?.dequantize(&device)?;
        let output = if rank == 0 {
            let head = match tensor("output.weight") {
                Ok(t) => t,
                Err(_) => tensor("token_embd.weight")?,
            };
            Some(qmm(head)?)
        } else {
            None
        };
        let half = hd / 2;
        let inv: Vec<f32> = (0..half).map(|i| 1.0 / cfg.rope_base.powf(2.0 * i as f32 / hd as f32)).collect();
        let positions = cfg.context_length;
        let angles: Vec<f32> = (0..positions).flat_map(|p| inv.iter().map(move |f| p as f32 * f)).collect();
        let angles = Tensor::from_vec(angles, (positions, half), &device)?;
        Ok(Self {
            cos: angles.cos()?,
            sin: angles.sin()?,
            cfg,
            part,
            embed,
            layers,
            norm,
            output,
            caches: HashMap::new(),
            device,
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// This rank's share.
    pub fn partition(&self) -> &Partition {
        &self.part
    }

    /// Sequences with a KV cache on this rank.
    pub fn cached_sequences(&self) -> usize {
        self.caches.len()
    }

    /// Drops a sequence's KV cache.
    pub fn free(&mut self, seq: u64) {
        self.caches.remove(&seq);
    }

    /// Every rank's columns of a `(rows, local)` activation, side by side in rank
    /// order: `(rows, sum of widths)`.
    fn gather_columns(&self, t: Tensor, widths: &[usize], comm: &dyn Communicator) -> Result<Tensor, ModelError> {
        if comm.world_size() == 1 {
            return Ok(t);
        }
        let rows = t.dim(0)?;
        let all = comm.all_gather(&t.flatten_all()?.to_vec1::<f32>()?)?;
        let expected: usize = widths.iter().map(|w| w * rows).sum();
        if all.len() != expected {
            return Err(ModelError::Config(format!("gathered {} values, expected {expected}", all.len())));
        }
        let mut parts = Vec::with_capacity(widths.len());
        let mut offset = 0;
        for &w in widths {
            parts.push(Tensor::from_slice(&all[offset..offset + w * rows], (rows, w), &self.device)?);
            offset += w * rows;
        }
        Ok(Tensor::cat(&parts, 1)?)
    }

    /// Runs one step over `steps` on this rank. Rank 0 returns the logits of each
    /// sequence's last token (in `steps` order); other ranks return an empty list.
    pub fn forward(&mut self, steps: &[SeqStep], comm: &dyn Communicator) -> Result<Vec<Vec<f32>>, ModelError> {
        self.check_steps(steps)?;
        let mut x = self.embed_tokens(steps)?;
        for s in steps {
            self.caches.entry(s.seq).or_insert_with(|| vec![None; self.cfg.n_layer]);
        }
        for l in 0..self.cfg.n_layer {
            let h = candle_nn::ops::rms_norm(&x, &self.layers[l].attn_norm, self.cfg.eps as f32)?;
            x = (x + self.attention(l, &h, steps, comm)?)?;
            let h = candle_nn::ops::rms_norm(&x, &self.layers[l].ffn_norm, self.cfg.eps as f32)?;
            x = (x + self.feed_forward(l, &h, comm)?)?;
        }
        self.logits(&x, steps)
    }

    /// Refuses steps that cannot run: no tokens, past the context, or not
    /// starting where the sequence's cache ends.
    fn check_steps(&self, steps: &[SeqStep]) -> Result<(), ModelError> {
        for s in steps {
            if s.tokens.is_empty() {
                return Err(ModelError::Input(format!("sequence {} has no tokens in this step", s.seq)));
            }
            if s.start + s.tokens.len() > self.cfg.context_length {
                return Err(ModelError::Input(format!(
                    "sequence {} would exceed the context of {} tokens",
                    s.seq, self.cfg.context_length
                )));
            }
            let cached = self.caches.get(&s.seq).and_then(|c| c[0].as_ref()).map_or(0, |(k, _)| k.dim(2).unwrap_or(0));
            if cached != s.start {
                return Err(ModelError::Input(format!(
                    "sequence {} starts at {} but {cached} positions are cached",
                    s.seq, s.start
                )));
            }
        }
        Ok(())
    }

    /// The embeddings of every step's tokens, one row each, in step order.
    fn embed_tokens(&self, steps: &[SeqStep]) -> Result<Tensor, ModelError> {
        let ids: Vec<u32> = steps.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= self.embed.shape().dims()[0]) {
            return Err(ModelError::Input(format!("token id {bad} is outside the vocabulary")));
        }
        let total = ids.len();
        Ok(self.embed.embedding(&Tensor::from_vec(ids, (total,), &self.device)?)?)
    }

    /// Layer `l`'s attention block over the normed input `h`: q/k/v for this
    /// rank's heads over all tokens, attention per sequence against its cache,
    /// then the output projection by output row after gathering the heads.
    fn attention(
        &mut self,
        l: usize,
        h: &Tensor,
        steps: &[SeqStep],
        comm: &dyn Communicator,
    ) -> Result<Tensor, ModelError> {
        let layer = &self.layers[l];
        let (mut q, mut k, mut v) = (layer.wq.forward(h)?, layer.wk.forward(h)?, layer.wv.forward(h)?);
        if let Some((bq, bk, bv)) = &layer.bias {
            q = q.broadcast_add(bq)?;
            k = k.broadcast_add(bk)?;
            v = v.broadcast_add(bv)?;
        }
        let mut outs = Vec::with_capacity(steps.len());
        let mut offset = 0;
        for s in steps {
            let len = s.tokens.len();
            outs.push(self.sequence_attention(
                l,
                s,
                &q.narrow(0, offset, len)?,
                &k.narrow(0, offset, len)?,
                &v.narrow(0, offset, len)?,
            )?);
            offset += len;
        }
        let y = Tensor::cat(&outs, 0)?;
        let hd = self.cfg.head_dim;
        let heads: Vec<usize> = self.part.heads_per_rank().iter().map(|h| h * hd).collect();
        let y = self.gather_columns(y, &heads, comm)?;
        self.gather_columns(self.layers[l].wo.forward(&y)?, &self.part.hidden_per_rank(), comm)
    }

    /// One sequence's attention in layer `l`: rope, append to its KV cache,
    /// causal softmax over the cache. `q`, `k`, `v` are its rows only.
    fn sequence_attention(
        &mut self,
        l: usize,
        s: &SeqStep,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor, ModelError> {
        let (hd, nq, nkv) = (self.cfg.head_dim, self.part.q_heads().len(), self.part.kv_groups.len());
        let len = s.tokens.len();
        let heads = |t: &Tensor, n: usize| -> candle_core::Result<Tensor> {
            t.reshape((1, len, n, hd))?.transpose(1, 2)?.contiguous()
        };
        let cos = self.cos.narrow(0, s.start, len)?;
        let sin = self.sin.narrow(0, s.start, len)?;
        let neox = self.cfg.rope_neox;
        let rope = |t: Tensor| {
            if neox {
                candle_nn::rotary_emb::rope(&t, &cos, &sin)
            } else {
                candle_nn::rotary_emb::rope_i(&t, &cos, &sin)
            }
        };
        let qs = rope(heads(q, nq)?)?;
        let ks = rope(heads(k, nkv)?)?;
        let vs = heads(v, nkv)?;
        let slot = &mut self.caches.get_mut(&s.seq).expect("cache created in forward")[l];
        let (ks, vs) = match slot.take() {
            Some((kc, vc)) => (Tensor::cat(&[&kc, &ks], 2)?, Tensor::cat(&[&vc, &vs], 2)?),
            None => (ks, vs),
        };
        *slot = Some((ks.clone(), vs.clone()));
        let rep = self.part.heads_per_group;
        let ks = candle_transformers::utils::repeat_kv(ks, rep)?.contiguous()?;
        let vs = candle_transformers::utils::repeat_kv(vs, rep)?.contiguous()?;
        let att = (qs.matmul(&ks.t()?)? / (hd as f64).sqrt())?;
        let att = if len > 1 {
            let kv_len = s.start + len;
            let mask: Vec<f32> = (0..len)
                .flat_map(|i| (0..kv_len).map(move |j| if j > s.start + i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            att.broadcast_add(&Tensor::from_vec(mask, (len, kv_len), &self.device)?)?
        } else {
            att
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        Ok(att.matmul(&vs)?.transpose(1, 2)?.reshape((len, nq * hd))?)
    }

    /// Layer `l`'s SwiGLU feed-forward over the normed input `h`; the down
    /// projection by output row after gathering the features.
    fn feed_forward(&self, l: usize, h: &Tensor, comm: &dyn Communicator) -> Result<Tensor, ModelError> {
        let layer = &self.layers[l];
        let m = (candle_nn::ops::silu(&layer.w_gate.forward(h)?)? * layer.w_up.forward(h)?)?;
        let m = self.gather_columns(m, &self.part.ffn_per_rank(), comm)?;
        self.gather_columns(layer.w_down.forward(&m)?, &self.part.hidden_per_rank(), comm)
    }

    /// Rank 0: logits of each sequence's last token; other ranks: nothing.
    fn logits(&self, x: &Tensor, steps: &[SeqStep]) -> Result<Vec<Vec<f32>>, ModelError> {
        let Some(output) = &self.output else {
            return Ok(Vec::new());
        };
        let mut last = Vec::with_capacity(steps.len());
        let mut end = 0u32;
        for s in steps {
            end += s.tokens.len() as u32;
            last.push(end - 1);
        }
        let x = x.index_select(&Tensor::new(last.as_slice(), &self.device)?, 0)?;
        let x = candle_nn::ops::rms_norm(&x, &self.norm, self.cfg.eps as f32)?;
        let logits = output.forward(&x)?.to_dtype(DType::F32)?;
        Ok(logits.to_vec2::<f32>()?)
    }
}
