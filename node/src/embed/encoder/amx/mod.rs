//! Matrix products on Intel AMX tiles, in bf16 with f32 sums, for the
//! encoder's projections (chunk-sized texts, batches, and a query's few
//! rows too).
//!
//! Why: with f32 AVX-512 products at ~220 GFLOP/s on two cores the encoder
//! runs chunks at ~1.2x sentence-transformers, and the products are half of
//! its time. One `tdpbf16ps` multiplies a 16x32 bf16 tile by a 32x16 one
//! into 16x16 f32 sums (8192 multiply-adds); where the CPU has AMX (Sapphire
//! Rapids and later) the products stop being the cost.
//!
//! Layout: the weights are packed once at load, in the tile order the
//! kernel reads them (per 32 output columns, per 32 inputs, two 16-column
//! tiles whose rows hold pairs of consecutive inputs, as the instruction
//! wants); the inputs are rounded to bf16 one block of 32 rows at a time,
//! just before use, so the block stays in L1. Each 32x32 output block lives
//! in four tile registers over the whole input length, then gets its bias
//! (and GELU) in a small buffer and is written once. Rounding both operands
//! to bf16 moves each product by about 2^-9 of itself; the sums stay f32,
//! and the fixture's texts keep cosine >= 0.9999 to sentence-transformers
//! (worst seen 0.99997).
//!
//! AMX needs the kernel's permission (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), asked
//! once per process; where it is refused or absent, [`available`] is false
//! and the caller uses the f32 paths. `TESSERA_EMBED_AMX=0` turns it off
//! (for comparisons).
use rayon::prelude::*;

use super::disjoint_out::DisjointOut;
use super::vector_math::gelu;

mod tiles;

use tiles as platform;

/// Rows and columns of one output block: two tiles each way.
const BLOCK: usize = 32;

/// Inputs consumed per tile product (32 bf16 in a 64-byte tile row).
const DEPTH: usize = 32;

/// u16 values in one 16-row x 64-byte tile.
const TILE: usize = 16 * 32;

/// What is applied to a block of sums (bias included) before it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// The sums plus the bias.
    Bias,
    /// GELU of that (the feed-forward expansion).
    Gelu,
}

/// A layer's weights rounded to bf16 in the kernel's tile order.
pub struct PackedWeights {
    tiles: Vec<u16>,
    inputs: usize,
    outputs: usize,
}

/// True when AMX with bf16 is present, the kernel lets this process use it,
/// and `TESSERA_EMBED_AMX` does not say `0`. Decided once.
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| std::env::var("TESSERA_EMBED_AMX").as_deref() != Ok("0") && platform::enable())
}

/// True when a `[inputs, outputs]` product can use the kernel: AMX is
/// [`available`] and both sizes are multiples of 32.
pub fn fits(inputs: usize, outputs: usize) -> bool {
    inputs > 0 && inputs.is_multiple_of(DEPTH) && outputs > 0 && outputs.is_multiple_of(BLOCK) && available()
}

/// Round to the nearest bf16 (ties to even), as `vcvtneps2bf16` does.
fn bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16
}

/// `dst[i] = bf16(src[i] * scale)` over the shorter of the two, sixteen at
/// a time with `vcvtneps2bf16` (every CPU with AMX has AVX-512 BF16; the
/// scalar loop, which the baseline build keeps at four lanes, took a tenth
/// of a projection's time).
fn round_to_bf16(src: &[f32], scale: f32, dst: &mut [u16]) {
    let len = src.len().min(dst.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512bf16") {
        // SAFETY: the feature was just detected; both slices hold `len`.
        unsafe { round_avx512(&src[..len], scale, &mut dst[..len]) };
        return;
    }
    dst[..len].iter_mut().zip(&src[..len]).for_each(|(d, &s)| *d = bf16(s * scale));
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn round_avx512(src: &[f32], scale: f32, dst: &mut [u16]) {
    use std::arch::x86_64::*;
    let factor = _mm512_set1_ps(scale);
    let whole = src.len() / 16 * 16;
    for i in (0..whole).step_by(16) {
        let rounded: __m256bh = _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(src.as_ptr().add(i)), factor));
        _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, std::mem::transmute::<__m256bh, __m256i>(rounded));
    }
    for i in whole..src.len() {
        dst[i] = bf16(src[i] * scale);
    }
}

