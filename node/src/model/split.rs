//! Megatron-style splitting of quantized weights over tensor-parallel ranks.
//!
//! Weights stay quantized: a column-parallel layer (q, k, v, gate, up) keeps
//! whole rows (output features) of the GGUF matrix, a row-parallel layer
//! (o_proj, down) keeps a block-aligned range of every row (input features).
//! Both are byte-range copies of the quantized blocks, never a dequantisation.
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
#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    /// Key/value head groups of this rank (each group = its query heads + one k/v head).
    pub kv_groups: Range<usize>,
    /// Query heads per k/v group.
    pub heads_per_group: usize,
    /// Feed-forward features of this rank (block aligned).
    pub ffn: Range<usize>,
}

impl Partition {
    /// Splits `n_kv_head` groups and `ffn` features (in units of `block`) over `world` ranks.
    pub fn new(n_head: usize, n_kv_head: usize, ffn: usize, block: usize, world: usize, rank: usize) -> Result<Self, ModelError> {
        if world == 0 || rank >= world {
            return Err(ModelError::Config(format!("rank {rank} of world size {world}")));
        }
        if n_kv_head == 0 || n_head % n_kv_head != 0 {
            return Err(ModelError::Config(format!("{n_head} query heads do not group over {n_kv_head} k/v heads")));
        }
        if world > n_kv_head {
            return Err(ModelError::Config(format!(
                "tensor-parallel world size {world} is larger than the model's {n_kv_head} key/value heads"
            )));
        }
        if ffn % block != 0 {
            return Err(ModelError::Config(format!("feed-forward size {ffn} is not a multiple of the quantization block {block}")));
        }
        let units = share(ffn / block, world, rank);
        Ok(Self {
            kv_groups: share(n_kv_head, world, rank),
            heads_per_group: n_head / n_kv_head,
            ffn: units.start * block..units.end * block,
        })
    }

    /// Query heads of this rank.
    pub fn q_heads(&self) -> Range<usize> {
        self.kv_groups.start * self.heads_per_group..self.kv_groups.end * self.heads_per_group
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

/// Columns `cols` of every row (row parallel: input features); `cols` must fall on block boundaries.
pub fn take_cols(t: &QTensor, cols: Range<usize>, device: &Device) -> Result<QTensor, ModelError> {
    let (n_rows, n_cols) = dims2(t)?;
    let dtype = t.dtype();
    let block = dtype.block_size();
    if cols.end > n_cols || cols.start % block != 0 || cols.end % block != 0 {
        return Err(ModelError::Format(format!(
            "columns {cols:?} of a {n_cols}-column {dtype:?} matrix are not aligned to its {block}-element blocks"
        )));
    }
    let row_bytes = n_cols / block * dtype.type_size();
    let (from, to) = (cols.start / block * dtype.type_size(), cols.end / block * dtype.type_size());
    let data = t.data()?;
    let mut out = Vec::with_capacity(n_rows * (to - from));
    for r in 0..n_rows {
        out.extend_from_slice(&data[r * row_bytes + from..r * row_bytes + to]);
    }
    Ok(qtensor_from_ggml(dtype, &out, vec![n_rows, cols.len()], device)?)
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
        let p = Partition::new(9, 3, 1536, 32, 2, 1).unwrap();
        assert_eq!((p.kv_groups.clone(), p.q_heads(), p.ffn.clone()), (2..3, 6..9, 768..1536));
        assert!(Partition::new(9, 3, 1536, 32, 4, 0).is_err());
    }

    #[test]
    fn quantized_slices_equal_slices_of_the_dequantized_matrix() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (8, 128), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let full = q.dequantize(&dev).unwrap();
        let rows = take_rows(&q, 2..5, &dev).unwrap().dequantize(&dev).unwrap();
        assert_eq!(rows.to_vec2::<f32>().unwrap(), full.i(2..5).unwrap().to_vec2::<f32>().unwrap());
        let cols = take_cols(&q, 32..96, &dev).unwrap().dequantize(&dev).unwrap();
        assert_eq!(cols.to_vec2::<f32>().unwrap(), full.i((.., 32..96)).unwrap().to_vec2::<f32>().unwrap());
        assert!(take_cols(&q, 16..48, &dev).is_err());
    }
}
