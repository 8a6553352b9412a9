//! Self-attention over a batch of sequences packed without padding.
use gemm::Parallelism;
use rayon::prelude::*;

use super::disjoint_out::DisjointOut;
use super::linear::{Linear, Strided};
use super::vector_math::softmax;

/// One layer's attention: the query, key and value projections fused into
/// one product, then per (sequence, head) `softmax(q k^T / sqrt(d)) v` with
/// the scale folded into the first product, then the output projection.
///
/// Sequences are packed end to end (`starts`), so no token attends to
/// padding and no mask pass is needed: a batch of one long and seven short
/// texts costs what its tokens cost, not eight long ones.
pub struct SelfAttention {
    qkv: Linear,
    output: Linear,
    heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    /// From the separate projections of the checkpoint.
    pub fn new(query: Linear, key: Linear, value: Linear, output: Linear, heads: usize) -> Self {
        let head_dim = query.outputs() / heads;
        Self { qkv: Linear::concat(&[query, key, value]), output, heads, head_dim }
    }

    /// The attention block's output (before the residual and norm) for the
    /// packed tokens `x`, whose sequences start at `starts` (with the total
    /// as the last entry).
    pub fn forward(&self, x: &[f32], starts: &[usize], scratch: &mut Scratch, out: &mut Vec<f32>) {
        let tokens = *starts.last().unwrap_or(&0);
        let hidden = self.heads * self.head_dim;
        self.qkv.forward(x, tokens, &mut scratch.qkv);
        scratch.context.clear();
        scratch.context.resize(tokens * hidden, 0.0);
        let work: Vec<(usize, usize)> =
            (0..starts.len().saturating_sub(1)).flat_map(|s| (0..self.heads).map(move |h| (s, h))).collect();
        let qkv = &scratch.qkv;
        let context = DisjointOut::new(&mut scratch.context);
        let one = |&(s, h): &(usize, usize)| {
            let (start, len) = (starts[s], starts[s + 1] - starts[s]);
            // SAFETY: `context` holds tokens x hidden values; each (sequence,
            // head) writes only its own rows' own head columns of it, so no
            // two work items touch the same element.
            unsafe { self.attend(qkv, start, len, h, hidden, context) };
        };
        let total: usize = (0..starts.len().saturating_sub(1)).map(|s| (starts[s + 1] - starts[s]).pow(2)).sum();
        if total * self.heads >= 4096 && rayon::current_num_threads() > 1 {
            work.par_iter().for_each(one);
        } else {
            work.iter().for_each(one);
        }
        self.output.forward(&scratch.context, tokens, out);
    }

    /// One head of one sequence, written into its columns of `context`.
    ///
    /// # Safety
    /// `context` points at `tokens x hidden` values covering this sequence,
    /// and no one else writes this head's columns of its rows meanwhile.
    unsafe fn attend(&self, qkv: &[f32], start: usize, len: usize, h: usize, hidden: usize, context: DisjointOut) {
        if len == 0 {
            return;
        }
        let d = self.head_dim;
        let stride = 3 * hidden;
        let base = start * stride + h * d;
        assert!((start + len - 1) * stride + 2 * hidden + (h + 1) * d <= qkv.len(), "attention read out of range");
        let p = qkv.as_ptr();
        let (q, k, v) = (p.add(base), p.add(base + hidden), p.add(base + 2 * hidden));
        let mut scores = vec![0f32; len * len];
        let scale = 1.0 / (d as f32).sqrt();
        // scores[i][j] = q_i . k_j * scale: k read as the columns of k^T.
        let qk = Strided { a: q, a_rs: stride, a_cs: 1, b: k, b_rs: 1, b_cs: stride };
        qk.product(len, len, d, scores.as_mut_ptr(), len, false, scale, Parallelism::None);
        for row in scores.chunks_exact_mut(len) {
            softmax(row);
        }
        let pv = Strided { a: scores.as_ptr(), a_rs: len, a_cs: 1, b: v, b_rs: stride, b_cs: 1 };
        pv.product(len, d, len, context.at(start * hidden + h * d), hidden, false, 1.0, Parallelism::None);
    }
}

/// Buffers reused across layers and batches.
#[derive(Default)]
pub struct Scratch {
    qkv: Vec<f32>,
    context: Vec<f32>,
}
