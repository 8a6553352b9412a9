//! Row-wise element kernels of a decoder layer: RMS norm, SwiGLU gating and the
//! residual add, on plain `rows × width` f32 buffers (no tensor allocation per
//! op: a decode step runs ~10 of these per layer).

/// `out[r] = x[r] / sqrt(mean(x[r]²) + eps) · weight`, for every row of
/// `width`; the sum of squares in f64, as ggml computes it.
pub(crate) fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let width = weight.len();
    for (xr, or) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let ms = (xr.iter().map(|&v| (v * v) as f64).sum::<f64>() / width as f64) as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, v), w) in or.iter_mut().zip(xr).zip(weight) {
            *o = v * inv * w;
        }
    }
}

/// SwiGLU over rows laid out `[gate (f) | up (f)]`: `silu(gate) · up`, `rows × f`.
pub(crate) fn silu_mul(gate_up: &[f32], f: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(gate_up.len() / 2);
    for row in gate_up.chunks_exact(2 * f) {
        let (g, u) = row.split_at(f);
        out.extend(g.iter().zip(u).map(|(&g, &u)| g / (1.0 + (-g).exp()) * u));
    }
    out
}

/// `x += y`.
pub(crate) fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_and_swiglu_match_their_formulas() {
        let x = [3.0f32, 4.0, 0.0, 0.0, 1.0, -1.0];
        let mut out = [0f32; 6];
        rms_norm(&x, &[1.0, 2.0, 1.0], 0.0, &mut out);
        let inv = 1.0 / (25.0f32 / 3.0).sqrt();
        assert!((out[0] - 3.0 * inv).abs() < 1e-6 && (out[1] - 8.0 * inv).abs() < 1e-6);
        let inv2 = 1.0 / (2.0f32 / 3.0).sqrt();
        assert!((out[4] - 2.0 * inv2).abs() < 1e-6 && (out[5] + inv2).abs() < 1e-6);
        let y = silu_mul(&[1.0, -2.0, 3.0, 0.5], 2);
        assert!((y[0] - 3.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6);
        assert!((y[1] - (-2.0) / (1.0 + 2.0f32.exp()) * 0.5).abs() < 1e-6);
        let mut a = [1.0, 2.0];
        add_in_place(&mut a, &[0.5, -2.0]);
        assert_eq!(a, [1.5, 0.0]);
    }
}
