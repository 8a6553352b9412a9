//! Q4_1 weights × Q8_1 activations: the dot products of one weight row with up
//! to `R` activation rows, as llama.cpp's `ggml_vec_dot_q4_1_q8_1` computes
//! them (integer block dots, float accumulation in vector lanes, one horizontal
//! sum per row) but register-blocked over `R` activation rows, so a prompt's
//! rows share each unpacked weight block.
//!
//! A GGUF Q4_1 block is 20 bytes: f16 scale `d`, f16 minimum `m`, then 16 bytes
//! of nibbles (value `j` in the low nibble of byte `j`, value `j + 16` in its high
//! nibble); weight = `d · q + m`. The blocks stay in that form (no widening), so
//! each decoded token streams exactly the file's bytes.
use half::f16;

use super::quantize::{Q8Acts, BLOCK};

/// Bytes per Q4_1 block.
pub(crate) const BLOCK_BYTES: usize = 20;

/// Portable version: `out[r] = w · act_row(rows[r])`.
pub(crate) fn dot_rows_portable<const R: usize>(w: &[u8], acts: &Q8Acts, rows: [usize; R]) -> [f32; R] {
    let nb = acts.blocks_per_row();
    let mut out = [0f32; R];
    for (b, blk) in w.chunks_exact(BLOCK_BYTES).enumerate().take(nb) {
        let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
        let m = f16::from_le_bytes([blk[2], blk[3]]).to_f32();
        for (r, &row) in rows.iter().enumerate() {
            let y = &acts.qs[(row * nb + b) * BLOCK..(row * nb + b + 1) * BLOCK];
            let mut sumi = 0i32;
            for j in 0..BLOCK / 2 {
                sumi += (blk[4 + j] & 0x0F) as i32 * y[j] as i32 + (blk[4 + j] >> 4) as i32 * y[j + BLOCK / 2] as i32;
            }
            out[r] += sumi as f32 * d * acts.d[row * nb + b] + m * acts.s[row * nb + b];
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
    let mask = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut mins = [0f32; R];
    let (wp, qp, dp, sp) = (w.as_ptr(), acts.qs.as_ptr(), acts.d.as_ptr(), acts.s.as_ptr());
    let base: [usize; R] = std::array::from_fn(|r| rows[r] * nb);
    for b in 0..nb {
        let blk = wp.add(b * BLOCK_BYTES);
        // d and m in one conversion.
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128((blk as *const i32).read_unaligned()));
        let d = _mm_cvtss_f32(dm);
        let m = _mm_cvtss_f32(_mm_shuffle_ps(dm, dm, 1));
        let packed = _mm_loadu_si128(blk.add(4) as *const __m128i);
        let lo = _mm_and_si128(packed, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
        let q4 = _mm256_set_m128i(hi, lo);
        for r in 0..R {
            let at = base[r] + b;
            let q8 = _mm256_loadu_si256(qp.add(at * BLOCK) as *const __m256i);
            // u8 × i8 pairs into i16 (at most 2 × 15 × 128: no saturation), then i32.
            let quads = _mm256_madd_epi16(_mm256_maddubs_epi16(q4, q8), ones);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * *dp.add(at)), _mm256_cvtepi32_ps(quads), acc[r]);
            mins[r] += m * *sp.add(at);
        }
    }
    let mut out = [0f32; R];
    for r in 0..R {
        out[r] = super::simd::hsum(acc[r]) + mins[r];
    }
    out
}
