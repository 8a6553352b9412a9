//! The float loops every kernel shares (dot product, `y += a·x`, scaling), once
//! portable and once with AVX2 + FMA, behind one trait so a kernel is written
//! once and instantiated per instruction set.
//!
//! The crate is compiled for baseline x86-64 (SSE2) so the binary runs on any
//! x86 machine; the AVX2 versions are chosen at run time ([`avx2_fma`]). A
//! kernel body is generic over [`Lanes`] and inlined into a
//! `#[target_feature]` wrapper, so the compiler vectorises it with the wide
//! registers without a function call per dot product.

/// Float primitives of one instruction set.
pub(crate) trait Lanes {
    /// Σ a·b.
    fn dot(a: &[f32], b: &[f32]) -> f32;
    /// y += a·x.
    fn axpy(y: &mut [f32], a: f32, x: &[f32]);
    /// y *= a.
    fn scale(y: &mut [f32], a: f32);
}

/// True when the CPU has AVX2, FMA and F16C (checked once, then a cached load).
pub(crate) fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Plain loops with eight independent accumulators (the compiler may use SSE).
pub(crate) struct Portable;

impl Lanes for Portable {
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 8];
        let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for l in 0..8 {
                acc[l] += x[l] * y[l];
            }
        }
        let mut sum = acc.iter().sum::<f32>();
        for (x, y) in ra.iter().zip(rb) {
            sum += x * y;
        }
        sum
    }

    #[inline(always)]
    fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        for (y, x) in y.iter_mut().zip(x) {
            *y += a * x;
        }
    }

    #[inline(always)]
    fn scale(y: &mut [f32], a: f32) {
        for y in y.iter_mut() {
            *y *= a;
        }
    }
}

/// AVX2 + FMA; only used after [`avx2_fma`] said yes, from inside a function
/// compiled with those features.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx2 {
    #[inline(always)]
    fn dot(a: &[f32], b: &[f32]) -> f32 {
        use std::arch::x86_64::*;
        let n = a.len().min(b.len());
        let mut i = 0;
        // SAFETY: callers reach this only through a `#[target_feature(enable =
        // "avx2,fma")]` function after run-time detection; loads stay below `n`.
        unsafe {
            let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            while i + 16 <= n {
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)), s0);
                s1 =
                    _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i + 8)), _mm256_loadu_ps(b.as_ptr().add(i + 8)), s1);
                i += 16;
            }
            if i + 8 <= n {
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)), s0);
                i += 8;
            }
            let mut sum = hsum(_mm256_add_ps(s0, s1));
            while i < n {
                sum += a[i] * b[i];
                i += 1;
            }
            sum
        }
    }

    #[inline(always)]
    fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        use std::arch::x86_64::*;
        let n = y.len().min(x.len());
        let mut i = 0;
        // SAFETY: as in `dot`; stores stay below `n`.
        unsafe {
            let av = _mm256_set1_ps(a);
            while i + 8 <= n {
                let p = y.as_mut_ptr().add(i);
                _mm256_storeu_ps(p, _mm256_fmadd_ps(av, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(p)));
                i += 8;
            }
        }
        while i < n {
            y[i] += a * x[i];
            i += 1;
        }
    }

    #[inline(always)]
    fn scale(y: &mut [f32], a: f32) {
        use std::arch::x86_64::*;
        let n = y.len();
        let mut i = 0;
        // SAFETY: as in `dot`.
        unsafe {
            let av = _mm256_set1_ps(a);
            while i + 8 <= n {
                let p = y.as_mut_ptr().add(i);
                _mm256_storeu_ps(p, _mm256_mul_ps(av, _mm256_loadu_ps(p)));
                i += 8;
            }
        }
        while i < n {
            y[i] *= a;
            i += 1;
        }
    }
}

/// Sum of the eight lanes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn hsum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avx2_agrees_with_portable() {
        if !avx2_fma() {
            return;
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run(a: &[f32], b: &[f32]) -> (f32, Vec<f32>) {
            let mut y = b.to_vec();
            Avx2::axpy(&mut y, 0.5, a);
            Avx2::scale(&mut y, 2.0);
            (Avx2::dot(a, b), y)
        }
        for n in [1usize, 7, 8, 15, 16, 17, 64, 100] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            // SAFETY: features detected above.
            let (d, y) = unsafe { run(&a, &b) };
            let mut yp = b.clone();
            Portable::axpy(&mut yp, 0.5, &a);
            Portable::scale(&mut yp, 2.0);
            assert!((d - Portable::dot(&a, &b)).abs() < 1e-4, "n={n}");
            for (x, z) in y.iter().zip(&yp) {
                assert!((x - z).abs() < 1e-5, "n={n}");
            }
        }
    }
}
