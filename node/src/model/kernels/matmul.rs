//! Quantised weight matrices with this crate's own kernels: `x · Wᵀ` for Q4_1,
//! Q5_0 and Q8_0 weights (the types of the default model, and Gemma 3's q, k,
//! gate, up and embedding), parallel over weight rows, each weight row read
//! once per step for every activation row.
//!
//! Other GGUF types go through candle (see `model::linear`); these three are
//! the ones whose candle CPU path is slow (Q4_1 and Q5_0: the scalar
//! `vec_dot_unopt`; Q8_0: no register blocking).
use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;
use rayon::prelude::*;

use super::q4_1::Q41Row;
use super::q5_0::Q50Row;
use super::q8_0::Q80Row;
use super::quantize::{Q8Acts, BLOCK};
use super::{q4_1, q5_0, q8_0, simd};
use crate::model::ModelError;

/// The block formats with a kernel here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantKind {
    /// 4-bit values with a scale and a minimum per block.
    Q4_1,
    /// 5-bit values (a nibble and a high bit) with a scale per block.
    Q5_0,
    /// 8-bit values with a scale per block.
    Q8_0,
}

impl QuantKind {
    /// Bytes of one GGUF block.
    fn block_bytes(self) -> usize {
        match self {
            QuantKind::Q4_1 => 20,
            QuantKind::Q5_0 => 22,
            QuantKind::Q8_0 => 34,
        }
    }

    /// Bytes of quantised values in one block.
    fn value_bytes(self) -> usize {
        match self {
            QuantKind::Q4_1 | QuantKind::Q5_0 => 16,
            QuantKind::Q8_0 => 32,
        }
    }
}

/// A `[rows, cols]` weight matrix: the GGUF blocks row after row, split into
/// their values, scales, (Q4_1) minimums and (Q5_0) high bits — the same
/// bytes as the file, laid out so the kernels widen eight scales at once.
pub struct QuantMatrix {
    kind: QuantKind,
    rows: usize,
    cols: usize,
    qs: Vec<u8>,
    d: Vec<u16>,
    m: Vec<u16>,
    qh: Vec<u32>,
}

/// Weight rows per parallel task: enough work to amortise the hand-off.
const ROWS_PER_TASK: usize = 16;

/// Activation rows a task runs through its weight rows at a time, so that
/// tile (64 × 1536 bytes at most here) stays in L1/L2 while the task's weight
/// rows pass over it.
const ACT_TILE: usize = 64;

