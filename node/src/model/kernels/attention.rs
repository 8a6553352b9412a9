//! Causal attention of one forward step against the KV caches, fused: for
//! every (token, query head) pair, scores against the cached keys of its
//! key/value group (GQA by index, no repeated copies), softmax with one max,
//! one exp per score and one final division, and the weighted values summed in
//! place. The softmax scale is folded into the query beforehand.
//!
//! Pairs run in parallel (sequences × tokens × heads), so a batch of decoding
//! sequences uses every core, not only the first sequence's heads.
use rayon::prelude::*;

use super::simd::{self, Lanes, Portable};
use crate::model::kv_cache::LayerKv;

/// Head counts of this rank's share of a layer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heads {
    /// Query heads.
    pub n_q: usize,
    /// Key/value heads (groups).
    pub n_kv: usize,
    /// Values per head.
    pub head_dim: usize,
}

impl Heads {
    /// Width of a fused `q | k | v` row.
    pub fn qkv_width(&self) -> usize {
        (self.n_q + 2 * self.n_kv) * self.head_dim
    }
}

/// One sequence of the step: its cache for this layer (already holding the
/// step's keys and values) and the position of its first new token.
pub(crate) struct SeqView<'a> {
    /// The layer's cache.
    pub kv: &'a LayerKv,
    /// Position of the first token of the step.
    pub start: usize,
    /// Tokens in the step.
    pub len: usize,
}

/// Attention output `tokens × (n_q · head_dim)` for the fused, roped and
/// scaled `qkv` rows of every sequence in `seqs` order.
pub(crate) fn attend(heads: Heads, qkv: &[f32], seqs: &[SeqView<'_>]) -> Vec<f32> {
    let hd = heads.head_dim;
    let owners: Vec<(usize, usize)> =
        seqs.iter().enumerate().flat_map(|(i, s)| (s.start..s.start + s.len).map(move |p| (i, p))).collect();
    let mut out = vec![0f32; owners.len() * heads.n_q * hd];
    let avx2 = simd::avx2_fma();
    let group = heads.n_q / heads.n_kv.max(1);
    let (w, kv_w) = (heads.qkv_width(), heads.n_kv * hd);
    out.par_chunks_mut(hd).enumerate().for_each_init(Vec::new, |scores, (idx, o)| {
        let (tok, h) = (idx / heads.n_q, idx % heads.n_q);
        let (si, pos) = owners[tok];
        let q = &qkv[tok * w + h * hd..][..hd];
        let one = One { q, kv: seqs[si].kv, stride: kv_w, offset: (h / group) * hd, n: pos + 1 };
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: AVX2 and FMA were detected at run time; `o` and the
            // query are `hd` long, and every cached row has `hd` values at `offset`.
            return unsafe {
                match hd {
                    64 => attend_one_avx2_fixed::<8>(&one, scores, o),
                    128 => attend_one_avx2_fixed::<16>(&one, scores, o),
                    _ => attend_one_avx2(&one, scores, o),
                }
            };
        }
        let _ = avx2;
        attend_one::<Portable>(&one, scores, o);
    });
    out
}

/// One query head of one token against `n` cached positions.
struct One<'a> {
    q: &'a [f32],
    kv: &'a LayerKv,
    stride: usize,
    offset: usize,
    n: usize,
}

