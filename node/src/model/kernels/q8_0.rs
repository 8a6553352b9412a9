//! Q8_0 weights × Q8_0 activations (SmolLM2's tied output head and embedding,
//! and many GGUFs' attention weights): one weight row against up to `R`
//! activation rows with llama.cpp's arithmetic (`ggml_vec_dot_q8_0_q8_0`: the
//! sign trick for the signed × signed byte product, float lanes, one
//! horizontal sum), register-blocked like the Q4_1 kernel, scales widened and
//! multiplied eight blocks at a time.
//!
//! A GGUF Q8_0 block is 34 bytes: f16 scale `d`, then 32 signed bytes; kept
//! split into bytes and scales by [`super::QuantMatrix`].
use half::f16;

use super::quantize::{Q8Acts, BLOCK};

/// One weight row in split form: `nb` blocks.
pub(crate) struct Q80Row<'a> {
    /// 32 signed bytes per block.
    pub qs: &'a [u8],
    /// f16 bits of each block's scale.
    pub d: &'a [u16],
}

/// Portable version: `out[r] = w · act_row(rows[r])`.
pub(crate) fn dot_rows_portable<const R: usize>(w: &Q80Row<'_>, acts: &Q8Acts, rows: [usize; R]) -> [f32; R] {
    let nb = acts.blocks_per_row();
    let mut out = [0f32; R];
    for b in 0..nb {
        let d = f16::from_bits(w.d[b]).to_f32();
        let qs = &w.qs[b * BLOCK..(b + 1) * BLOCK];
        for (r, &row) in rows.iter().enumerate() {
            let at = row * nb + b;
            let y = &acts.qs[at * BLOCK..(at + 1) * BLOCK];
            let sumi: i32 = qs.iter().zip(y).map(|(&q, &y)| q as i8 as i32 * y as i32).sum();
            out[r] += sumi as f32 * d * acts.d[at];
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
pub(crate) unsafe fn dot_rows_avx2<const R: usize>(w: &Q80Row<'_>, acts: &Q8Acts, rows: [usize; R]) -> [f32; R] {
    use std::arch::x86_64::*;
    debug_assert!(w.qs.len() >= acts.blocks_per_row() * BLOCK);
    signed_block_dots_avx2(w.d, acts, rows, |b| _mm256_loadu_si256(w.qs.as_ptr().add(b * BLOCK) as *const __m256i))
}

/// The loop every weight type with signed 8-bit-range values and one f16
/// scale per block shares (Q8_0, and Q5_0 once its values are rebuilt):
/// `block(b)` gives block `b`'s 32 values as signed bytes; each is dotted with
/// up to `R` activation rows by the sign trick, scaled by the two scales
/// (eight blocks' products in one multiply) and summed in float lanes, one
/// horizontal sum per row at the end, as llama.cpp does.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `d` must hold the row's `nb` scales
/// and `block` must read only within the row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // register arrays indexed by row read best as loops
pub(crate) unsafe fn signed_block_dots_avx2<const R: usize>(
    d: &[u16],
    acts: &Q8Acts,
    rows: [usize; R],
    block: impl Fn(usize) -> std::arch::x86_64::__m256i,
) -> [f32; R] {
    use std::arch::x86_64::*;
    let nb = acts.blocks_per_row();
    debug_assert!(d.len() >= nb);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); R];
    let (qp, dp) = (acts.qs.as_ptr(), acts.d.as_ptr());
    let base: [usize; R] = std::array::from_fn(|r| rows[r] * nb);
    let quads = |qw: __m256i, aw: __m256i, at: usize| {
        let qy = _mm256_loadu_si256(qp.add(at * BLOCK) as *const __m256i);
        // |w| × (y · sign w): u8 × i8 pairs, at most 2 × 128 × 127 in i16.
        _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(qy, qw)), ones))
    };
    let mut dd = [[0f32; 8]; R];
    let mut b = 0;
    while b + 8 <= nb {
        let dv = _mm256_cvtph_ps(_mm_loadu_si128(d.as_ptr().add(b) as *const __m128i));
        for r in 0..R {
            _mm256_storeu_ps(dd[r].as_mut_ptr(), _mm256_mul_ps(dv, _mm256_loadu_ps(dp.add(base[r] + b))));
        }
        for k in 0..8 {
            let qw = block(b + k);
            let aw = _mm256_sign_epi8(qw, qw);
            for r in 0..R {
                acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(&dd[r][k]), quads(qw, aw, base[r] + b + k), acc[r]);
            }
        }
        b += 8;
    }
    while b < nb {
        let scale = f16::from_bits(d[b]).to_f32();
        let qw = block(b);
        let aw = _mm256_sign_epi8(qw, qw);
        for r in 0..R {
            let at = base[r] + b;
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(scale * *dp.add(at)), quads(qw, aw, at), acc[r]);
        }
        b += 1;
    }
    let mut out = [0f32; R];
    for r in 0..R {
        out[r] = super::simd::hsum(acc[r]);
    }
    out
}