impl QuantMatrix {
    /// Takes a QTensor's blocks; None when its type has no kernel here.
    pub fn from_qtensor(t: &QTensor) -> Result<Option<Self>, ModelError> {
        let kind = match t.dtype() {
            GgmlDType::Q4_1 => QuantKind::Q4_1,
            GgmlDType::Q5_0 => QuantKind::Q5_0,
            GgmlDType::Q8_0 => QuantKind::Q8_0,
            _ => return Ok(None),
        };
        let (rows, cols) = t.shape().dims2()?;
        if cols % BLOCK != 0 {
            return Ok(None);
        }
        let data = t.data()?;
        let n = rows * cols / BLOCK;
        if data.len() != n * kind.block_bytes() {
            return Err(ModelError::Format(format!(
                "{kind:?} tensor of {rows}x{cols} has {} bytes of blocks",
                data.len()
            )));
        }
        let mut me = Self {
            kind,
            rows,
            cols,
            qs: Vec::with_capacity(n * kind.value_bytes()),
            d: Vec::with_capacity(n),
            m: Vec::with_capacity(if kind == QuantKind::Q4_1 { n } else { 0 }),
            qh: Vec::with_capacity(if kind == QuantKind::Q5_0 { n } else { 0 }),
        };
        for blk in data.chunks_exact(kind.block_bytes()) {
            me.d.push(u16::from_le_bytes([blk[0], blk[1]]));
            match kind {
                QuantKind::Q4_1 => {
                    me.m.push(u16::from_le_bytes([blk[2], blk[3]]));
                    me.qs.extend_from_slice(&blk[4..]);
                }
                QuantKind::Q5_0 => {
                    me.qh.push(u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]));
                    me.qs.extend_from_slice(&blk[6..]);
                }
                QuantKind::Q8_0 => me.qs.extend_from_slice(&blk[2..]),
            }
        }
        Ok(Some(me))
    }

    /// The rows of several matrices of one kind and width as one matrix (fused
    /// projections: one activation quantisation and one parallel pass for
    /// q|k|v or gate|up). None when kinds or widths differ.
    pub fn stack(parts: Vec<QuantMatrix>) -> Option<Self> {
        let first = parts.first()?;
        let (kind, cols) = (first.kind, first.cols);
        if parts.iter().any(|p| p.kind != kind || p.cols != cols) {
            return None;
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        let mut me = Self { kind, rows, cols, qs: Vec::new(), d: Vec::new(), m: Vec::new(), qh: Vec::new() };
        for p in parts {
            me.qs.extend_from_slice(&p.qs);
            me.d.extend_from_slice(&p.d);
            me.m.extend_from_slice(&p.m);
            me.qh.extend_from_slice(&p.qh);
        }
        Some(me)
    }

    /// Output width.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input width.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes of weights (what a decode step streams from memory).
    pub fn bytes(&self) -> usize {
        self.qs.len() + 2 * (self.d.len() + self.m.len()) + 4 * self.qh.len()
    }

    /// Blocks per row.
    fn nb(&self) -> usize {
        self.cols / BLOCK
    }

    /// `x · Wᵀ` for `m` rows of `cols` values: `m × rows` values, row-major.
    pub fn matmul(&self, x: &[f32], m: usize) -> Result<Vec<f32>, ModelError> {
        self.matmul_rows(x, m, 0..self.rows)
    }

    /// [`QuantMatrix::matmul`] for the weight rows `rows` only: `m × rows.len()`
    /// values (a vocabulary-parallel output head: each rank its rows of the
    /// one shared matrix, each value the same dot product as the whole matmul's).
    pub fn matmul_rows(&self, x: &[f32], m: usize, rows: std::ops::Range<usize>) -> Result<Vec<f32>, ModelError> {
        if rows.start > rows.end || rows.end > self.rows {
            return Err(ModelError::Config(format!("rows {rows:?} of a {}-row matrix", self.rows)));
        }
        if x.len() != m * self.cols {
            return Err(ModelError::Input(format!(
                "matmul input has {} values, expected {m} rows of {}",
                x.len(),
                self.cols
            )));
        }
        let acts = Q8Acts::new(x, m, self.cols);
        let avx2 = simd::avx2_fma();
        // Parallel over weight rows; each task fills whole output columns (a
        // transposed tile), so no two tasks write the same memory.
        let (first, n_rows) = (rows.start, rows.len());
        let mut transposed = vec![0f32; n_rows * m];
        transposed.par_chunks_mut(ROWS_PER_TASK * m).enumerate().for_each(|(task, tile)| {
            for i0 in (0..m).step_by(ACT_TILE) {
                let i1 = (i0 + ACT_TILE).min(m);
                for (jj, col) in tile.chunks_exact_mut(m).enumerate() {
                    let j = first + task * ROWS_PER_TASK + jj;
                    self.row_dots(j, &acts, i0, &mut col[i0..i1], avx2);
                }
            }
        });
        if m == 1 {
            return Ok(transposed);
        }
        let mut out = vec![0f32; m * n_rows];
        for (j, col) in transposed.chunks_exact(m).enumerate() {
            for (i, v) in col.iter().enumerate() {
                out[i * n_rows + j] = *v;
            }
        }
        Ok(out)
    }

    /// Weight row `j` against activation rows `first..first + out.len()`, four at a time.
    fn row_dots(&self, j: usize, acts: &Q8Acts, first: usize, out: &mut [f32], avx2: bool) {
        let mut i = 0;
        while i + 4 <= out.len() {
            let a = first + i;
            out[i..i + 4].copy_from_slice(&self.dots(j, [a, a + 1, a + 2, a + 3], acts, avx2));
            i += 4;
        }
        while i < out.len() {
            out[i] = self.dots(j, [first + i], acts, avx2)[0];
            i += 1;
        }
    }

    #[inline]
    fn dots<const R: usize>(&self, j: usize, rows: [usize; R], acts: &Q8Acts, avx2: bool) -> [f32; R] {
        let (nb, vb) = (self.nb(), self.kind.value_bytes());
        let qs = &self.qs[j * nb * vb..(j + 1) * nb * vb];
        let d = &self.d[j * nb..(j + 1) * nb];
        match self.kind {
            QuantKind::Q4_1 => {
                let w = Q41Row { qs, d, m: &self.m[j * nb..(j + 1) * nb] };
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: AVX2/FMA/F16C detected at run time; `w` is one whole row.
                    return unsafe { q4_1::dot_rows_avx2(&w, acts, rows) };
                }
                q4_1::dot_rows_portable(&w, acts, rows)
            }
            QuantKind::Q5_0 => {
                let w = Q50Row { qs, qh: &self.qh[j * nb..(j + 1) * nb], d };
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: as above.
                    return unsafe { q5_0::dot_rows_avx2(&w, acts, rows) };
                }
                q5_0::dot_rows_portable(&w, acts, rows)
            }
            QuantKind::Q8_0 => {
                let w = Q80Row { qs, d };
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: as above.
                    return unsafe { q8_0::dot_rows_avx2(&w, acts, rows) };
                }
                let _ = avx2;
                q8_0::dot_rows_portable(&w, acts, rows)
            }
        }
    }

    /// Row `j` dequantised (an embedding lookup).
    pub fn dequantize_row(&self, j: usize) -> Option<Vec<f32>> {
        if j >= self.rows {
            return None;
        }
        let (nb, vb) = (self.nb(), self.kind.value_bytes());
        let mut out = Vec::with_capacity(self.cols);
        for b in j * nb..(j + 1) * nb {
            let d = f16::from_bits(self.d[b]).to_f32();
            let qs = &self.qs[b * vb..(b + 1) * vb];
            match self.kind {
                QuantKind::Q4_1 => {
                    let m = f16::from_bits(self.m[b]).to_f32();
                    out.extend(qs.iter().map(|q| (q & 0x0F) as f32 * d + m));
                    out.extend(qs.iter().map(|q| (q >> 4) as f32 * d + m));
                }
                QuantKind::Q5_0 => out.extend((0..BLOCK).map(|j| q5_0::value(qs, self.qh[b], j) as f32 * d)),
                QuantKind::Q8_0 => out.extend(qs.iter().map(|&q| q as i8 as f32 * d)),
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module, Tensor};

    /// What the activations' 8-bit rounding can move output `[r][i]` by:
    /// each activation is off by at most 0.56 of its block's step `d` (half a
    /// step, plus the f16 rounding of `d` times 127), and a block's `d·Σq` term
    /// (Q4_1's minimum) by `32·127·d·2⁻¹¹` < 2d. A bound, not a typical error,
    /// so the test cannot fail on an unlucky random draw (1 % of the output
    /// scale once did, in a fresh-clone CI run), only on a wrong kernel.
    fn rounding_bound(x: &[f32], wd: &[f32], m: usize, rows: usize, cols: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(m * rows);
        for r in 0..m {
            let xr = &x[r * cols..(r + 1) * cols];
            let steps: Vec<f32> =
                xr.chunks(BLOCK).map(|b| b.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0).collect();
            for i in 0..rows {
                let wr = &wd[i * cols..(i + 1) * cols];
                let mut bound = 0f32;
                for (wb, d) in wr.chunks(BLOCK).zip(&steps) {
                    let wmax = wb.iter().fold(0f32, |a, v| a.max(v.abs()));
                    bound += wb.iter().map(|w| w.abs()).sum::<f32>() * 0.57 * d + wmax * 2.0 * d;
                }
                out.push(bound);
            }
        }
        out
    }

    /// Against candle's dequantised weights in f32: the only difference left is
    /// the activations' 8-bit rounding, within [`rounding_bound`].
    #[test]
    fn matches_dequantised_matmul() {
        let dev = Device::Cpu;
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q8_0] {
            for (m, rows, cols) in [(1, 64, 128), (5, 96, 576), (37, 33, 1536)] {
                let w = Tensor::randn(0f32, 1.0, (rows, cols), &dev).unwrap();
                let q = QTensor::quantize(&w, dtype).unwrap();
                let x = Tensor::randn(0f32, 1.0, (m, cols), &dev).unwrap();
                let ours = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
                let got = ours.matmul(&x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), m).unwrap();
                let wd = q.dequantize(&dev).unwrap();
                let want = x.matmul(&wd.t().unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
                let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                let bound = rounding_bound(&xs, &wd.flatten_all().unwrap().to_vec1::<f32>().unwrap(), m, rows, cols);
                let slack = 1e-4 * scale;
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - e).abs() <= bound[i] + slack,
                        "{dtype:?} m={m} {rows}x{cols} [{i}]: {g} vs {e}, bound {}",
                        bound[i]
                    );
                }
                // The bound is a worst case; the typical error is far below it,
                // and its root mean square over all outputs is a stable number
                // (no single unlucky output moves it) that a kernel off by a few
                // percent would exceed.
                let rms = (got.iter().zip(&want).map(|(g, e)| (g - e).powi(2)).sum::<f32>() / got.len() as f32).sqrt();
                // Seen: at most 0.28 % of the output scale over 54 random draws;
                // 3 % too large an output gives about 1.1 %.
                assert!(rms < 0.006 * scale, "{dtype:?} m={m} {rows}x{cols}: rms error {rms} of scale {scale}");
                // And candle's own quantised path (which rounds its activations
                // the same way) agrees within both roundings.
                let theirs = QMatMul::from_qtensor(q).unwrap().forward(&x).unwrap();
                let theirs = theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for (i, (g, t)) in got.iter().zip(&theirs).enumerate() {
                    assert!((g - t).abs() <= 2.0 * bound[i] + slack, "{dtype:?} [{i}]: {g} vs candle's {t}");
                }
                // The bound is tight enough to catch a wrong kernel: it stays
                // well below the output scale.
                assert!(bound.iter().all(|b| *b < 0.2 * scale), "{dtype:?}: bound too loose");
                // Embedding rows equal the dequantised tensor's rows.
                let row = ours.dequantize_row(rows - 1).unwrap();
                let want_row = wd.get(rows - 1).unwrap().to_vec1::<f32>().unwrap();
                assert_eq!(row, want_row);
            }
        }
    }

    #[test]
    fn portable_and_avx2_agree() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (8, 256), &dev).unwrap();
        let x: Vec<f32> = (0..5 * 256).map(|i| ((i * 13 % 29) as f32 - 14.0) / 3.0).collect();
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q5_0, GgmlDType::Q8_0] {
            let m = QuantMatrix::from_qtensor(&QTensor::quantize(&w, dtype).unwrap()).unwrap().unwrap();
            let acts = Q8Acts::new(&x, 5, 256);
            for j in 0..8 {
                let (mut a, mut b) = (vec![0f32; 5], vec![0f32; 5]);
                m.row_dots(j, &acts, 0, &mut a, false);
                m.row_dots(j, &acts, 0, &mut b, simd::avx2_fma());
                for (x, y) in a.iter().zip(&b) {
                    assert!((x - y).abs() <= 1e-3 * x.abs().max(1.0), "{dtype:?} row {j}: {x} vs {y}");
                }
            }
        }
    }

    #[test]
    fn stack_keeps_row_order_and_refuses_mixed_kinds() {
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (4, 64), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (2, 64), &dev).unwrap();
        let qa = QuantMatrix::from_qtensor(&QTensor::quantize(&a, GgmlDType::Q4_1).unwrap()).unwrap().unwrap();
        let qb = QuantMatrix::from_qtensor(&QTensor::quantize(&b, GgmlDType::Q4_1).unwrap()).unwrap().unwrap();
        let x: Vec<f32> = (0..64).map(|i| i as f32 / 64.0).collect();
        let (ya, yb) = (qa.matmul(&x, 1).unwrap(), qb.matmul(&x, 1).unwrap());
        let both = QuantMatrix::stack(vec![qa, qb]).unwrap();
        assert_eq!(both.matmul(&x, 1).unwrap(), [ya.clone(), yb].concat());
        // A row range is those rows of the whole matmul, bit for bit, for one and several inputs.
        assert_eq!(both.matmul_rows(&x, 1, 0..4).unwrap(), ya);
        let x3: Vec<f32> = (0..3 * 64).map(|i| (i % 17) as f32 / 17.0 - 0.4).collect();
        let full = both.matmul(&x3, 3).unwrap();
        let part = both.matmul_rows(&x3, 3, 1..5).unwrap();
        for i in 0..3 {
            assert_eq!(&part[i * 4..i * 4 + 4], &full[i * 6 + 1..i * 6 + 5]);
        }
        assert!(both.matmul_rows(&x, 1, 2..7).is_err());
        let q8 = QuantMatrix::from_qtensor(&QTensor::quantize(&b, GgmlDType::Q8_0).unwrap()).unwrap().unwrap();
        let q4 = QuantMatrix::from_qtensor(&QTensor::quantize(&a, GgmlDType::Q4_1).unwrap()).unwrap().unwrap();
        assert!(QuantMatrix::stack(vec![q4, q8]).is_none());
        assert!(both.matmul(&x[..10], 1).is_err());
    }
}
