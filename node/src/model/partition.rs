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
///
/// With more ranks than key/value heads (Gemma 3 270M has one), each group is
/// replicated: `world / n_kv_head` ranks compute the group's key and value
/// head (a small matrix, computed identically on each) and split its query
/// heads, so every rank still reads only its own group.
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
    q: Range<usize>,
    world: usize,
    n_head: usize,
    n_kv_head: usize,
    ffn_total: usize,
    hidden_total: usize,
    block: usize,
}

/// The key/value groups and query heads of `rank`.
fn heads_of(n_head: usize, n_kv_head: usize, world: usize, rank: usize) -> (Range<usize>, Range<usize>) {
    let per_group = n_head / n_kv_head;
    if world <= n_kv_head {
        let kv = share(n_kv_head, world, rank);
        let q = kv.start * per_group..kv.end * per_group;
        return (kv, q);
    }
    let replicas = world / n_kv_head;
    let (group, sub) = (rank / replicas, rank % replicas);
    let q = share(per_group, replicas, sub);
    (group..group + 1, group * per_group + q.start..group * per_group + q.end)
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
        let per_group = n_head / n_kv_head;
        if world > n_kv_head && (!world.is_multiple_of(n_kv_head) || world / n_kv_head > per_group) {
            return Err(ModelError::Config(format!(
                "tensor-parallel world size {world} does not fit the model's {n_kv_head} key/value heads and \
                 {n_head} query heads: use at most {n_kv_head} ranks, or a multiple of {n_kv_head} no larger than {n_head}"
            )));
        }
        if !ffn.is_multiple_of(block) {
            return Err(ModelError::Config(format!(
                "feed-forward size {ffn} is not a multiple of the quantization block {block}"
            )));
        }
        let units = share(ffn / block, world, rank);
        let (kv_groups, q) = heads_of(n_head, n_kv_head, world, rank);
        Ok(Self {
            kv_groups,
            heads_per_group: per_group,
            ffn: units.start * block..units.end * block,
            hidden: share(hidden, world, rank),
            q,
            world,
            n_head,
            n_kv_head,
            ffn_total: ffn,
            hidden_total: hidden,
            block,
        })
    }

    /// Query heads of this rank.
    pub fn q_heads(&self) -> Range<usize> {
        self.q.clone()
    }

    /// Query heads of every rank, in rank order (to reassemble gathered attention outputs).
    pub fn heads_per_rank(&self) -> Vec<usize> {
        (0..self.world).map(|r| heads_of(self.n_head, self.n_kv_head, self.world, r).1.len()).collect()
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
    fn a_single_kv_head_is_replicated_and_its_query_heads_split() {
        // Gemma 3 270M: 4 query heads, 1 k/v head.
        let ranks: Vec<_> = (0..2).map(|r| Partition::new(4, 1, 2048, 640, 256, 2, r).unwrap()).collect();
        assert_eq!((ranks[0].kv_groups.clone(), ranks[0].q_heads()), (0..1, 0..2));
        assert_eq!((ranks[1].kv_groups.clone(), ranks[1].q_heads()), (0..1, 2..4));
        assert_eq!(ranks[1].heads_per_rank(), vec![2, 2]);
        let four: Vec<_> = (0..4).map(|r| Partition::new(4, 1, 2048, 640, 256, 4, r).unwrap().q_heads()).collect();
        assert_eq!(four, vec![0..1, 1..2, 2..3, 3..4]);
        // 2 groups of 3 over 6 ranks: each group on 3 ranks, one query head each.
        let p = Partition::new(6, 2, 64, 64, 32, 6, 4).unwrap();
        assert_eq!((p.kv_groups.clone(), p.q_heads()), (1..2, 4..5));
        // Query heads may split unevenly; more ranks than query heads, or a
        // world size that is not a multiple of the k/v heads, is refused with a reason.
        let three: Vec<_> = (0..3).map(|r| Partition::new(4, 1, 2048, 640, 256, 3, r).unwrap().q_heads()).collect();
        assert_eq!(three, vec![0..2, 2..3, 3..4]);
        for (world, heads, kv) in [(8, 4, 1), (3, 4, 2)] {
            let e = Partition::new(heads, kv, 2048, 640, 256, world, 0).unwrap_err().to_string();
            assert!(e.contains("does not fit"), "{e}");
        }
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
