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
//! all tokens together (q|k|v and gate|up fused into one matmul each), attention
//! for every (sequence, token, head) in parallel. That is what continuous
//! batching needs. Activations are plain `tokens × width` f32 buffers and every
//! hot op is one of [`super::kernels`]; candle reads the GGUF and runs the
//! matmuls of weight types without a kernel here.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::comm::Communicator;
use super::kernels::attention::{self, Heads, SeqView};
use super::kernels::norm::{add_in_place, rms_norm, silu_mul};
use super::kernels::rope::Rope;
use super::kernels::QuantMatrix;
use super::kv_cache::SeqCache;
use super::linear::Linear;
use super::partition::{take_rows, Partition};
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
    attn_norm: Vec<f32>,
    /// This rank's query heads, then its key and value groups, one matrix.
    qkv: Linear,
    /// Biases of `qkv` (Qwen2), in the same column order.
    qkv_bias: Option<Vec<f32>>,
    /// o_proj rows of this rank's share of the model width.
    wo: Linear,
    ffn_norm: Vec<f32>,
    /// gate_proj then up_proj rows of this rank's feature share, one matrix.
    gate_up: Linear,
    /// down_proj rows of this rank's share of the model width.
    w_down: Linear,
}

/// Token embeddings: rows of a kernel matrix (shared with a tied output head), or candle's lookup.
enum Embedding {
    Quant(Arc<QuantMatrix>),
    Candle(QTensor),
}

/// This rank's weights and KV caches.
pub struct RankModel {
    cfg: LlamaConfig,
    part: Partition,
    embed: Embedding,
    vocab: usize,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    output: Option<Linear>,
    rope: Rope,
    caches: HashMap<u64, SeqCache>,
}

