//! Reading one rank's share of a decoder from its GGUF file: every tensor is
//! read, and only this rank's rows of the split matrices are kept.
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::QTensor;
use candle_core::Device;

use super::config::{DecoderConfig, Family};
use super::{Embedding, Head, Layer, RankModel};
use crate::model::kernels::rope::Rope;
use crate::model::kernels::QuantMatrix;
use crate::model::linear::Linear;
use crate::model::partition::{share, take_rows, Partition};
use crate::model::ModelError;

fn dequantized(t: &QTensor, device: &Device) -> Result<Vec<f32>, ModelError> {
    Ok(t.dequantize(device)?.flatten_all()?.to_vec1::<f32>()?)
}

/// A norm's weights, checked to have `len` values (a malformed GGUF must not
/// panic in a kernel later).
fn norm_weights(t: &QTensor, len: usize, name: &str, device: &Device) -> Result<Vec<f32>, ModelError> {
    let w = dequantized(t, device)?;
    if w.len() != len {
        return Err(ModelError::Format(format!("{name} has {} values, expected {len}", w.len())));
    }
    Ok(w)
}

impl RankModel {
    /// Loads rank `rank` of `world` from a GGUF file: reads each tensor and keeps its share.
    pub fn load(path: &Path, rank: usize, world: usize) -> Result<Self, ModelError> {
        let mut file = std::fs::File::open(path).map_err(|e| ModelError::Io(format!("{}: {e}", path.display())))?;
        let ct = Content::read(&mut file).map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
        let cfg = DecoderConfig::from_gguf(&ct)?;
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
        let gemma = cfg.family == Family::Gemma3;

        // One RoPE table per distinct (base, scale) among the layers.
        let mut ropes: Vec<Rope> = Vec::new();
        let mut rope_of: HashMap<(u32, u32), usize> = HashMap::new();
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for (l, attn) in cfg.layers.iter().enumerate() {
            let name = |s: &str| format!("blk.{l}.{s}");
            let qkv_bias =
                match (tensor(&name("attn_q.bias")), tensor(&name("attn_k.bias")), tensor(&name("attn_v.bias"))) {
                    (Ok(q), Ok(k), Ok(v)) => {
                        let (q, k, v) =
                            (dequantized(&q, &device)?, dequantized(&k, &device)?, dequantized(&v, &device)?);
                        let range = |t: &[f32], r: &Range<usize>| t.get(r.clone()).map(<[f32]>::to_vec);
                        match (range(&q, &q_rows), range(&k, &kv_rows), range(&v, &kv_rows)) {
                            (Some(q), Some(k), Some(v)) => Some([q, k, v].concat()),
                            _ => return Err(ModelError::Format(format!("layer {l}: attention biases are too short"))),
                        }
                    }
                    _ => None,
                };
            // Gemma's extra norms are required of a gemma3 file and not read otherwise.
            let mut extra = |t: &str, len: usize| -> Result<Option<Vec<f32>>, ModelError> {
                if !gemma {
                    return Ok(None);
                }
                let n = name(t);
                Ok(Some(norm_weights(&tensor(&n)?, len, &n, &device)?))
            };
            let qk_norm = match (extra("attn_q_norm.weight", hd)?, extra("attn_k_norm.weight", hd)?) {
                (Some(q), Some(k)) => Some((q, k)),
                _ => None,
            };
            let post_attn_norm = extra("post_attention_norm.weight", cfg.hidden)?;
            let post_ffn_norm = extra("post_ffw_norm.weight", cfg.hidden)?;
            let mut rows = |t: &str, r: &Range<usize>| -> Result<QTensor, ModelError> {
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
            let key = (attn.rope_base.to_bits(), attn.rope_scale.to_bits());
            let rope = *rope_of.entry(key).or_insert_with(|| {
                ropes.push(Rope::new(hd, attn.rope_base, attn.rope_scale, cfg.context_length, cfg.rope_neox));
                ropes.len() - 1
            });
            let attn_norm = name("attn_norm.weight");
            let ffn_norm = name("ffn_norm.weight");
            layers.push(Layer {
                attn_norm: norm_weights(&tensor(&attn_norm)?, cfg.hidden, &attn_norm, &device)?,
                qkv,
                qkv_bias,
                qk_norm,
                wo,
                post_attn_norm,
                ffn_norm: norm_weights(&tensor(&ffn_norm)?, cfg.hidden, &ffn_norm, &device)?,
                gate_up,
                w_down,
                post_ffn_norm,
                rope,
            });
        }
        let norm = norm_weights(&tensor("output_norm.weight")?, cfg.hidden, "output_norm.weight", &device)?;
        let embed_t = tensor("token_embd.weight")?;
        let vocab = embed_t.shape().dims2()?.0;
        let embed = match QuantMatrix::from_qtensor(&embed_t)? {
            Some(m) => Embedding::Quant(Arc::new(m)),
            None => Embedding::Candle(embed_t),
        };
        let head = match (tensor("output.weight"), &embed) {
            // Tied head: the embedding matrix itself, not a second copy; each
            // rank its share of the vocabulary.
            (Err(_), Embedding::Quant(m)) => {
                let per_rank: Vec<usize> = (0..world).map(|r| share(m.rows(), world, r).len()).collect();
                Head::Split { matrix: m.clone(), rows: share(m.rows(), world, rank), per_rank }
            }
            (Ok(t), _) => {
                let rows = t.shape().dims2()?.0;
                let mine = share(rows, world, rank);
                match QuantMatrix::from_qtensor(&take_rows(&t, mine.clone(), &device)?)? {
                    Some(m) => Head::Split {
                        rows: 0..m.rows(),
                        matrix: Arc::new(m),
                        per_rank: (0..world).map(|r| share(rows, world, r).len()).collect(),
                    },
                    None => Head::Whole(if rank == 0 { Some(Linear::new(t)?) } else { None }),
                }
            }
            (Err(_), Embedding::Candle(_)) => {
                Head::Whole(if rank == 0 { Some(Linear::new(tensor("token_embd.weight")?)?) } else { None })
            }
        };
        Ok(Self {
            ropes,
            cfg,
            part,
            embed,
            vocab,
            layers,
            norm,
            head,
            caches: HashMap::new(),
            prefixes: HashMap::new(),
            adapters: HashMap::new(),
        })
    }
}
