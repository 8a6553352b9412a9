//! Element-wise math of the encoder: exact (erf) GELU, softmax, layer norm.
//!
//! Written as plain loops over slices with branch-free bodies (an own `exp`
//! and `erf` instead of libm's calls), then compiled three times: for
//! AVX-512, for AVX2 + FMA and for baseline x86-64, chosen at run time. The
//! compiler vectorises the same source at each width; candle's generic GELU
//! calls libm's `erf` per value and its softmax makes five passes.

/// `e^x` to ~2 ulp for x in [-87, 88] (Cephes' `expf`: x = n ln 2 + r, a
/// degree-6 polynomial in r, 2^n put into the exponent bits). Inputs are
/// clamped to [-87, 88]: below, it returns e^-87 (~1.6e-38) instead of a
/// denormal or 0; -inf gives that too, and NaN stays NaN.
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // Round to nearest through the float adder: adding 1.5 * 2^23 leaves n in
    // the low mantissa bits, so 2^n is built with integer adds on those bits
    // (a float-to-int cast is saturating in Rust and would not vectorise).
    const SHIFT: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + SHIFT;
    let n = shifted - SHIFT;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    let two_to_n = f32::from_bits(shifted.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23);
    y * two_to_n
}

/// erf(x) to 1.5e-7 absolute (Abramowitz and Stegun 7.1.26).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_74) * t + 0.254_829_6) * t;
    let e = 1.0 - poly * exp(-a * a);
    e.copysign(x)
}

#[inline(always)]
fn gelu_loop(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// Lanes of the partial sums: a sum kept in sixteen running totals lets the
/// compiler vectorise it (one running total is a serial chain of adds, which
/// it may not reorder), and sixteen fill one AVX-512 register.
const LANES: usize = 16;

#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder().iter().sum::<f32>();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + rest
}

#[inline(always)]
fn sum_of_squared_deviations(x: &[f32], mean: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum::<f32>();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += (v - mean) * (v - mean);
        }
    }
    acc.iter().sum::<f32>() + rest
}

#[inline(always)]
fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            // A compare and select (not f32::max, whose NaN rule blocks the vector max).
            *a = if v > *a { v } else { *a };
        }
    }
    acc.iter().fold(rest, |m, &v| if v > m { v } else { m })
}

/// Softmax of one row in place; the row's values are already scaled.
#[inline(always)]
fn softmax_loop(row: &mut [f32]) {
    let max = max(row);
    row.iter_mut().for_each(|v| *v = exp(*v - max));
    let inv = 1.0 / sum(row);
    row.iter_mut().for_each(|v| *v *= inv);
}

/// `x = layer_norm(x + residual)` over rows of `weight.len()` values.
#[inline(always)]
fn add_norm_loop(x: &mut [f32], residual: Option<&[f32]>, weight: &[f32], bias: &[f32], eps: f32) {
    let width = weight.len();
    for (r, row) in x.chunks_exact_mut(width).enumerate() {
        if let Some(res) = residual {
            row.iter_mut().zip(&res[r * width..][..width]).for_each(|(v, a)| *v += a);
        }
        let mean = sum(row) / width as f32;
        let var = sum_of_squared_deviations(row, mean) / width as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
            *v = (*v - mean) * inv * w + b;
        }
    }
}

/// Generates the run-time dispatch of one loop over its three builds.
macro_rules! dispatched {
    ($(#[$doc:meta])* $name:ident => $body:ident ($($arg:ident : $ty:ty),*)) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn wide($($arg: $ty),*) { $body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn narrow($($arg: $ty),*) { $body($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F (checked just above).
                    return unsafe { wide($($arg),*) };
                }
                if crate::model::kernels::simd::avx2_fma() {
                    // SAFETY: the CPU has AVX2 and FMA (checked just above).
                    return unsafe { narrow($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

dispatched!(
    /// The exact GELU, `x Φ(x)`, in place (BERT's `gelu`).
    gelu => gelu_loop(x: &mut [f32])
);
dispatched!(
    /// Softmax of one row in place.
    softmax => softmax_loop(row: &mut [f32])
);
dispatched!(
    /// Adds `residual` (when given) and layer-normalises each row of `x` in place.
    add_norm => add_norm_loop(x: &mut [f32], residual: Option<&[f32]>, weight: &[f32], bias: &[f32], eps: f32)
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_match_libm() {
        let mut worst_exp = 0f32;
        let mut worst_erf = 0f32;
        for i in -8000..=8000 {
            let x = i as f32 / 100.0;
            if x > -80.0 && x < 80.0 {
                worst_exp = worst_exp.max((exp(x) - x.exp()).abs() / x.exp());
            }
            let reference = libm_erf(x as f64) as f32;
            worst_erf = worst_erf.max((erf(x) - reference).abs());
        }
        assert!(worst_exp < 1e-6, "exp relative error {worst_exp}");
        assert!(worst_erf < 3e-7, "erf absolute error {worst_erf}");
        assert!(!exp(f32::NEG_INFINITY).is_nan());
        assert!(exp(-1000.0) < 1e-37);
    }

    /// erf by its Taylor series in f64 for |x| < 4 (largest term ~e^16, so
    /// ~1e-9 lost to cancellation), and +-1 beyond (erfc(4) = 1.5e-8).
    fn libm_erf(x: f64) -> f64 {
        if x.abs() >= 4.0 {
            return x.signum();
        }
        // erf x = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1)), summed in f64 with enough terms.
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn every_build_agrees_with_the_scalar_one() {
        let values: Vec<f32> = (0..1000).map(|i| ((i * 7919) % 2001) as f32 / 200.0 - 5.0).collect();
        let mut fast = values.clone();
        gelu(&mut fast);
        let mut plain = values.clone();
        gelu_loop(&mut plain);
        for ((f, p), x) in fast.iter().zip(&plain).zip(&values) {
            assert!((f - p).abs() < 1e-6, "gelu({x}): {f} vs {p}");
            let exact = 0.5 * *x as f64 * (1.0 + libm_erf(*x as f64 / 2f64.sqrt()));
            assert!((*f as f64 - exact).abs() < 1e-5, "gelu({x}) = {f}, exact {exact}");
        }
        let mut row = values[..300].to_vec();
        softmax(&mut row);
        let max = values[..300].iter().cloned().fold(f32::MIN, f32::max);
        let total: f64 = values[..300].iter().map(|v| ((v - max) as f64).exp()).sum();
        for (p, v) in row.iter().zip(&values[..300]) {
            let exact = ((v - max) as f64).exp() / total;
            assert!((*p as f64 - exact).abs() < 1e-6, "{p} vs {exact}");
        }
        let (w, b) = (vec![2.0; 10], vec![0.5; 10]);
        let mut x: Vec<f32> = (0..20).map(|i| i as f32).collect();
        let res = vec![1.0; 20];
        add_norm(&mut x, Some(&res), &w, &b, 1e-12);
        // Row 0 is 1..=10: mean 5.5, variance 8.25.
        assert!((x[0] - ((1.0 - 5.5) / 8.25f32.sqrt() * 2.0 + 0.5)).abs() < 1e-5, "{}", x[0]);
        assert!((x[10..].iter().sum::<f32>() - 5.0).abs() < 1e-4, "each row's outputs average the bias");
    }
}
