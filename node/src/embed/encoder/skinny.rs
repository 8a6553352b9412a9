//! The product of a few rows (a short query's tokens) with a layer's
//! weights, without packing.
//!
//! `gemm` repacks the whole weight matrix into its panel layout on every
//! call, which for a 15-token query costs more than the arithmetic: the
//! weights (42 MB for all-MiniLM-L6-v2's layers) are read, written and read
//! again. Here the transposed weights are read in place, 16 outputs (one
//! AVX-512 register) at a time, against up to sixteen input rows held as
//! broadcasts: a query of up to 16 word pieces reads every weight once.
//!
//! That read is the whole cost (measured: one core streamed ~6 GB/s of f32
//! weights here, 7-11 ms a query), so this path reads the weights as f16,
//! half the bytes, widened to f32 in registers; the inputs and the sums stay
//! f32. Rounding a weight to f16 moves it by at most 2^-11 of itself; the
//! fixture's short sentences, which take this path, keep cosine >= 0.9999
//! to sentence-transformers.
use half::f16;
use rayon::prelude::*;

use super::disjoint_out::DisjointOut;

/// Rows up to which [`matmul`] is used instead of `gemm` (measured: at 15
/// rows this is 2x faster than `gemm` with packing; by a few hundred rows
/// packing pays for itself).
pub const MAX_ROWS: usize = 64;

/// Output columns per block: one AVX-512 register.
const BLOCK: usize = 16;

/// Input rows per pass over the weights: sixteen accumulators.
const ROWS: usize = 16;

/// True when [`matmul`] can run here: AVX-512 and a multiple of 16 outputs.
pub fn available(outputs: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        outputs.is_multiple_of(BLOCK) && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = outputs;
        false
    }
}

/// `out[rows x n] += x[rows x k] * w_t[k x n]` (all row-major; `out` holds
/// the bias already). The column blocks are split over the pool's threads.
///
/// Panics unless [`available`]`(n)` and the slices have these shapes.
pub fn matmul(x: &[f32], rows: usize, k: usize, w_t: &[f16], n: usize, out: &mut [f32]) {
    assert!(available(n), "skinny matmul called where it cannot run");
    assert!(x.len() >= rows * k && w_t.len() >= k * n && out.len() >= rows * n, "skinny matmul: shapes");
    let blocks = n / BLOCK;
    let threads = rayon::current_num_threads().min(blocks).max(1);
    let per = blocks.div_ceil(threads);
    let out_ptr = DisjointOut::new(out);
    let run = |t: usize| {
        let (first, last) = (t * per, ((t + 1) * per).min(blocks));
        for r0 in (0..rows).step_by(ROWS) {
            let r = (rows - r0).min(ROWS);
            for b in first..last {
                // SAFETY: AVX-512F is present (`available`); the shapes are
                // asserted above; each thread writes only its own column
                // blocks of `out`.
                unsafe { block(x, r0, r, k, w_t, n, b * BLOCK, out_ptr) };
            }
        }
    };
    if threads > 1 && rows * n * k >= 1 << 18 {
        (0..threads).into_par_iter().for_each(run);
    } else {
        (0..threads).for_each(run);
    }
}

/// Rows `r0..r0 + r` (r <= 16) times columns `col..col + 16`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn block(x: &[f32], r0: usize, r: usize, k: usize, w_t: &[f16], n: usize, col: usize, out: DisjointOut) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); ROWS];
    let xp = x.as_ptr().add(r0 * k);
    let wp = w_t.as_ptr().add(col);
    macro_rules! rows {
        ($count:literal) => {
            for kk in 0..k {
                let w = _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(kk * n) as *const __m256i));
                for i in 0..$count {
                    acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(*xp.add(i * k + kk)), w, acc[i]);
                }
            }
        };
    }
    // A literal row count per case, so the inner loop unrolls into registers.
    match r {
        16 => rows!(16),
        15 => rows!(15),
        14 => rows!(14),
        13 => rows!(13),
        12 => rows!(12),
        11 => rows!(11),
        10 => rows!(10),
        9 => rows!(9),
        8 => rows!(8),
        7 => rows!(7),
        6 => rows!(6),
        5 => rows!(5),
        4 => rows!(4),
        3 => rows!(3),
        2 => rows!(2),
        _ => rows!(1),
    }
    for (i, a) in acc.iter().enumerate().take(r) {
        let o = out.at((r0 + i) * n + col);
        _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), *a));
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn block(_: &[f32], _: usize, _: usize, _: usize, _: &[f16], _: usize, _: usize, _: DisjointOut) {
    unreachable!("available() is false off x86-64")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_definition_for_every_row_count() {
        let (k, n) = (96, 64);
        if !available(n) {
            eprintln!("no AVX-512 here; the skinny kernel is not used");
            return;
        }
        let w_t: Vec<f16> = (0..k * n).map(|i| f16::from_f32(((i * 31) % 97) as f32 / 97.0 - 0.5)).collect();
        for rows in [1, 2, 7, 8, 9, 15, 16, 17, 33, 64] {
            let x: Vec<f32> = (0..rows * k).map(|i| ((i * 17) % 89) as f32 / 89.0 - 0.5).collect();
            let mut out = vec![1.0f32; rows * n];
            matmul(&x, rows, k, &w_t, n, &mut out);
            for r in 0..rows {
                for c in 0..n {
                    let want = 1.0 + (0..k).map(|i| x[r * k + i] * w_t[i * n + c].to_f32()).sum::<f32>();
                    assert!(
                        (out[r * n + c] - want).abs() < 1e-4,
                        "rows {rows}: ({r}, {c}) {} vs {want}",
                        out[r * n + c]
                    );
                }
            }
        }
    }
}
