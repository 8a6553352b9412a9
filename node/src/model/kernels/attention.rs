//! Causal attention of one forward step against the f16 KV caches, fused: for
//! every (token, query head) pair, scores against the cached keys of its
//! key/value group (GQA by index, no repeated copies), softmax with one max,
//! one exp per score and one final division, and the weighted values summed in
//! place.
//!
//! Rounding follows llama.cpp's default (non-flash) attention, whose outputs
//! are the reference: the query is rounded to f16 for the `q·k` dot products
//! (ggml converts the f32 operand of an f16 matmul), the scale is applied to
//! the f32 scores, and the softmax weights are rounded to f16 before they
//! weight the f16 values; all sums are in f32.
//!
//! Pairs run in parallel (sequences × tokens × heads), so a batch of decoding
//! sequences uses every core, not only the first sequence's heads.
//!
//! A sliding-window layer (Gemma 3's local layers) sees only the last `window`
//! positions up to and including its own, as llama.cpp masks them (a key at
//! `p0` is visible from `p1` when `p1 - p0 < window`).
use half::f16;
use rayon::prelude::*;

use super::simd;
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

/// Attention output `tokens × (n_q · head_dim)` for the fused, roped `qkv`
/// rows of every sequence in `seqs` order; scores are multiplied by `scale`;
/// `window` limits each token to that many positions (itself included).
pub(crate) fn attend(heads: Heads, qkv: &[f32], seqs: &[SeqView<'_>], scale: f32, window: Option<usize>) -> Vec<f32> {
    let hd = heads.head_dim;
    let owners: Vec<(usize, usize)> =
        seqs.iter().enumerate().flat_map(|(i, s)| (s.start..s.start + s.len).map(move |p| (i, p))).collect();
    let mut out = vec![0f32; owners.len() * heads.n_q * hd];
    let avx2 = simd::avx2_fma() && hd.is_multiple_of(8);
    let group = heads.n_q / heads.n_kv.max(1);
    let (w, kv_w) = (heads.qkv_width(), heads.n_kv * hd);
    // Per worker: the scores buffer and the query rounded to f16.
    let scratch = || (Vec::new(), vec![0f32; hd]);
    out.par_chunks_mut(hd).enumerate().for_each_init(scratch, |(scores, q), (idx, o)| {
        let (tok, h) = (idx / heads.n_q, idx % heads.n_q);
        let (si, pos) = owners[tok];
        // The query as f16 values (widened back for the arithmetic).
        for (q, &x) in q.iter_mut().zip(&qkv[tok * w + h * hd..][..hd]) {
            *q = f16::from_f32(x).to_f32();
        }
        let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let one = One { q, kv: seqs[si].kv, stride: kv_w, offset: (h / group) * hd, first, n: pos + 1, scale };
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: AVX2/FMA/F16C were detected at run time and `hd` is a
            // multiple of 8; `o` and the query are `hd` long, and every cached
            // row has `hd` values at `offset`.
            return unsafe {
                match hd {
                    64 => attend_one_avx2::<8>(&one, scores, o),
                    128 => attend_one_avx2::<16>(&one, scores, o),
                    _ => attend_one_avx2_any(&one, scores, o),
                }
            };
        }
        let _ = avx2;
        attend_one(&one, scores, o);
    });
    out
}

/// One query head of one token against cached positions `first..n`.
struct One<'a> {
    q: &'a [f32],
    kv: &'a LayerKv,
    stride: usize,
    offset: usize,
    first: usize,
    n: usize,
    scale: f32,
}

impl One<'_> {
    fn key(&self, t: usize) -> &[f16] {
        &self.kv.k[t * self.stride + self.offset..][..self.q.len()]
    }
    fn value(&self, t: usize) -> &[f16] {
        &self.kv.v[t * self.stride + self.offset..][..self.q.len()]
    }
}

