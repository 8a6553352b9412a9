//! Row-wise element kernels of a decoder layer: RMS norm, SwiGLU and GeGLU
//! gating, scaling, soft-capping and the residual add, on plain `rows × width`
//! f32 buffers (no tensor allocation per op: a decode step runs ~10 of these
//! per layer).
use half::f16;

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

/// [`rms_norm`] in place: each `weight.len()` values of `x` normed (one
/// attention head per row for Gemma's query and key norms).
pub(crate) fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let width = weight.len();
    for xr in x.chunks_exact_mut(width) {
        let ms = (xr.iter().map(|&v| (v * v) as f64).sum::<f64>() / width as f64) as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for (v, w) in xr.iter_mut().zip(weight) {
            *v = *v * inv * w;
        }
    }
}

/// GELU, tanh form, as ggml computes it: inside (-10, 10) the input is
/// rounded to f16 and the result is the f16 entry of ggml's precomputed table
/// (`GGML_GELU_FP16`), so the rounding matches llama.cpp's reference outputs.
fn gelu_ggml(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044_715;
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        let x = f16::from_f32(x).to_f32();
        let y = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + COEF_A * x * x)).tanh());
        f16::from_f32(y).to_f32()
    }
}

/// GeGLU over rows laid out `[gate (f) | up (f)]`: `gelu(gate) · up`, `rows × f` (Gemma).
pub(crate) fn gelu_mul(gate_up: &[f32], f: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(gate_up.len() / 2);
    for row in gate_up.chunks_exact(2 * f) {
        let (g, u) = row.split_at(f);
        out.extend(g.iter().zip(u).map(|(&g, &u)| gelu_ggml(g) * u));
    }
    out
}

/// `x *= by`.
pub(crate) fn scale_in_place(x: &mut [f32], by: f32) {
    x.iter_mut().for_each(|v| *v *= by);
}

/// `x = cap · tanh(x / cap)`: logit soft-capping (Gemma 2 style final logits).
pub(crate) fn softcap_in_place(x: &mut [f32], cap: f32) {
    x.iter_mut().for_each(|v| *v = cap * (*v / cap).tanh());
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

    #[test]
    fn in_place_norm_geglu_scale_and_softcap_match_their_formulas() {
        let x = [3.0f32, 4.0, 0.0, 0.0, 1.0, -1.0];
        let mut out = [0f32; 6];
        rms_norm(&x, &[1.0, 2.0, 1.0], 1e-6, &mut out);
        let mut y = x;
        rms_norm_in_place(&mut y, &[1.0, 2.0, 1.0], 1e-6);
        assert_eq!(y, out);
        // gelu(1) = 0.8412, gelu(-1) = -0.1588 (tanh form), to f16 precision.
        let g = gelu_mul(&[1.0, -1.0, 2.0, 3.0, -20.0, 20.0, 1.0, 0.5], 2);
        assert!((g[0] - 0.8412 * 2.0).abs() < 2e-3 && (g[1] + 0.1588 * 3.0).abs() < 2e-3, "{g:?}");
        assert_eq!(&g[2..], &[0.0, 10.0]);
        let mut s = [2.0f32, -4.0];
        scale_in_place(&mut s, 0.5);
        assert_eq!(s, [1.0, -2.0]);
        let mut c = [0.0f32, 100.0, -100.0, 1.0];
        softcap_in_place(&mut c, 30.0);
        assert!(
            c[0] == 0.0
                && c[1] < 30.0
                && c[1] > 29.0
                && c[2] > -30.0
                && (c[3] - 30.0 * (1.0f32 / 30.0).tanh()).abs() < 1e-6
        );
    }
}
