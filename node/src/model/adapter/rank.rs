//! One rank's share of an adapter, and the product a forward step adds.
//!
//! Every projection this decoder splits is split by output row (see
//! `decoder`), so an adapter splits the same way: each rank keeps the whole
//! `A` (the update's input side needs the whole input, which every rank has)
//! and only its own rows of `B`. Each output value is then the same sums in
//! the same order whatever the world size, so greedy tokens agree across
//! tensor-parallel sizes with adapters as they do without.
use std::collections::BTreeMap;
use std::ops::Range;

use super::{LoraAdapter, Target};
use crate::model::decoder::DecoderConfig;
use crate::model::partition::Partition;

/// One projection's update on this rank.
pub struct RankLora {
    /// `rank × input`, scaled by `alpha / r` once at load.
    a: Vec<f32>,
    /// This rank's rows of `B` (`rows × rank`).
    b: Vec<f32>,
    rank: usize,
    input: usize,
}

impl RankLora {
    /// Output rows on this rank.
    pub fn rows(&self) -> usize {
        self.b.len().checked_div(self.rank).unwrap_or(0)
    }

    /// Adds `B (s·A x)` of each row `t` of `rows` in `x` (`input` wide) to
    /// `out[t * width + col ..][..self.rows()]`. The same sums in the same
    /// order on every path, so the AVX2 build and the baseline one agree
    /// bit for bit (it only widens the lanes' registers).
    pub fn add_to(&self, x: &[f32], rows: Range<usize>, out: &mut [f32], width: usize, col: usize) {
        #[cfg(target_arch = "x86_64")]
        if crate::model::kernels::simd::avx2_fma() {
            // SAFETY: the CPU has AVX2 (checked just above).
            unsafe { self.add_to_avx2(x, rows, out, width, col) };
            return;
        }
        self.add_to_portable(x, rows, out, width, col);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn add_to_avx2(&self, x: &[f32], rows: Range<usize>, out: &mut [f32], width: usize, col: usize) {
        self.add_to_portable(x, rows, out, width, col);
    }

    #[inline(always)]
    fn add_to_portable(&self, x: &[f32], rows: Range<usize>, out: &mut [f32], width: usize, col: usize) {
        let n = self.rows();
        for t in rows {
            let xr = &x[t * self.input..(t + 1) * self.input];
            let u: Vec<f32> = (0..self.rank).map(|j| dot(&self.a[j * self.input..(j + 1) * self.input], xr)).collect();
            let o = &mut out[t * width + col..t * width + col + n];
            // Output rows split over the rank's threads: a decode step's
            // update is one row, and doing it on one thread left the other
            // idle, then woken again for the next product (measured: one
            // stream lost ~15 % to 0.1 % of the arithmetic).
            let (b, r) = (&self.b, self.rank);
            let fill = |o: &mut [f32], first: usize| {
                for (i, oi) in o.iter_mut().enumerate() {
                    *oi += dot(&b[(first + i) * r..(first + i + 1) * r], &u);
                }
            };
            if n >= 256 && rayon::current_num_threads() > 1 {
                let (lo, hi) = o.split_at_mut(n / 2);
                rayon::join(|| fill(lo, 0), || fill(hi, n / 2));
            } else {
                fill(o, 0);
            }
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        (self.a.len() + self.b.len()) * std::mem::size_of::<f32>()
    }
}

/// Sum of products in 8 lanes (so it vectorises), then the lanes in order.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for k in 0..8 {
            lanes[k] += x[k] * y[k];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// An adapter's share on one rank: per layer, the projections it wraps.
pub struct RankAdapter {
    layers: Vec<BTreeMap<Target, RankLora>>,
}

impl RankAdapter {
    /// This rank's share of `adapter` (already checked against `cfg`).
    pub fn new(adapter: &LoraAdapter, cfg: &DecoderConfig, part: &Partition) -> Self {
        let hd = cfg.head_dim;
        let q_rows = part.q_heads().start * hd..part.q_heads().end * hd;
        let kv_rows = part.kv_groups.start * hd..part.kv_groups.end * hd;
        let scale = adapter.scale();
        let layers = adapter
            .layers
            .iter()
            .map(|layer| {
                layer
                    .iter()
                    .map(|(&t, m)| {
                        let rows = match t {
                            Target::Q => q_rows.clone(),
                            Target::K | Target::V => kv_rows.clone(),
                            Target::O | Target::Down => part.hidden.clone(),
                            Target::Gate | Target::Up => part.ffn.clone(),
                        };
                        let r = adapter.rank;
                        let lora = RankLora {
                            a: m.a.iter().map(|v| v * scale).collect(),
                            b: m.b[rows.start * r..rows.end * r].to_vec(),
                            rank: r,
                            input: m.input,
                        };
                        (t, lora)
                    })
                    .collect()
            })
            .collect();
        Self { layers }
    }

    /// Layer `l`'s update of `target`, if the adapter wraps it.
    pub fn get(&self, l: usize, target: Target) -> Option<&RankLora> {
        self.layers.get(l)?.get(&target)
    }

    /// Bytes held on this rank.
    pub fn bytes(&self) -> usize {
        self.layers.iter().flat_map(|l| l.values()).map(RankLora::bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_scaled_low_rank_update_to_its_columns() {
        // rank 1, input 2, output 2: A = [1, 2], B = [[3], [4]], scale 2.
        let lora = RankLora { a: vec![2.0, 4.0], b: vec![3.0, 4.0], rank: 1, input: 2 };
        let x = [1.0, 1.0, 0.5, 0.0];
        let mut out = vec![0f32; 2 * 3];
        lora.add_to(&x, 0..2, &mut out, 3, 1);
        // row 0: s·A x = 6 → [18, 24]; row 1: s·A x = 1 → [3, 4]
        assert_eq!(out, vec![0.0, 18.0, 24.0, 0.0, 3.0, 4.0]);
        let long: Vec<f32> = (0..19).map(|i| i as f32).collect();
        assert_eq!(dot(&long, &long), (0..19).map(|i| (i * i) as f32).sum::<f32>());
    }
}
