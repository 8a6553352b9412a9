//! Q5_0 weights × Q8_0 activations (Gemma 3's q, k, gate and up projections in
//! its Q4_K_M GGUF; candle's CPU path for this type is the scalar
//! `vec_dot_unopt`, 72 % of a Gemma decode step before this kernel): one weight
//! row against up to `R` activation rows with llama.cpp's arithmetic
//! (`ggml_vec_dot_q5_0_q8_0`: each block's 32 five-bit values rebuilt as
//! signed bytes, the signed × signed byte product by the sign trick, float
//! lanes, one horizontal sum), register-blocked like the Q8_0 kernel.
//!
//! A GGUF Q5_0 block is 22 bytes: f16 scale `d`, 32 high bits `qh` (bit `j`
//! for value `j`), 16 bytes of low nibbles (value `j` in the low nibble of
//! byte `j`, value `j + 16` in the high one); weight = `d · ((low | high << 4) − 16)`.
//! [`super::QuantMatrix`] keeps the nibbles, the high bits and the scales in
//! three arrays.
use half::f16;

use super::quantize::{Q8Acts, BLOCK};

/// One weight row in split form: `nb` blocks.
pub(crate) struct Q50Row<'a> {
    /// 16 bytes of low nibbles per block.
    pub qs: &'a [u8],
    /// The 32 high bits of each block.
    pub qh: &'a [u32],
    /// f16 bits of each block's scale.
    pub d: &'a [u16],
}

/// Value `j` of block `b`, in −16..=15.
pub(crate) fn value(qs: &[u8], qh: u32, j: usize) -> i32 {
    let low = if j < 16 { qs[j] & 0x0F } else { qs[j - 16] >> 4 };
    (low as i32 | (((qh >> j) & 1) as i32) << 4) - 16
}

/// Portable version: `out[r] = w · act_row(rows[r])`.
pub(crate) fn dot_rows_portable<const R: usize>(w: &Q50Row<'_>, acts: &Q8Acts, rows: [usize; R]) -> [f32; R] {
    let nb = acts.blocks_per_row();
    let mut out = [0f32; R];
    for b in 0..nb {
        let d = f16::from_bits(w.d[b]).to_f32();
        let qs = &w.qs[b * 16..b * 16 + 16];
        let vals: [i32; BLOCK] = std::array::from_fn(|j| value(qs, w.qh[b], j));
        for (r, &row) in rows.iter().enumerate() {
            let at = row * nb + b;
            let y = &acts.qs[at * BLOCK..(at + 1) * BLOCK];
            let sumi: i32 = vals.iter().zip(y).map(|(&q, &y)| q * y as i32).sum();
            out[r] += sumi as f32 * d * acts.d[at];
        }
    }
    out
}

/// AVX2 version of [`dot_rows_portable`]: the values rebuilt as signed bytes,
/// then the loop Q8_0 uses ([`super::q8_0::signed_block_dots_avx2`]).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `w` must hold `nb` blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_rows_avx2<const R: usize>(w: &Q50Row<'_>, acts: &Q8Acts, rows: [usize; R]) -> [f32; R] {
    use std::arch::x86_64::*;
    let nb = acts.blocks_per_row();
    debug_assert!(w.qs.len() >= nb * 16 && w.qh.len() >= nb && w.d.len() >= nb);
    let low_mask = _mm_set1_epi8(0x0F);
    // Byte i of a block tests bit i % 8 of the high bits' byte i / 8.
    let bit_of_byte = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let spread =
        _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0x0000_0000_0000_0000);
    let high_clear = _mm256_set1_epi8(0xF0u8 as i8);
    // The block's values as signed bytes: low nibble, minus 16 where the high
    // bit is clear (`low | 0xF0` is `low − 16` in two's complement).
    let values = |b: usize| {
        let packed = _mm_loadu_si128(w.qs.as_ptr().add(b * 16) as *const __m128i);
        let low = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), low_mask), _mm_and_si128(packed, low_mask));
        let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(*w.qh.get_unchecked(b) as i32), spread);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit_of_byte), bit_of_byte);
        _mm256_or_si256(low, _mm256_andnot_si256(set, high_clear))
    };
    super::q8_0::signed_block_dots_avx2(w.d, acts, rows, values)
}