/// The softmax of `scores` in place, normalised and then each rounded to f16
/// (llama.cpp normalises in f32, then its f16 matmul rounds the weights); the
/// sum is in f64 as ggml's. Returns 1: the weights are already normalised.
fn softmax_weights(scores: &mut [f32], max: f32) -> f32 {
    let mut sum = 0f64;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s as f64;
    }
    let inv = (1.0 / sum) as f32;
    for s in scores.iter_mut() {
        *s = f16::from_f32(*s * inv).to_f32();
    }
    1.0
}

/// Portable version.
fn attend_one(a: &One<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for t in a.first..a.n {
        let s = a.q.iter().zip(a.key(t)).map(|(q, k)| q * k.to_f32()).sum::<f32>() * a.scale;
        max = max.max(s);
        scores.push(s);
    }
    let sum = softmax_weights(scores, max);
    out.fill(0.0);
    for (t, p) in (a.first..).zip(scores.iter()) {
        for (o, v) in out.iter_mut().zip(a.value(t)) {
            *o += p * v.to_f32();
        }
    }
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// AVX2 for heads of `8 · C` values: the query and the output held in
/// registers, keys and values widened eight at a time, scores four positions
/// per horizontal reduction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // register arrays indexed by lane group read best as loops
unsafe fn attend_one_avx2<const C: usize>(a: &One<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let q: [__m256; C] = std::array::from_fn(|c| _mm256_loadu_ps(a.q.as_ptr().add(8 * c)));
    let kp = a.kv.k.as_ptr().add(a.offset) as *const __m128i;
    let vp = a.kv.v.as_ptr().add(a.offset) as *const __m128i;
    let row8 = |p: *const __m128i, t: usize, c: usize| {
        _mm256_cvtph_ps(_mm_loadu_si128((p as *const f16).add(t * a.stride + 8 * c) as *const __m128i))
    };
    let dot = |t: usize| -> __m256 {
        let (mut s0, mut s1) = (_mm256_mul_ps(q[0], row8(kp, t, 0)), _mm256_setzero_ps());
        for c in 1..C {
            if c % 2 == 1 {
                s1 = _mm256_fmadd_ps(q[c], row8(kp, t, c), s1);
            } else {
                s0 = _mm256_fmadd_ps(q[c], row8(kp, t, c), s0);
            }
        }
        _mm256_add_ps(s0, s1)
    };
    scores.clear();
    scores.reserve(a.n - a.first);
    let mut max = f32::NEG_INFINITY;
    let mut t = a.first;
    while t + 4 <= a.n {
        let (d0, d1, d2, d3) = (dot(t), dot(t + 1), dot(t + 2), dot(t + 3));
        let h = _mm256_hadd_ps(_mm256_hadd_ps(d0, d1), _mm256_hadd_ps(d2, d3));
        let four = _mm_mul_ps(_mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)), _mm_set1_ps(a.scale));
        let mut s = [0f32; 4];
        _mm_storeu_ps(s.as_mut_ptr(), four);
        for v in s {
            max = max.max(v);
            scores.push(v);
        }
        t += 4;
    }
    while t < a.n {
        let v = simd::hsum(dot(t)) * a.scale;
        max = max.max(v);
        scores.push(v);
        t += 1;
    }
    let sum = softmax_weights(scores, max);
    let mut o = [_mm256_setzero_ps(); C];
    for (t, &p) in (a.first..).zip(scores.iter()) {
        let pv = _mm256_set1_ps(p);
        for c in 0..C {
            o[c] = _mm256_fmadd_ps(pv, row8(vp, t, c), o[c]);
        }
    }
    let inv = _mm256_set1_ps(1.0 / sum);
    for c in 0..C {
        _mm256_storeu_ps(out.as_mut_ptr().add(8 * c), _mm256_mul_ps(o[c], inv));
    }
}