fn dequantized(t: &QTensor, device: &Device) -> Result<Vec<f32>, ModelError> {
    Ok(t.dequantize(device)?.flatten_all()?.to_vec1::<f32>()?)
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

        let mut layers = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            let name = |s: &str| format!("blk.{l}.{s}");
            let qkv_bias =
                match (tensor(&name("attn_q.bias")), tensor(&name("attn_k.bias")), tensor(&name("attn_v.bias"))) {
                    (Ok(q), Ok(k), Ok(v)) => {
                        let (q, k, v) =
                            (dequantized(&q, &device)?, dequantized(&k, &device)?, dequantized(&v, &device)?);
                        let range = |t: &[f32], r: &std::ops::Range<usize>| t.get(r.clone()).map(<[f32]>::to_vec);
                        match (range(&q, &q_rows), range(&k, &kv_rows), range(&v, &kv_rows)) {
                            (Some(q), Some(k), Some(v)) => Some([q, k, v].concat()),
                            _ => return Err(ModelError::Format(format!("layer {l}: attention biases are too short"))),
                        }
                    }
                    _ => None,
                };
            let mut rows = |t: &str, r: &std::ops::Range<usize>| -> Result<QTensor, ModelError> {
                take_rows(&tensor(&name(t))?, r.clone(), &device)
            };
            let qkv = Linear::stacked(vec![
                rows("attn_q.weight", &q_rows)?,
                rows("attn_k.weight", &kv_rows)?,
                rows("attn_v.weight", &kv_rows)?,
            ])?;
            let gate_up =
                Linear::stacked(vec![rows("ffn_gate.weight", &part.ffn)?, rows("ffn_up.weight", &part.ffn)?])?;
            let wo = Linear::new(rows("attn_output.weight", &part.hidden)?)?;
            let w_down = Linear::new(rows("ffn_down.weight", &part.hidden)?)?;
            layers.push(Layer {
                attn_norm: dequantized(&tensor(&name("attn_norm.weight"))?, &device)?,
                qkv,
                qkv_bias,
                wo,
                ffn_norm: dequantized(&tensor(&name("ffn_norm.weight"))?, &device)?,
                gate_up,
                w_down,
            });
        }
        let norm = dequantized(&tensor("output_norm.weight")?, &device)?;
        let embed_t = tensor("token_embd.weight")?;
        let vocab = embed_t.shape().dims2()?.0;
        let embed = match QuantMatrix::from_qtensor(&embed_t)? {
            Some(m) => Embedding::Quant(Arc::new(m)),
            None => Embedding::Candle(embed_t),
        };
        let output = if rank == 0 {
            Some(match (tensor("output.weight"), &embed) {
                (Ok(t), _) => Linear::new(t)?,
                // Tied head: the embedding matrix itself, not a second copy.
                (Err(_), Embedding::Quant(m)) => Linear::Quant(m.clone()),
                (Err(_), Embedding::Candle(_)) => Linear::new(tensor("token_embd.weight")?)?,
            })
        } else {
            None
        };
        let rope = Rope::new(hd, cfg.rope_base, cfg.context_length, cfg.rope_neox);
        Ok(Self { rope, cfg, part, embed, vocab, layers, norm, output, caches: HashMap::new() })
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

    /// Bytes of KV cache held on this rank.
    pub fn cache_bytes(&self) -> usize {
        self.caches.values().map(SeqCache::bytes).sum()
    }

    /// Bytes of weights one decode step streams on this rank (every layer's
    /// matrices, plus the output head on rank 0).
    pub fn weight_bytes(&self) -> usize {
        let layers: usize =
            self.layers.iter().map(|l| l.qkv.bytes() + l.wo.bytes() + l.gate_up.bytes() + l.w_down.bytes()).sum();
        layers + self.output.as_ref().map_or(0, Linear::bytes)
    }

    /// Drops a sequence's KV cache.
    pub fn free(&mut self, seq: u64) {
        self.caches.remove(&seq);
    }

    fn heads(&self) -> Heads {
        Heads { n_q: self.part.q_heads().len(), n_kv: self.part.kv_groups.len(), head_dim: self.cfg.head_dim }
    }

    /// Every rank's columns of a `rows × local` activation, side by side in rank
    /// order: `rows × (sum of widths)`.
    fn gather_columns(
        &self,
        t: Vec<f32>,
        rows: usize,
        widths: &[usize],
        comm: &dyn Communicator,
    ) -> Result<Vec<f32>, ModelError> {
        if comm.world_size() == 1 {
            return Ok(t);
        }
        let all = comm.all_gather(&t)?;
        let expected: usize = widths.iter().map(|w| w * rows).sum();
        if all.len() != expected {
            return Err(ModelError::Config(format!("gathered {} values, expected {expected}", all.len())));
        }
        let total: usize = widths.iter().sum();
        let mut out = vec![0f32; rows * total];
        let (mut src, mut col) = (0, 0);
        for &w in widths {
            for r in 0..rows {
                out[r * total + col..r * total + col + w].copy_from_slice(&all[src + r * w..src + (r + 1) * w]);
            }
            src += w * rows;
            col += w;
        }
        Ok(out)
    }

    /// Runs one step over `steps` on this rank. Rank 0 returns the logits of each
    /// sequence's last token (in `steps` order); other ranks return an empty list.
    pub fn forward(&mut self, steps: &[SeqStep], comm: &dyn Communicator) -> Result<Vec<Vec<f32>>, ModelError> {
        self.check_steps(steps)?;
        let mut x = self.embed_tokens(steps)?;
        let n = x.len() / self.cfg.hidden;
        let width = self.part.kv_groups.len() * self.cfg.head_dim;
        for s in steps {
            self.caches.entry(s.seq).or_insert_with(|| SeqCache::new(self.cfg.n_layer, width));
        }
        let eps = self.cfg.eps as f32;
        let mut h = vec![0f32; x.len()];
        for l in 0..self.cfg.n_layer {
            rms_norm(&x, &self.layers[l].attn_norm, eps, &mut h);
            add_in_place(&mut x, &self.attention(l, &h, n, steps, comm)?);
            rms_norm(&x, &self.layers[l].ffn_norm, eps, &mut h);
            add_in_place(&mut x, &self.feed_forward(l, &h, n, comm)?);
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
            let cached = self.caches.get(&s.seq).map_or(0, SeqCache::positions);
            if cached != s.start {
                return Err(ModelError::Input(format!(
                    "sequence {} starts at {} but {cached} positions are cached",
                    s.seq, s.start
                )));
            }
            if steps.iter().filter(|o| o.seq == s.seq).count() > 1 {
                return Err(ModelError::Input(format!("sequence {} appears twice in one step", s.seq)));
            }
        }
        Ok(())
    }

    /// The embeddings of every step's tokens, one row each, in step order.
    fn embed_tokens(&self, steps: &[SeqStep]) -> Result<Vec<f32>, ModelError> {
        let ids: Vec<u32> = steps.iter().flat_map(|s| s.tokens.iter().copied()).collect();
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= self.vocab) {
            return Err(ModelError::Input(format!("token id {bad} is outside the vocabulary")));
        }
        match &self.embed {
            Embedding::Quant(m) => {
                let mut x = Vec::with_capacity(ids.len() * self.cfg.hidden);
                for &t in &ids {
                    x.extend(
                        m.dequantize_row(t as usize)
                            .ok_or_else(|| ModelError::Input(format!("token id {t} is outside the vocabulary")))?,
                    );
                }
                Ok(x)
            }
            Embedding::Candle(e) => {
                let total = ids.len();
                let ids = Tensor::from_vec(ids, (total,), &Device::Cpu)?;
                Ok(e.embedding(&ids)?.flatten_all()?.to_vec1::<f32>()?)
            }
        }
    }

    /// Layer `l`'s attention block over the normed input `h` (`n` rows): fused
    /// q|k|v for this rank's heads, RoPE, keys and values
    /// appended to each sequence's cache, attention, then the output projection
    /// by output row after gathering the heads.
    fn attention(
        &mut self,
        l: usize,
        h: &[f32],
        n: usize,
        steps: &[SeqStep],
        comm: &dyn Communicator,
    ) -> Result<Vec<f32>, ModelError> {
        let heads = self.heads();
        let (hd, w) = (heads.head_dim, heads.qkv_width());
        let mut qkv = self.layers[l].qkv.matmul(h, n)?;
        if let Some(bias) = &self.layers[l].qkv_bias {
            for row in qkv.chunks_exact_mut(w) {
                add_in_place(row, bias);
            }
        }
        let (q_w, kv_w) = (heads.n_q * hd, heads.n_kv * hd);
        // RoPE on each row's query and key heads, then its keys and values into
        // the sequence's cache; attention below reads the caches shared.
        let mut rows = qkv.chunks_exact_mut(w);
        for s in steps {
            let cache = self.caches.get_mut(&s.seq).ok_or_else(|| ModelError::Input("no cache".into()))?;
            for (pos, r) in (s.start..s.start + s.tokens.len()).zip(rows.by_ref()) {
                for head in r[..q_w + kv_w].chunks_exact_mut(hd) {
                    self.rope.apply(head, pos);
                }
                cache.append(l, &r[q_w..q_w + kv_w], &r[q_w + kv_w..]);
            }
        }
        let views = steps
            .iter()
            .map(|s| {
                let kv = self.caches.get(&s.seq).ok_or_else(|| ModelError::Input("no cache".into()))?.layer(l);
                Ok(SeqView { kv, start: s.start, len: s.tokens.len() })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let y = attention::attend(heads, &qkv, &views, 1.0 / (hd as f32).sqrt());
        let widths: Vec<usize> = self.part.heads_per_rank().iter().map(|h| h * hd).collect();
        let y = self.gather_columns(y, n, &widths, comm)?;
        let out = self.layers[l].wo.matmul(&y, n)?;
        self.gather_columns(out, n, &self.part.hidden_per_rank(), comm)
    }

    /// Layer `l`'s SwiGLU feed-forward over the normed input `h`; the down
    /// projection by output row after gathering the features.
    fn feed_forward(&self, l: usize, h: &[f32], n: usize, comm: &dyn Communicator) -> Result<Vec<f32>, ModelError> {
        let layer = &self.layers[l];
        let m = silu_mul(&layer.gate_up.matmul(h, n)?, self.part.ffn.len());
        let m = self.gather_columns(m, n, &self.part.ffn_per_rank(), comm)?;
        self.gather_columns(layer.w_down.matmul(&m, n)?, n, &self.part.hidden_per_rank(), comm)
    }

    /// Rank 0: logits of each sequence's last token; other ranks: nothing.
    fn logits(&self, x: &[f32], steps: &[SeqStep]) -> Result<Vec<Vec<f32>>, ModelError> {
        let Some(output) = &self.output else {
            return Ok(Vec::new());
        };
        let hidden = self.cfg.hidden;
        let mut last = Vec::with_capacity(steps.len() * hidden);
        let mut end = 0;
        for s in steps {
            end += s.tokens.len();
            last.extend_from_slice(&x[(end - 1) * hidden..end * hidden]);
        }
        let mut normed = vec![0f32; last.len()];
        rms_norm(&last, &self.norm, self.cfg.eps as f32, &mut normed);
        let logits = output.matmul(&normed, steps.len())?;
        let vocab = output.rows();
        Ok(logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }
}
