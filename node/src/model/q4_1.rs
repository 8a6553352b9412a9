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

/// One Q8_1 block of an input row.
#[derive(Clone, Copy)]
struct Q81 {
    d: f16,
    s: f16,
    qs: [i8; BLOCK],
}

/// A Q4_1 weight matrix `[rows, cols]` in GGUF block layout.
pub struct Q41Matrix {
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

/// Quantises one row like candle's `BlockQ8_1::from_float`.
fn quantize_row(xs: &[f32], out: &mut [Q81]) {
    for (b, block) in out.iter_mut().enumerate() {
        let xs = &xs[b * BLOCK..(b + 1) * BLOCK];
        let amax = xs.iter().fold(0f32, |a, &x| a.max(x.abs()));
        let d = amax / ((1 << 7) - 1) as f32;
        let id = if d != 0f32 { 1. / d } else { 0. };
        block.d = f16::from_f32(d);
        let mut sum = 0i32;
        for j in 0..BLOCK / 2 {
            block.qs[j] = f32::round(xs[j] * id) as i8;
            block.qs[j + BLOCK / 2] = f32::round(xs[j + BLOCK / 2] * id) as i8;
            sum += block.qs[j] as i32 + block.qs[j + BLOCK / 2] as i32;
        }
        block.s = f16::from_f32(sum as f32) * block.d;
    }
}

/// Σ q4[j] * q8[j] over one block, nibbles in GGUF order (low nibbles first).
fn block_dot_scalar(qs: &[u8], y: &[i8; BLOCK]) -> i32 {
    let mut sumi = 0i32;
    for j in 0..BLOCK / 2 {
        sumi += (qs[j] as i32 & 0x0F) * y[j] as i32 + (qs[j] as i32 >> 4) * y[j + BLOCK / 2] as i32;
    }
    sumi
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn block_dot_avx2(qs: &[u8], y: &[i8; BLOCK]) -> i32 {
    use std::arch::x86_64::*;
    // SAFETY: `qs` has 16 bytes and `y` 32 (checked by the callers' slicing); unaligned loads.
    let packed = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
    let mask = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(packed, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
    let q4 = _mm256_set_m128i(hi, lo);
    let q8 = _mm256_loadu_si256(y.as_ptr() as *const __m256i);
    // u8 × i8 pairs summed into i16 (at most 2 × 15 × 128: no saturation), then into i32.
    let pairs = _mm256_maddubs_epi16(q4, q8);
    let quads = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
    let sum128 = _mm_add_epi32(_mm256_castsi256_si128(quads), _mm256_extracti128_si256(quads, 1));
    let sum64 = _mm_add_epi32(sum128, _mm_unpackhi_epi64(sum128, sum128));
    let sum32 = _mm_add_epi32(sum64, _mm_shuffle_epi32(sum64, 0b01));
    _mm_cvtsi128_si32(sum32)
}

/// One output value: candle's float accumulation, block by block.
fn row_dot(w: &[u8], x: &[Q81], avx2: bool) -> f32 {
    let mut sumf = 0f32;
    for (b, y) in x.iter().enumerate() {
        let blk = &w[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
        let d = f16::from_le_bytes([blk[0], blk[1]]);
        let m = f16::from_le_bytes([blk[2], blk[3]]);
        let qs = &blk[4..20];
        #[cfg(target_arch = "x86_64")]
        let sumi = if avx2 {
            // SAFETY: AVX2 was detected at run time.
            unsafe { block_dot_avx2(qs, &y.qs) }
        } else {
            block_dot_scalar(qs, &y.qs)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let sumi = {
            let _ = avx2;
            block_dot_scalar(qs, &y.qs)
        };
        sumf += sumi as f32 * f16::to_f32(d) * f16::to_f32(y.d) + f16::to_f32(m) * f16::to_f32(y.s);
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
        Ok(Some(Self { rows, cols, data: t.data()?.into_owned() }))
    }

    /// `x · Wᵀ` for `x` of shape `(m, cols)`: `(m, rows)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let (m, k) = x.dims2()?;
        if k != self.cols {
            return Err(ModelError::Input(format!("matmul input has {k} columns, weights {}", self.cols)));
        }
        let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let nb = k / BLOCK;
        let mut q = vec![Q81 { d: f16::ZERO, s: f16::ZERO, qs: [0; BLOCK] }; m * nb];
        for i in 0..m {
            quantize_row(&xs[i * k..(i + 1) * k], &mut q[i * nb..(i + 1) * nb]);
        }
        #[cfg(target_arch = "x86_64")]
        let avx2 = std::arch::is_x86_feature_detected!("avx2");
        #[cfg(not(target_arch = "x86_64"))]
        let avx2 = false;
        let row_bytes = nb * BLOCK_BYTES;
        // Each weight row once, against every input row.
        let cols: Vec<Vec<f32>> = (0..self.rows)
            .into_par_iter()
            .with_min_len(16)
            .map(|j| {
                let w = &self.data[j * row_bytes..(j + 1) * row_bytes];
                (0..m).map(|i| row_dot(w, &q[i * nb..(i + 1) * nb], avx2)).collect()
            })
            .collect();
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
