//! A faster CPU matmul for Q4_1 weights, with candle's exact numerics.
//!
//! candle 0.11 computes Q4_1 × Q8_1 dot products with its generic scalar loop
//! (`BlockQ4_1::vec_dot` → `vec_dot_unopt`). This kernel quantises the input
//! rows to Q8_1 exactly as candle does, computes each block's integer dot
//! product with AVX2 (integer arithmetic is exact), and accumulates the float
//! part block by block in candle's order, so results are bit-identical to
//! candle's — the llama.cpp fixture and the tensor-parallel equivalence hold
//! unchanged — while running several times faster. Each weight row is read
//! once for all input rows of a step, so batches and prompt chunks reuse it.
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::f16;
use rayon::prelude::*;

use super::ModelError;

const BLOCK: usize = 32;
const BLOCK_BYTES: usize = 20;

/// Input rows quantised to Q8_1, with the block scales already widened to f32
/// (f16 → f32 is exact, so this changes no result, only saves conversions).
struct Q81Rows {
    qs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

/// A Q4_1 weight matrix `[rows, cols]`, split into nibbles and widened scales.
pub struct Q41Matrix {
    rows: usize,
    cols: usize,
    qs: Vec<u8>,
    d: Vec<f32>,
    m: Vec<f32>,
}

/// Quantises rows like candle's `BlockQ8_1::from_float`.
fn quantize_rows(xs: &[f32], rows: usize, k: usize) -> Q81Rows {
    let nb = k / BLOCK;
    let mut out = Q81Rows { qs: vec![0; rows * k], d: vec![0.0; rows * nb], s: vec![0.0; rows * nb] };
    for b in 0..rows * nb {
        let xs = &xs[b * BLOCK..(b + 1) * BLOCK];
        let qs = &mut out.qs[b * BLOCK..(b + 1) * BLOCK];
        let amax = xs.iter().fold(0f32, |a, &x| a.max(x.abs()));
        let d = amax / ((1 << 7) - 1) as f32;
        let id = if d != 0f32 { 1. / d } else { 0. };
        let d16 = f16::from_f32(d);
        let mut sum = 0i32;
        for j in 0..BLOCK / 2 {
            qs[j] = f32::round(xs[j] * id) as i8;
            qs[j + BLOCK / 2] = f32::round(xs[j + BLOCK / 2] * id) as i8;
            sum += qs[j] as i32 + qs[j + BLOCK / 2] as i32;
        }
        out.d[b] = d16.to_f32();
        out.s[b] = (f16::from_f32(sum as f32) * d16).to_f32();
    }
    out
}

/// Σ q4[j] * q8[j] over one block, nibbles in GGUF order (low nibbles first).
fn block_dot_scalar(qs: &[u8], y: &[i8]) -> i32 {
    let mut sumi = 0i32;
    for j in 0..BLOCK / 2 {
        sumi += (qs[j] as i32 & 0x0F) * y[j] as i32 + (qs[j] as i32 >> 4) * y[j + BLOCK / 2] as i32;
    }
    sumi
}

/// One output value: candle's float accumulation, block by block.
fn row_dot_scalar(qs: &[u8], d: &[f32], m: &[f32], yq: &[i8], yd: &[f32], ys: &[f32]) -> f32 {
    let mut sumf = 0f32;
    for b in 0..d.len() {
        let sumi = block_dot_scalar(&qs[b * 16..b * 16 + 16], &yq[b * BLOCK..(b + 1) * BLOCK]);
        sumf += sumi as f32 * d[b] * yd[b] + m[b] * ys[b];
    }
    sumf
}

/// The same with AVX2 integer dot products (exact); the float part is unchanged.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_dot_avx2(qs: &[u8], d: &[f32], m: &[f32], yq: &[i8], yd: &[f32], ys: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let mask = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut sumf = 0f32;
    for b in 0..d.len() {
        // SAFETY: the callers size `qs` to 16 and `yq` to 32 bytes per block.
        let packed = _mm_loadu_si128(qs.as_ptr().add(b * 16) as *const __m128i);
        let lo = _mm_and_si128(packed, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
        let q4 = _mm256_set_m128i(hi, lo);
        let q8 = _mm256_loadu_si256(yq.as_ptr().add(b * BLOCK) as *const __m256i);
        // u8 × i8 pairs summed into i16 (at most 2 × 15 × 128: no saturation), then into i32.
        let quads = _mm256_madd_epi16(_mm256_maddubs_epi16(q4, q8), ones);
        let sum128 = _mm_add_epi32(_mm256_castsi256_si128(quads), _mm256_extracti128_si256(quads, 1));
        let sum64 = _mm_add_epi32(sum128, _mm_unpackhi_epi64(sum128, sum128));
        let sumi = _mm_cvtsi128_si32(_mm_add_epi32(sum64, _mm_shuffle_epi32(sum64, 0b01)));
        sumf += sumi as f32 * d[b] * yd[b] + m[b] * ys[b];
    }
    sumf
}

impl Q41Matrix {
    /// Takes the blocks of a Q4_1 QTensor; None for any other type.
    pub fn from_qtensor(t: &QTensor) -> Result<Option<Self>, ModelError> {
        if t.dtype() != GgmlDType::Q4_1 {
            return Ok(None);
        }
        let (rows, cols) = t.shape().dims2()?;
        if cols % BLOCK != 0 {
            return Ok(None);
        }
        let data = t.data()?;
        let blocks = rows * cols / BLOCK;
        let mut me = Self {
            rows,
            cols,
            qs: Vec::with_capacity(blocks * 16),
            d: Vec::with_capacity(blocks),
            m: Vec::with_capacity(blocks),
        };
        for blk in data.chunks_exact(BLOCK_BYTES) {
            me.d.push(f16::from_le_bytes([blk[0], blk[1]]).to_f32());
            me.m.push(f16::from_le_bytes([blk[2], blk[3]]).to_f32());
            me.qs.extend_from_slice(&blk[4..20]);
        }
        Ok(Some(me))
    }

