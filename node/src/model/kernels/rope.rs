//! Rotary position embedding applied in place to one head's vector, from
//! precomputed cos/sin tables (one row of `head_dim / 2` angles per position).
//!
//! The tables stop at [`TABLE_POSITIONS`]: Gemma 3 declares 32k positions and
//! two bases, and full tables would be ~70 MB per rank for positions most
//! requests never reach; later positions compute their angles on the fly with
//! the same f32 recurrence, so they carry the same rounding.
//!
//! Two pairings exist in GGUF models: llama's (`2i`, `2i+1`) and NeoX/Qwen2's
//! (`i`, `i + d/2`); both are candle's `rope_i` / `rope` formulas.

/// Positions with precomputed angles.
pub(crate) const TABLE_POSITIONS: usize = 8192;

/// cos/sin tables of one model (one RoPE base).
pub(crate) struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    theta_scale: f32,
    freq_scale: f32,
    neox: bool,
}

impl Rope {
    /// Tables for `positions` positions of heads of `head_dim` values. The
    /// angles are computed as ggml does (`θ = pos`, then `θ *= base^(-2/d)`
    /// per pair, in f32, each angle times `freq_scale` for linear position
    /// scaling), so they carry llama.cpp's rounding.
    pub fn new(head_dim: usize, base: f32, freq_scale: f32, positions: usize, neox: bool) -> Self {
        let half = head_dim / 2;
        let theta_scale = base.powf(-2.0 / head_dim as f32);
        let positions = positions.min(TABLE_POSITIONS);
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            let mut theta = p as f32;
            for _ in 0..half {
                cos.push((freq_scale * theta).cos());
                sin.push((freq_scale * theta).sin());
                theta *= theta_scale;
            }
        }
        Self { cos, sin, half, theta_scale, freq_scale, neox }
    }

    /// Rotates `x` (one head) to position `pos`.
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        if (pos + 1) * self.half > self.cos.len() {
            // Past the table: the same recurrence, one angle at a time.
            let mut theta = pos as f32;
            for i in 0..self.half {
                let angle = self.freq_scale * theta;
                self.rotate_pair(x, i, angle.cos(), angle.sin());
                theta *= self.theta_scale;
            }
            return;
        }
        let row = pos * self.half;
        for i in 0..self.half {
            self.rotate_pair(x, i, self.cos[row + i], self.sin[row + i]);
        }
    }

    #[inline]
    fn rotate_pair(&self, x: &mut [f32], i: usize, cos: f32, sin: f32) {
        let (a, b) = if self.neox { (i, i + self.half) } else { (2 * i, 2 * i + 1) };
        let (x0, x1) = (x[a], x[b]);
        x[a] = x0 * cos - x1 * sin;
        x[b] = x0 * sin + x1 * cos;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn matches_candle_rope_both_pairings() {
        let dev = Device::Cpu;
        let (hd, pos) = (8usize, 5usize);
        let x: Vec<f32> = (0..hd).map(|i| i as f32 * 0.3 - 1.0).collect();
        for neox in [false, true] {
            let rope = Rope::new(hd, 10_000.0, 1.0, 8, neox);
            let mut ours = x.clone();
            rope.apply(&mut ours, pos);
            let cos = Tensor::from_slice(&rope.cos[pos * 4..pos * 4 + 4], (1, 4), &dev).unwrap();
            let sin = Tensor::from_slice(&rope.sin[pos * 4..pos * 4 + 4], (1, 4), &dev).unwrap();
            let t = Tensor::from_slice(&x, (1, 1, 1, hd), &dev).unwrap();
            let theirs = if neox {
                candle_nn::rotary_emb::rope(&t, &cos, &sin).unwrap()
            } else {
                candle_nn::rotary_emb::rope_i(&t, &cos, &sin).unwrap()
            };
            let theirs = theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (a, b) in ours.iter().zip(&theirs) {
                assert!((a - b).abs() < 1e-6, "neox={neox}: {ours:?} vs {theirs:?}");
            }
        }
    }

    #[test]
    fn positions_past_the_table_rotate_as_tabled_ones() {
        let x: Vec<f32> = (0..16).map(|i| i as f32 * 0.1 - 0.7).collect();
        let pos = TABLE_POSITIONS + 3;
        let (long, short) = (Rope::new(16, 1e6, 0.5, pos + 1, true), Rope::new(16, 1e6, 0.5, 10, true));
        assert!(long.cos.len() < (pos + 1) * 8, "the table is capped");
        // A table built up to `pos` directly (bypassing the cap) agrees bit for bit.
        let mut full = Rope::new(16, 1e6, 0.5, 1, true);
        full.cos.clear();
        full.sin.clear();
        for p in 0..=pos {
            let mut theta = p as f32;
            for _ in 0..8 {
                full.cos.push((0.5 * theta).cos());
                full.sin.push((0.5 * theta).sin());
                theta *= full.theta_scale;
            }
        }
        let (mut a, mut b, mut c) = (x.clone(), x.clone(), x.clone());
        long.apply(&mut a, pos);
        short.apply(&mut b, pos);
        full.apply(&mut c, pos);
        assert_eq!(a, c);
        assert_eq!(b, c);
        assert_ne!(a, x);
    }
}
