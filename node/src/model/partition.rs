//! Megatron-style splitting of quantized weights over tensor-parallel ranks.
//!
//! Weights stay quantized: every split layer keeps whole rows (output
//! features) of the GGUF matrix, a byte-range copy of its quantized blocks,
//! never a dequantisation.
use std::ops::Range;

use candle_core::quantized::{ggml_file::qtensor_from_ggml, QTensor};
use candle_core::Device;

use super::ModelError;

/// The contiguous piece of `total` units that `rank` of `world` owns, the first
/// `total % world` ranks taking one unit more (uneven splits are allowed).
pub fn share(total: usize, world: usize, rank: usize) -> Range<usize> {
    let base = total / world;
    let extra = total % world;
    let start = rank * base + rank.min(extra);
    let len = base + usize::from(rank < extra);
    start..start + len
}

/// How one model's work is divided among ranks.
///
/// q, k, v (by key/value head group) and gate, up (by feed-forward feature) are
/// split by output rows. o_proj and down are split by output rows too, after
/// their input is all-gathered, rather than by input columns followed by an
/// all-reduce: each output value is then one whole dot product, computed by
/// exactly the same kernel as with one rank, so every world size produces the
/// same bits as world size 1. (With the input split, the float rounding of
/// the partial sums changes with the world size, and since the next layer
/// quantises its input to 8 bits, those last-bit differences grow into logit
/// differences of ~1% by the last layer.) The price is two all-gathers per
/// sub-layer instead of one all-reduce, which is small next to the matmuls on
/// a CPU.
#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    /// Key/value head groups of this rank (each group = its query heads + one k/v head).
    pub kv_groups: Range<usize>,
    /// Query heads per k/v group.
    pub heads_per_group: usize,
    /// Feed-forward features of this rank (block aligned).
    pub ffn: Range<usize>,
    /// Output features (model width) of this rank's o_proj and down rows.
    pub hidden: Range<usize>,
    world: usize,
    n_kv_head: usize,
    ffn_total: usize,
    hidden_total: usize,
    block: usize,
}

impl Partition {
    /// Splits a model with these sizes over `world` ranks (`block` = quantization block).
    pub fn new(
        n_head: usize,
        n_kv_head: usize,
        ffn: usize,
        hidden: usize,
        block: usize,
        world: usize,
        rank: usize,
    ) -> Result<Self, ModelError> {
        if world == 0 || rank >= world {
            return Err(ModelError::Config(format!("rank {rank} of world size {world}")));
        }
        if n_kv_head == 0 || !n_head.is_multiple_of(n_kv_head) {
            return Err(ModelError::Config(format!("{n_head} query heads do not group over {n_kv_head} k/v heads")));
        }
        if world > n_kv_head {
            return Err(ModelError::Config(format!(
                "tensor-parallel world size {world} is larger than the model's {n_kv_head} key/value heads"
            )));
        }
        if !ffn.is_multiple_of(block) {
            return Err(ModelError::Config(format!(
                "feed-forward size {ffn} is not a multiple of the quantization block {block}"
            )));
        }
        let units = share(ffn / block, world, rank);
        Ok(Self {
            kv_groups: share(n_kv_head, world, rank),
            heads_per_group: n_head / n_kv_head,
            ffn: units.start * block..units.end * block,
            hidden: share(hidden, world, rank),
            world,
            n_kv_head,
            ffn_total: ffn,
            hidden_total: hidden,
            block,
        })
    }

    /// Query heads of this rank.
    pub fn q_heads(&self) -> Range<usize> {
        self.kv_groups.start * self.heads_per_group..self.kv_groups.end * self.heads_per_group
    }

    /// Query heads of every rank, in rank order (to reassemble gathered attention outputs).
    pub fn heads_per_rank(&self) -> Vec<usize> {
        (0..self.world).map(|r| share(self.n_kv_head, self.world, r).len() * self.heads_per_group).collect()
    }

    /// Feed-forward features of every rank, in rank order.
    pub fn ffn_per_rank(&self) -> Vec<usize> {
        (0..self.world).map(|r| share(self.ffn_total / self.block, self.world, r).len() * self.block).collect()
    }

    /// Model-width rows of every rank, in rank order.
    pub fn hidden_per_rank(&self) -> Vec<usize> {
        (0..self.world).map(|r| share(self.hidden_total, self.world, r).len()).collect()
    }
}

fn dims2(t: &QTensor) -> Result<(usize, usize), ModelError> {
    match t.shape().dims() {
        [rows, cols] => Ok((*rows, *cols)),
        d => Err(ModelError::Format(format!("expected a matrix, got shape {d:?}"))),
    }
}

/// Rows `rows` of a quantized `[out, in]` matrix (column parallel: output features).
pub fn take_rows(t: &QTensor, rows: Range<usize>, device: &Device) -> Result<QTensor, ModelError> {
    let (n_rows, n_cols) = dims2(t)?;
    if rows.end > n_rows {
        return Err(ModelError::Format(format!("rows {rows:?} of a {n_rows}-row matrix")));
    }
    let dtype = t.dtype();
    let row_bytes = n_cols / dtype.block_size() * dtype.type_size();
    let data = t.data()?;
    let slice = &data[rows.start * row_bytes..rows.end * row_bytes];
    Ok(qtensor_from_ggml(dtype, slice, vec![rows.len(), n_cols], device)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;
    use candle_core::{IndexOp, Tensor};

    #[test]
    fn shares_cover_the_whole_unevenly() {
        assert_eq!((0..2).map(|r| share(3, 2, r)).collect::<Vec<_>>(), vec![0..2, 2..3]);
        assert_eq!((0..3).map(|r| share(48, 3, r)).collect::<Vec<_>>(), vec![0..16, 16..32, 32..48]);
        let p = Partition::new(9, 3, 1536, 576, 32, 2, 1).unwrap();
        assert_eq!(
            (p.kv_groups.clone(), p.q_heads(), p.ffn.clone(), p.hidden.clone()),
            (2..3, 6..9, 768..1536, 288..576)
        );
        assert_eq!(
            (p.heads_per_rank(), p.ffn_per_rank(), p.hidden_per_rank()),
            (vec![6, 3], vec![768, 768], vec![288, 288])
        );
        assert!(Partition::new(9, 3, 1536, 576, 32, 4, 0).is_err());
    }

    #[test]
    fn quantized_row_slices_equal_slices_of_the_dequantized_matrix() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (8, 128), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let full = q.dequantize(&dev).unwrap();
        let rows = take_rows(&q, 2..5, &dev).unwrap().dequantize(&dev).unwrap();
        assert_eq!(rows.to_vec2::<f32>().unwrap(), full.i(2..5).unwrap().to_vec2::<f32>().unwrap());
    }
}
