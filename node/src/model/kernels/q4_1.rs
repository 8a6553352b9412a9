//! Q4_1 weights × Q8_1 activations: the dot products of one weight row with up
//! to `R` activation rows, with llama.cpp's arithmetic (`ggml_vec_dot_q4_1_q8_1`:
//! integer block dots, float accumulation in vector lanes, one horizontal sum
//! per row), register-blocked over `R` activation rows so a prompt's or a
//! batch's rows share each unpacked weight block.
//!
//! A GGUF Q4_1 block is 20 bytes: f16 scale `d`, f16 minimum `m`, 16 bytes of
//! nibbles (value `j` in the low nibble of byte `j`, value `j + 16` in the high
//! one); weight = `d · q + m`. [`super::QuantMatrix`] keeps the same 20 bytes
//! per block but split into three arrays (nibbles, scales, minimums), so eight
//! blocks' scales widen in one instruction and their products with the
//! activation scales are one vector multiply: per block and activation row the
//! kernel is then a load, two integer multiply-adds, a conversion, a lane
//! broadcast (a load) and one FMA. The minimum term `Σ m·s` is summed apart,
//! block by block, and added after the horizontal sum, as llama.cpp does.
use half::f16;

use super::quantize::{Q8Acts, BLOCK};

/// One weight row in split form: `nb` blocks.
pub(crate) struct Q41Row<'a> {
    /// 16 bytes of nibbles per block.
    pub qs: &'a [u8],
    /// f16 bits of each block's scale.
    pub d: &'a [u16],
    /// f16 bits of each block's minimum.
    pub m: &'a [u16],
}

/// Portable version: `out[r] = w · act_row(rows[r])`.
pub(crate) fn dot_rows_portable<const R: usize>(w: &Q41Row<'_>, acts: &Q8Acts, rows: [usize; R]) -> [f32; R] {
    let nb = acts.blocks_per_row();
    let mut out = [0f32; R];
    for b in 0..nb {
        let d = f16::from_bits(w.d[b]).to_f32();
        let m = f16::from_bits(w.m[b]).to_f32();
        let qs = &w.qs[b * 16..b * 16 + 16];
        for (r, &row) in rows.iter().enumerate() {
            let at = row * nb + b;
            let y = &acts.qs[at * BLOCK..(at + 1) * BLOCK];
            let mut sumi = 0i32;
            for j in 0..BLOCK / 2 {
                sumi += (qs[j] & 0x0F) as i32 * y[j] as i32 + (qs[j] >> 4) as i32 * y[j + BLOCK / 2] as i32;
            }
            out[r] += sumi as f32 * d * acts.d[at] + m * acts.s[at];
        }
    }
    out
}

/// AVX2 version of [`dot_rows_portable`].
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `w` must hold `nb` blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // register arrays indexed by row read best as loops
pub(crate) unsafe fn dot_rows_avx2<const R: usize>(w: &Q41Row<'_>, acts: &Q8Acts, rows: [usize; R]) -> [f32; R] {
    use std::arch::x86_64::*;
    let nb = acts.blocks_per_row();
    debug_assert!(w.qs.len() >= nb * 16 && w.d.len() >= nb && w.m.len() >= nb);
    let mask = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut mins = [0f32; R];
    let (qp, dp, sp) = (acts.qs.as_ptr(), acts.d.as_ptr(), acts.s.as_ptr());
    let base: [usize; R] = std::array::from_fn(|r| rows[r] * nb);
    let nibbles = |b: usize| {
        let packed = _mm_loadu_si128(w.qs.as_ptr().add(b * 16) as *const __m128i);
        _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), mask), _mm_and_si128(packed, mask))
    };
    let quads = |q4: __m256i, at: usize| {
        let q8 = _mm256_loadu_si256(qp.add(at * BLOCK) as *const __m256i);
        // u8 × i8 pairs into i16 (at most 2 × 15 × 128: no saturation), then i32.
        _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(q4, q8), ones))
    };
    // Per group of eight blocks: the eight scale products of each row, kept
    // in memory so each block broadcasts its own with a load (no shuffle).
    let mut dd = [[0f32; 8]; R];
    let mut mf = [0f32; 8];
    // The minimum term is summed apart, block by block with one fused
    // multiply-add each, and added after the horizontal sum, exactly as
    // llama.cpp's `summs` (summed in vector lanes instead it moved greedy
    // tokens of the fixture). With four consecutive rows the four running sums
    // are the lanes of one register: the same arithmetic per row, one FMA.
    let four = R == 4 && rows[3] == rows[0] + 3;
    let mut mins4 = _mm_setzero_ps();
    let st = acts.s_t.as_ptr().add(rows[0]);
    let mut minimum = |b: usize, m: f32, mins: &mut [f32; R]| {
        if four {
            mins4 = _mm_fmadd_ps(_mm_set1_ps(m), _mm_loadu_ps(st.add(b * acts.rows)), mins4);
        } else {
            for r in 0..R {
                mins[r] = m.mul_add(*sp.add(base[r] + b), mins[r]);
            }
        }
    };
    let mut b = 0;
    while b + 8 <= nb {
        let dv = _mm256_cvtph_ps(_mm_loadu_si128(w.d.as_ptr().add(b) as *const __m128i));
        _mm256_storeu_ps(mf.as_mut_ptr(), _mm256_cvtph_ps(_mm_loadu_si128(w.m.as_ptr().add(b) as *const __m128i)));
        for r in 0..R {
            _mm256_storeu_ps(dd[r].as_mut_ptr(), _mm256_mul_ps(dv, _mm256_loadu_ps(dp.add(base[r] + b))));
        }
        for k in 0..8 {
            let q4 = nibbles(b + k);
            for r in 0..R {
                acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(&dd[r][k]), quads(q4, base[r] + b + k), acc[r]);
            }
            minimum(b + k, mf[k], &mut mins);
        }
        b += 8;
    }
    while b < nb {
        let d = f16::from_bits(w.d[b]).to_f32();
        let q4 = nibbles(b);
        for r in 0..R {
            let at = base[r] + b;
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * *dp.add(at)), quads(q4, at), acc[r]);
        }
        minimum(b, f16::from_bits(w.m[b]).to_f32(), &mut mins);
        b += 1;
    }
    if four {
        _mm_storeu_ps(mins.as_mut_ptr(), mins4);
    }
    let mut out = [0f32; R];
    for r in 0..R {
        out[r] = super::simd::hsum(acc[r]) + mins[r];
    }
    out
}
