//! Rotary position embedding applied in place to one head's vector, from
//! precomputed cos/sin tables (one row of `head_dim / 2` angles per position).
//!
//! Two pairings exist in GGUF models: llama's (`2i`, `2i+1`) and NeoX/Qwen2's
//! (`i`, `i + d/2`); both are candle's `rope_i` / `rope` formulas.

/// cos/sin tables of one model.
pub(crate) struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    neox: bool,
}

impl Rope {
    /// Tables for `positions` positions of heads of `head_dim` values. The
    /// angles are computed as ggml does (`θ = pos`, then `θ *= base^(-2/d)`
    /// per pair, in f32), so they carry llama.cpp's rounding.
    pub fn new(head_dim: usize, base: f32, positions: usize, neox: bool) -> Self {
        let half = head_dim / 2;
        let theta_scale = base.powf(-2.0 / head_dim as f32);
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            let mut theta = p as f32;
            for _ in 0..half {
                cos.push(theta.cos());
                sin.push(theta.sin());
                theta *= theta_scale;
            }
        }
        Self { cos, sin, half, neox }
    }

    /// Rotates `x` (one head) to position `pos` (below the table's positions).
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let (cos, sin) = (&self.cos[pos * self.half..][..self.half], &self.sin[pos * self.half..][..self.half]);
        for i in 0..self.half {
            let (a, b) = if self.neox { (i, i + self.half) } else { (2 * i, 2 * i + 1) };
            let (x0, x1) = (x[a], x[b]);
            x[a] = x0 * cos[i] - x1 * sin[i];
            x[b] = x0 * sin[i] + x1 * cos[i];
        }
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
            let rope = Rope::new(hd, 10_000.0, 8, neox);
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
}