#[inline(always)]
fn attend_one<L: Lanes>(a: &One<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    let hd = out.len();
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for t in 0..a.n {
        let s = L::dot(a.q, &a.kv.k[t * a.stride + a.offset..][..hd]);
        max = max.max(s);
        scores.push(s);
    }
    out.fill(0.0);
    let mut sum = 0f32;
    for (t, s) in scores.iter().enumerate() {
        let p = (s - max).exp();
        sum += p;
        L::axpy(out, p, &a.kv.v[t * a.stride + a.offset..][..hd]);
    }
    L::scale(out, 1.0 / sum);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_one_avx2(a: &One<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    attend_one::<simd::Avx2>(a, scores, out)
}

/// [`attend_one`] for heads of `8 · C` values with the query and the output
/// held in registers: scores four positions at a time (one horizontal
/// reduction per four), values accumulated without a load and store of the
/// output per position.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)] // register arrays indexed by lane group read best as loops
unsafe fn attend_one_avx2_fixed<const C: usize>(a: &One<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let q: [__m256; C] = std::array::from_fn(|c| _mm256_loadu_ps(a.q.as_ptr().add(8 * c)));
    let kp = a.kv.k.as_ptr().add(a.offset);
    let vp = a.kv.v.as_ptr().add(a.offset);
    let dot = |t: usize| -> __m256 {
        let row = kp.add(t * a.stride);
        let (mut s0, mut s1) = (_mm256_mul_ps(q[0], _mm256_loadu_ps(row)), _mm256_setzero_ps());
        for c in 1..C {
            if c % 2 == 1 {
                s1 = _mm256_fmadd_ps(q[c], _mm256_loadu_ps(row.add(8 * c)), s1);
            } else {
                s0 = _mm256_fmadd_ps(q[c], _mm256_loadu_ps(row.add(8 * c)), s0);
            }
        }
        _mm256_add_ps(s0, s1)
    };
    scores.clear();
    scores.reserve(a.n);
    let mut max = f32::NEG_INFINITY;
    let mut t = 0;
    while t + 4 <= a.n {
        let (d0, d1, d2, d3) = (dot(t), dot(t + 1), dot(t + 2), dot(t + 3));
        let h = _mm256_hadd_ps(_mm256_hadd_ps(d0, d1), _mm256_hadd_ps(d2, d3));
        let four = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
        let mut s = [0f32; 4];
        _mm_storeu_ps(s.as_mut_ptr(), four);
        for v in s {
            max = max.max(v);
            scores.push(v);
        }
        t += 4;
    }
    while t < a.n {
        let v = simd::hsum(dot(t));
        max = max.max(v);
        scores.push(v);
        t += 1;
    }
    let mut o = [_mm256_setzero_ps(); C];
    let mut sum = 0f32;
    for (t, s) in scores.iter().enumerate() {
        let p = (s - max).exp();
        sum += p;
        let pv = _mm256_set1_ps(p);
        let row = vp.add(t * a.stride);
        for c in 0..C {
            o[c] = _mm256_fmadd_ps(pv, _mm256_loadu_ps(row.add(8 * c)), o[c]);
        }
    }
    let inv = _mm256_set1_ps(1.0 / sum);
    for c in 0..C {
        _mm256_storeu_ps(out.as_mut_ptr().add(8 * c), _mm256_mul_ps(o[c], inv));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the textbook formula, with GQA (4 query heads over 2 groups),
    /// two sequences, a prompt chunk that starts mid-cache and causal masking.
    #[test]
    fn matches_reference_attention() {
        // 8: the generic path; 64 and 128: the register-held paths.
        for hd in [8, 64, 128] {
            check_against_reference(hd);
        }
    }

    fn check_against_reference(hd: usize) {
        let heads = Heads { n_q: 4, n_kv: 2, head_dim: hd };
        let kv_w = heads.n_kv * heads.head_dim;
        let val = |i: usize| ((i * 7919 % 97) as f32 - 48.0) / 40.0;
        let mk = |pos: usize, off: usize| LayerKv {
            k: (0..pos * kv_w).map(|i| val(i + off)).collect(),
            v: (0..pos * kv_w).map(|i| val(i * 3 + off + 1)).collect(),
        };
        let (a, b) = (mk(9, 0), mk(3, 11));
        // Sequence a: tokens at positions 6..9 (3 tokens); b: one token at position 2.
        let seqs = [SeqView { kv: &a, start: 6, len: 3 }, SeqView { kv: &b, start: 2, len: 1 }];
        let w = heads.qkv_width();
        let qkv: Vec<f32> = (0..4 * w).map(|i| val(i * 5 + 3)).collect();
        let got = attend(heads, &qkv, &seqs);
        let rows = [(0usize, 6usize), (0, 7), (0, 8), (1, 2)];
        for (tok, &(si, pos)) in rows.iter().enumerate() {
            for h in 0..heads.n_q {
                let g = h / 2;
                let q = &qkv[tok * w + h * hd..][..hd];
                let kv = seqs[si].kv;
                let s: Vec<f32> =
                    (0..=pos).map(|t| (0..hd).map(|d| q[d] * kv.k[t * kv_w + g * hd + d]).sum::<f32>()).collect();
                let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for d in 0..hd {
                    let want: f32 = (0..=pos).map(|t| e[t] / z * kv.v[t * kv_w + g * hd + d]).sum();
                    let have = got[tok * heads.n_q * hd + h * hd + d];
                    assert!((want - have).abs() < 1e-4, "hd {hd} tok {tok} head {h} dim {d}: {have} vs {want}");
                }
            }
        }
    }
}
