//! Run-time choice of the SIMD paths, and the pieces the AVX2 kernels share.
//!
//! The crate is compiled for baseline x86-64 (SSE2) so the binary runs on any
//! x86 machine; each kernel has a portable version and an AVX2 + FMA + F16C
//! version compiled with `#[target_feature]`, chosen by [`avx2_fma`]. The unit
//! tests of every kernel compare the two.

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

/// Sum of the eight lanes.
///
/// # Safety
/// Only from functions compiled with AVX enabled.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn hsum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
}