/// AVX2 for any head size that is a multiple of 8 (the output in memory).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_one_avx2_any(a: &One<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    use std::arch::x86_64::*;
    let hd = out.len();
    let load = |p: &[f16], c: usize| _mm256_cvtph_ps(_mm_loadu_si128(p.as_ptr().add(c) as *const __m128i));
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for t in a.first..a.n {
        let k = a.key(t);
        let mut s = _mm256_setzero_ps();
        for c in (0..hd).step_by(8) {
            s = _mm256_fmadd_ps(_mm256_loadu_ps(a.q.as_ptr().add(c)), load(k, c), s);
        }
        let v = simd::hsum(s) * a.scale;
        max = max.max(v);
        scores.push(v);
    }
    let sum = softmax_weights(scores, max);
    out.fill(0.0);
    for (t, &p) in (a.first..).zip(scores.iter()) {
        let (v, pv) = (a.value(t), _mm256_set1_ps(p));
        for c in (0..hd).step_by(8) {
            let at = out.as_mut_ptr().add(c);
            _mm256_storeu_ps(at, _mm256_fmadd_ps(pv, load(v, c), _mm256_loadu_ps(at)));
        }
    }
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_attention() {
        // 8 and 24: the any-size path; 64 and 128: the register-held paths;
        // a window of 2 and one of 5 (shorter and longer than some tokens' history).
        for hd in [8, 24, 64, 128] {
            for window in [None, Some(2), Some(5)] {
                check_against_reference(hd, window);
            }
        }
    }

    /// Against the textbook formula on the same f16 inputs, with GQA (4 query
    /// heads over 2 groups), two sequences, a prompt chunk that starts
    /// mid-cache and causal masking.
    fn check_against_reference(hd: usize, window: Option<usize>) {
        let heads = Heads { n_q: 4, n_kv: 2, head_dim: hd };
        let kv_w = heads.n_kv * heads.head_dim;
        let val = |i: usize| ((i * 7919 % 97) as f32 - 48.0) / 40.0;
        let mk = |pos: usize, off: usize| LayerKv {
            k: (0..pos * kv_w).map(|i| f16::from_f32(val(i + off))).collect(),
            v: (0..pos * kv_w).map(|i| f16::from_f32(val(i * 3 + off + 1))).collect(),
        };
        let (a, b) = (mk(9, 0), mk(3, 11));
        // Sequence a: tokens at positions 6..9 (3 tokens); b: one token at position 2.
        let seqs = [SeqView { kv: &a, start: 6, len: 3 }, SeqView { kv: &b, start: 2, len: 1 }];
        let w = heads.qkv_width();
        let qkv: Vec<f32> = (0..4 * w).map(|i| val(i * 5 + 3)).collect();
        let scale = 1.0 / (hd as f32).sqrt();
        let got = attend(heads, &qkv, &seqs, scale, window);
        let rows = [(0usize, 6usize), (0, 7), (0, 8), (1, 2)];
        for (tok, &(si, pos)) in rows.iter().enumerate() {
            for h in 0..heads.n_q {
                let g = h / 2;
                let q = &qkv[tok * w + h * hd..][..hd];
                let kv = seqs[si].kv;
                let first = window.map_or(0, |w| (pos + 1).saturating_sub(w));
                let s: Vec<f32> = (first..=pos)
                    .map(|t| (0..hd).map(|d| q[d] * kv.k[t * kv_w + g * hd + d].to_f32()).sum::<f32>() * scale)
                    .collect();
                let m = s.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f32 = e.iter().sum();
                for d in 0..hd {
                    let want: f32 =
                        (first..=pos).map(|t| e[t - first] / z * kv.v[t * kv_w + g * hd + d].to_f32()).sum();
                    let have = got[tok * heads.n_q * hd + h * hd + d];
                    // f16 rounding of q and of the weights: ~1e-3 relative.
                    assert!(
                        (want - have).abs() < 5e-3,
                        "hd {hd} window {window:?} tok {tok} head {h} dim {d}: {have} vs {want}"
                    );
                }
            }
        }
    }
}