impl PackedWeights {
    /// Packs the transposed weights `w_t` (`[inputs, outputs]` row-major).
    /// `None` unless [`fits`]`(inputs, outputs)`.
    pub fn pack(w_t: &[f32], inputs: usize, outputs: usize) -> Option<Self> {
        if !fits(inputs, outputs) || w_t.len() != inputs * outputs {
            return None;
        }
        let mut tiles = vec![0u16; inputs * outputs];
        let depth_blocks = inputs / DEPTH;
        for cb in 0..outputs / BLOCK {
            for kb in 0..depth_blocks {
                for half in 0..2 {
                    let tile = &mut tiles[((cb * depth_blocks + kb) * 2 + half) * TILE..][..TILE];
                    for pair in 0..16 {
                        for col in 0..16 {
                            let c = cb * BLOCK + half * 16 + col;
                            for e in 0..2 {
                                tile[pair * 32 + col * 2 + e] = bf16(w_t[(kb * DEPTH + pair * 2 + e) * outputs + c]);
                            }
                        }
                    }
                }
            }
        }
        Some(Self { tiles, inputs, outputs })
    }

    /// Layers over the same inputs with their outputs side by side (q|k|v):
    /// the tiles are stored column block after column block, so the joined
    /// layer's tiles are the parts' one after another. `None` unless every
    /// part has the same number of inputs.
    pub fn side_by_side(parts: &[&PackedWeights]) -> Option<Self> {
        let inputs = parts.first()?.inputs;
        if parts.iter().any(|p| p.inputs != inputs) {
            return None;
        }
        let tiles = parts.iter().flat_map(|p| p.tiles.iter().copied()).collect();
        Some(Self { tiles, inputs, outputs: parts.iter().map(|p| p.outputs).sum() })
    }

