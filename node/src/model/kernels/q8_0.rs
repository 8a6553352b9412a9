//! Q8_0 weights × Q8_0 activations (SmolLM2's tied output head and embedding,
//! and many GGUFs' attention weights): one weight row against up to `R`
//! activation rows, llama.cpp's arithmetic (`ggml_vec_dot_q8_0_q8_0`:
//! sign trick for the signed × signed byte product, float lanes, one horizontal
//! sum), register-blocked like the Q4_1 kernel.
//!
//! A GGUF Q8_0 block is 34 bytes: f16 scale `d`, then 32 signed bytes.
use half::f16;

use super::quantize::{Q8Acts, BLOCK};

/// Bytes per Q8_0 block.
pub(crate) const BLOCK_BYTES: usize = 34;

/// Portable version: `out[r] = w · act_row(rows[r])`.
pub(crate) fn dot_rows_portable<const R: usize>(w: &[u8], acts: &Q8Acts, rows: [usize; R]) -> [f32; R] {
    let nb = acts.blocks_per_row();
    let mut out = [0f32; R];
    for (b, blk) in w.chunks_exact(BLOCK_BYTES).enumerate().take(nb) {
        let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        for (r, &row) in rows.iter().enumerate() {
            let y = &acts.qs[(row * nb + b) * BLOCK..(row * nb + b + 1) * BLOCK];
            let sumi: i32 = blk[2..].iter().zip(y).map(|(&q, &y)| q as i8 as i32 * y as i32).sum();
            out[r] += sumi as f32 * d * acts.d[row * nb + b];
        }
    }
    out
}

/// AVX2 version of [`dot_rows_portable`].
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `w` must hold the row's blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_rows_avx2<const R: usize>(w: &[u8], acts: &Q8Acts, rows: [usize; R]) -> [f32; R] {
    use std::arch::x86_64::*;
    let nb = acts.blocks_per_row();
    debug_assert!(w.len() >= nb * BLOCK_BYTES);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); R];
    let (wp, qp, dp) = (w.as_ptr(), acts.qs.as_ptr(), acts.d.as_ptr());
    let base: [usize; R] = std::array::from_fn(|r| rows[r] * nb);
    for b in 0..nb {
        let blk = wp.add(b * BLOCK_BYTES);
        let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const u16).read_unaligned() as i32)));
        let qw = _mm256_loadu_si256(blk.add(2) as *const __m256i);
        let aw = _mm256_sign_epi8(qw, qw);
        for r in 0..R {
            let at = base[r] + b;
            let qy = _mm256_loadu_si256(qp.add(at * BLOCK) as *const __m256i);
            // |w| × (y · sign w): u8 × i8 pairs, at most 2 × 128 × 127 in i16.
            let quads = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(qy, qw)), ones);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * *dp.add(at)), _mm256_cvtepi32_ps(quads), acc[r]);
        }
    }
    let mut out = [0f32; R];
    for r in 0..R {
        out[r] = super::simd::hsum(acc[r]);
    }
    out
}
