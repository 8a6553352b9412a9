//! The AMX instructions themselves, as inline assembly (the intrinsics are
//! not stable in Rust), and the permission Linux wants before the first.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
mod x86 {
    use std::arch::asm;

    /// `ARCH_REQ_XCOMP_PERM` and the tile-data state component it asks for.
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;

    /// CPUID says AMX tiles and bf16 are there, and Linux grants them.
    pub fn enable() -> bool {
        // Leaf 7 is read only as meaningful when leaf 0 reports it exists.
        let (max, leaf7) = (std::arch::x86_64::__cpuid(0).eax, std::arch::x86_64::__cpuid_count(7, 0));
        let amx_bf16 = leaf7.edx & (1 << 22) != 0;
        let amx_tile = leaf7.edx & (1 << 24) != 0;
        if max < 7 || !amx_bf16 || !amx_tile {
            return false;
        }
        // SAFETY: arch_prctl with these arguments only changes this process's
        // permitted xsave state; it fails cleanly on kernels without it.
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
    }

    /// The 64-byte tile configuration: palette 1, tiles 0-7 all 16 rows of
    /// 64 bytes (sums: 16 f32; operands: 32 bf16).
    #[repr(C, align(64))]
    struct Config([u8; 64]);

    /// Loads the tile configuration on this thread.
    ///
    /// # Safety
    /// AMX must have been enabled ([`enable`] returned true).
    pub unsafe fn configure() {
        let mut config = Config([0; 64]);
        config.0[0] = 1;
        for t in 0..8 {
            config.0[16 + 2 * t] = 64;
            config.0[48 + t] = 16;
        }
        asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly));
    }

    /// Releases this thread's tiles (so context switches stop saving them).
    ///
    /// # Safety
    /// As [`configure`].
    pub unsafe fn release() {
        asm!("tilerelease", options(nostack, nomem));
    }

    /// One 32x32 block: `sums[32 x 32] = a[32 x k] * b`, `a` bf16 row-major
    /// with row length `k`, `b` the column block's packed tiles, `sums` f32
    /// row-major with rows of 32.
    ///
    /// # Safety
    /// Tiles configured on this thread; `a` holds 32 x k values, `b`
    /// 2 x k/32 tiles, `sums` 32 x 32 values.
    pub unsafe fn block(a: *const u16, k: usize, b: *const u16, sums: *mut f32) {
        let a_stride = k * 2;
        asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
        let a_lower = a.add(16 * k);
        for kb in 0..k / super::super::DEPTH {
            let (upper, lower_a) = (a.add(kb * super::super::DEPTH), a_lower.add(kb * super::super::DEPTH));
            let tiles = b.add(kb * 2 * super::super::TILE);
            asm!(
                // Each load placed just before the first product that
                // needs it, so it overlaps the products already issued
                // (measured on a loop of L1-resident tiles: 69 against 82
                // ns per four products; the products alone take 22).
                "tileloadd tmm4, [{a0} + {as_}*1]",
                "tileloadd tmm6, [{b0} + {bs}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tileloadd tmm7, [{b0} + {bs}*1 + 1024]",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm5, [{a1} + {as_}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) upper, a1 = in(reg) lower_a, as_ = in(reg) a_stride,
                b0 = in(reg) tiles, bs = in(reg) 64usize,
                options(nostack, readonly),
            );
        }
        let lower = sums.add(16 * 32);
        asm!(
            "tilestored [{s} + {ss}*1], tmm0",
            "tilestored [{s} + {ss}*1 + 64], tmm1",
            "tilestored [{l} + {ss}*1], tmm2",
            "tilestored [{l} + {ss}*1 + 64], tmm3",
            s = in(reg) sums, l = in(reg) lower, ss = in(reg) 128usize,
            options(nostack),
        );
    }
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub use x86::*;

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
mod fallback {
    pub fn enable() -> bool {
        false
    }
    pub unsafe fn configure() {
        unreachable!("available() is false here")
    }
    pub unsafe fn release() {}
    pub unsafe fn block(_: *const u16, _: usize, _: *const u16, _: *mut f32) {
        unreachable!("available() is false here")
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
pub use fallback::*;