    /// `out[rows x outputs] = epilogue(x[rows x inputs] * W^T + bias)`,
    /// overwriting `out`. Each 32x32 block of sums leaves the tiles into a
    /// small buffer, gets its bias and activation there (in L1), and only
    /// then is written out: no separate pass for the bias or the GELU over
    /// a matrix that does not fit in cache.
    ///
    /// Panics if the shapes do not match (a caller's bug, not input).
    pub fn matmul(&self, x: &[f32], rows: usize, bias: &[f32], epilogue: Epilogue, out: &mut [f32]) {
        let (k, n) = (self.inputs, self.outputs);
        let padded = rows.div_ceil(BLOCK) * BLOCK;
        assert!(x.len() >= rows * k && out.len() >= rows * n && bias.len() == n, "amx matmul: shapes");
        let (row_blocks, col_blocks) = (padded / BLOCK, n / BLOCK);
        let threads = rayon::current_num_threads().max(1);
        // Split the row blocks over the threads; with fewer row blocks than
        // threads (a short query, a small batch) split the columns instead,
        // each thread rounding the same few rows.
        let by_rows = row_blocks >= threads;
        let parts = if by_rows { threads.min(row_blocks) } else { threads.min(col_blocks) };
        let (row_per, col_per) =
            if by_rows { (row_blocks.div_ceil(parts), col_blocks) } else { (row_blocks, col_blocks.div_ceil(parts)) };
        let out_ptr = DisjointOut::new(out);
        let run = |t: usize| {
            let (rows_of, cols_of) = if by_rows {
                (t * row_per..((t + 1) * row_per).min(row_blocks), 0..col_blocks)
            } else {
                (0..row_blocks, t * col_per..((t + 1) * col_per).min(col_blocks))
            };
            if rows_of.is_empty() || cols_of.is_empty() {
                return;
            }
            let mut a = vec![0u16; BLOCK * k];
            let mut sums = [0f32; BLOCK * BLOCK];
            // SAFETY: `available()` (via `pack`) enabled AMX for the process;
            // tiles are configured on this thread first and released after.
            unsafe { platform::configure() };
            for rb in rows_of {
                let r0 = rb * BLOCK;
                let valid = rows.saturating_sub(r0).min(BLOCK);
                round_to_bf16(&x[r0 * k..(r0 + valid) * k], 1.0, &mut a);
                a[valid * k..].fill(0);
                for cb in cols_of.clone() {
                    // SAFETY: `a` holds 32 x k values; the weight tiles of
                    // column block `cb` lie inside `tiles`; `sums` holds 32 x 32.
                    unsafe {
                        platform::block(
                            a.as_ptr(),
                            k,
                            self.tiles.as_ptr().add(cb * (k / DEPTH) * 2 * TILE),
                            sums.as_mut_ptr(),
                        )
                    };
                    let c0 = cb * BLOCK;
                    let block = &mut sums[..valid * BLOCK];
                    for row in block.chunks_exact_mut(BLOCK) {
                        row.iter_mut().zip(&bias[c0..c0 + BLOCK]).for_each(|(s, b)| *s += b);
                    }
                    if let Epilogue::Gelu = epilogue {
                        gelu(block);
                    }
                    for (r, row) in block.chunks_exact(BLOCK).enumerate() {
                        // SAFETY: row r0 + r < rows and columns c0..c0 + 32 <= n
                        // lie inside `out` (asserted above), and this thread
                        // alone writes this (row block, column block).
                        unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), out_ptr.at((r0 + r) * n + c0), BLOCK) };
                    }
                }
            }
            // SAFETY: as above; nothing on this thread uses the tiles after.
            unsafe { platform::release() };
        };
        if parts > 1 && rows * n * k >= 1 << 18 {
            (0..parts).into_par_iter().for_each(run);
        } else {
            (0..parts).for_each(run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_f32(b: u16) -> f32 {
        f32::from_bits((b as u32) << 16)
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even (1).
        assert_eq!(bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(bf16(1.0 + 3.0 / 512.0), 0x3f81);
        assert!(to_f32(bf16(f32::NAN)).is_nan());
        assert_eq!(to_f32(bf16(-2.5)), -2.5);
    }

    #[test]
    fn matches_the_bf16_product_for_every_row_tail() {
        let (k, n) = (96, 64);
        if !fits(k, n) {
            eprintln!("no AMX here (or TESSERA_EMBED_AMX=0); the kernel is not used");
            return;
        }
        let w_t: Vec<f32> = (0..k * n).map(|i| ((i * 31) % 97) as f32 / 97.0 - 0.5).collect();
        let bias: Vec<f32> = (0..n).map(|c| c as f32 * 0.1 - 3.0).collect();
        let packed = PackedWeights::pack(&w_t, k, n).expect("fits");
        for rows in [1, 15, 16, 17, 31, 32, 33, 64, 65, 200] {
            let x: Vec<f32> = (0..rows * k).map(|i| ((i * 17) % 89) as f32 / 89.0 - 0.5).collect();
            // The same products of bf16-rounded operands, summed in f64.
            let want: Vec<f32> = (0..rows * n)
                .map(|e| {
                    let (r, c) = (e / n, e % n);
                    let dot: f64 =
                        (0..k).map(|i| to_f32(bf16(x[r * k + i])) as f64 * to_f32(bf16(w_t[i * n + c])) as f64).sum();
                    (dot + bias[c] as f64) as f32
                })
                .collect();
            let mut want_gelu = want.clone();
            gelu(&mut want_gelu);
            for (epilogue, want) in [(Epilogue::Bias, &want), (Epilogue::Gelu, &want_gelu)] {
                let mut out = vec![f32::NAN; rows * n];
                packed.matmul(&x, rows, &bias, epilogue, &mut out);
                for (e, (got, want)) in out.iter().zip(want.iter()).enumerate() {
                    assert!(
                        (got - want).abs() < 1e-4,
                        "rows {rows} {epilogue:?}: ({}, {}) {got} vs {want}",
                        e / n,
                        e % n
                    );
                }
            }
        }
    }

    #[test]
    fn joined_tiles_equal_the_joined_matrix_packed() {
        let (k, a, b) = (64, 32, 96);
        if !fits(k, a) {
            eprintln!("no AMX here (or TESSERA_EMBED_AMX=0); the kernel is not used");
            return;
        }
        let left: Vec<f32> = (0..k * a).map(|i| i as f32 * 0.01).collect();
        let right: Vec<f32> = (0..k * b).map(|i| -(i as f32) * 0.02).collect();
        let joined: Vec<f32> =
            (0..k).flat_map(|i| left[i * a..(i + 1) * a].iter().chain(&right[i * b..(i + 1) * b]).copied()).collect();
        let parts = [PackedWeights::pack(&left, k, a).unwrap(), PackedWeights::pack(&right, k, b).unwrap()];
        let side = PackedWeights::side_by_side(&[&parts[0], &parts[1]]).unwrap();
        let whole = PackedWeights::pack(&joined, k, a + b).unwrap();
        assert_eq!((side.inputs, side.outputs), (whole.inputs, whole.outputs));
        assert!(side.tiles == whole.tiles, "joined tiles differ from the packed joined matrix");
    }

    #[test]
    fn refuses_shapes_the_tiles_do_not_divide() {
        assert!(PackedWeights::pack(&[0.0; 48 * 32], 48, 32).is_none());
        assert!(PackedWeights::pack(&[0.0; 64 * 40], 64, 40).is_none());
    }
}