    /// `x · Wᵀ` for `x` of shape `(m, cols)`: `(m, rows)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let (m, k) = x.dims2()?;
        if k != self.cols {
            return Err(ModelError::Input(format!("matmul input has {k} columns, weights {}", self.cols)));
        }
        let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let nb = k / BLOCK;
        let q = quantize_rows(&xs, m, k);
        #[cfg(target_arch = "x86_64")]
        let avx2 = std::arch::is_x86_feature_detected!("avx2");
        #[cfg(not(target_arch = "x86_64"))]
        let avx2 = false;
        let dot = |j: usize, i: usize| {
            let (w, ws) = (&self.qs[j * nb * 16..(j + 1) * nb * 16], j * nb..(j + 1) * nb);
            let (yq, ys) = (&q.qs[i * k..(i + 1) * k], i * nb..(i + 1) * nb);
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: AVX2 was detected at run time; slices are sized per block above.
                return unsafe { row_dot_avx2(w, &self.d[ws.clone()], &self.m[ws], yq, &q.d[ys.clone()], &q.s[ys]) };
            }
            row_dot_scalar(w, &self.d[ws.clone()], &self.m[ws], yq, &q.d[ys.clone()], &q.s[ys])
        };
        // Each weight row once, against every input row.
        let cols: Vec<Vec<f32>> =
            (0..self.rows).into_par_iter().with_min_len(32).map(|j| (0..m).map(|i| dot(j, i)).collect()).collect();
        let mut out = vec![0f32; m * self.rows];
        for (j, col) in cols.iter().enumerate() {
            for (i, v) in col.iter().enumerate() {
                out[i * self.rows + j] = *v;
            }
        }
        Ok(Tensor::from_vec(out, (m, self.rows), &Device::Cpu)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::Module;

    #[test]
    fn bit_identical_to_candle() {
        let dev = Device::Cpu;
        for (m, rows, cols) in [(1, 64, 128), (5, 96, 576), (37, 33, 1536)] {
            let w = Tensor::randn(0f32, 1.0, (rows, cols), &dev).unwrap();
            let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
            let x = (Tensor::randn(0f32, 1.0, (m, cols), &dev).unwrap() * 3.0).unwrap();
            let ours = Q41Matrix::from_qtensor(&q).unwrap().unwrap().forward(&x).unwrap();
            let theirs = QMatMul::from_qtensor(q).unwrap().forward(&x).unwrap();
            assert_eq!(
                ours.to_vec2::<f32>().unwrap(),
                theirs.to_vec2::<f32>().unwrap(),
                "m={m} rows={rows} cols={cols}"
            );
        }
    }
}
