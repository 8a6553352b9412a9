//! Activations quantised to 8 bits per 32-value block, the form the integer
//! dot-product kernels read: llama.cpp's Q8_1 (scale `d` and `s = d·Σq` per
//! block; Q8_0 kernels ignore `s`). The scales are rounded to f16 as llama.cpp
//! stores them (and kept widened to f32): the values then equal llama.cpp's, so
//! our logits follow its rounding, not a slightly different one whose effect
//! grows over 30 layers of re-quantisation (the fixture's near ties need that).
use half::f16;

/// Values per quantisation block (all GGUF block types used here).
pub(crate) const BLOCK: usize = 32;

/// `rows × cols` activations as 8-bit blocks.
pub(crate) struct Q8Acts {
    /// Values per row.
    pub cols: usize,
    /// `rows × cols` quantised values.
    pub qs: Vec<i8>,
    /// Scale per block.
    pub d: Vec<f32>,
    /// `d · Σ q` per block (the Q4_1 minimum term needs it).
    pub s: Vec<f32>,
    /// `s` transposed, `[block][row]`: four consecutive rows' terms of one
    /// block in one load.
    pub s_t: Vec<f32>,
    /// Rows.
    pub rows: usize,
}

impl Q8Acts {
    /// Quantises `rows` rows of `cols` values (`cols` a multiple of [`BLOCK`]).
    pub fn new(xs: &[f32], rows: usize, cols: usize) -> Self {
        let nb = rows * cols / BLOCK;
        let mut out =
            Self { cols, qs: vec![0; rows * cols], d: vec![0.0; nb], s: vec![0.0; nb], s_t: vec![0.0; nb], rows };
        for (b, (x, q)) in xs.chunks_exact(BLOCK).zip(out.qs.chunks_exact_mut(BLOCK)).enumerate().take(nb) {
            let amax = x.iter().fold(0f32, |a, &v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, &v) in q.iter_mut().zip(x) {
                *q = (v * id).round() as i8;
                sum += *q as i32;
            }
            out.d[b] = f16::from_f32(d).to_f32();
            out.s[b] = f16::from_f32(d * sum as f32).to_f32();
        }
        let per_row = cols / BLOCK;
        for (b, &s) in out.s.iter().enumerate() {
            out.s_t[(b % per_row) * rows + b / per_row] = s;
        }
        out
    }

    /// Blocks per row.
    pub fn blocks_per_row(&self) -> usize {
        self.cols / BLOCK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dequantised_values_are_close() {
        let xs: Vec<f32> = (0..128).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let q = Q8Acts::new(&xs, 2, 64);
        for (i, &x) in xs.iter().enumerate() {
            let back = q.qs[i] as f32 * q.d[i / BLOCK];
            assert!((back - x).abs() <= q.d[i / BLOCK] * 0.51 + 1e-3, "{i}: {x} vs {back}");
        }
        let sum: i32 = q.qs[..32].iter().map(|&v| v as i32).sum();
        assert!((q.s[0] - q.d[0] * sum as f32).abs() < 2e-3 * q.s[0].abs().max(1.0));
        // Scales are f16 values, as llama.cpp stores them.
        assert_eq!(half::f16::from_f32(q.d[1]).to_f32(), q.d[1]);
    }
}
