//! One bit per dimension of each chunk vector, for the first stage of a scan
//! over a shard too large to read every int8 code per query.
//!
//! A full scan of the int8 codes reads 384 bytes per chunk: at a million
//! chunks that is 384 MB per query, ~24 ms at this machine's memory bandwidth
//! (BENCHMARKS.md). The sign bits are 48 bytes per chunk, an eighth of that.
//! Each bit says whether a component lies above the shard's mean for that
//! dimension (the bits of uncentred sentence embeddings are nearly constant
//! in the dimensions where every text has the same sign, and tell little
//! apart). A query is scored against them with its own int8 code, not with
//! its bits (asymmetric: the sum of the query's components where the chunk's
//! bit is set, which orders like the dot product of the query with the
//! chunk's ±1 pattern), so only the chunk side loses precision. The best few
//! thousand by that score are then re-scored from their int8 codes, and the
//! best of those exactly in f32.
//!
//! The centre is re-computed (and every bit with it) each time the number of
//! vectors doubles, so it follows the data at amortised constant cost per
//! insert; between re-computations new vectors are compared against the
//! centre of the first half. A stale centre costs candidates, not
//! correctness: the later stages re-score whatever comes through.

/// Vectors at which the centre is first computed (below it the bits are
/// against zero, and shards that small are scanned in int8 anyway).
const FIRST_CENTRE: usize = 256;

/// Sign bits of slot-major vectors; see the module documentation. Slots are
/// the owning [`super::quantized::QuantizedVectors`]' slots, kept in step by it.
pub struct SignBits {
    dimension: usize,
    /// Words per vector: `dimension.div_ceil(64)`.
    words: usize,
    /// Slot `s` is `bits[s * words..][..words]`; bit `i % 64` of word `i / 64` is dimension `i`.
    bits: Vec<u64>,
    /// Per dimension, the sum over slots of the normalised component (code x scale).
    sums: Vec<f64>,
    /// Per dimension, the value a component is compared against.
    centre: Vec<f32>,
    /// Vectors held when the centre was last computed.
    centred_at: usize,
    vnni: bool,
}

impl SignBits {
    /// Bytes the bits fill (what the shard's vector memory counts).
    pub fn memory_bytes(&self) -> usize {
        self.bits.len() * 8
    }

    /// No vectors yet, `dimension` components each.
    pub fn new(dimension: usize, vnni: bool) -> Self {
        Self {
            dimension,
            words: dimension.div_ceil(64),
            bits: Vec::new(),
            sums: vec![0.0; dimension],
            centre: vec![0.0; dimension],
            centred_at: 0,
            vnni,
        }
    }

    /// Vectors held.
    pub fn len(&self) -> usize {
        self.bits.len() / self.words.max(1)
    }

    /// Writes slot `slot`'s bits for `code` against the current centre.
    fn set_pattern(&mut self, slot: usize, code: &[i8], scale: f32) {
        let out = &mut self.bits[slot * self.words..(slot + 1) * self.words];
        out.fill(0);
        for (i, (&c, &centre)) in code.iter().zip(&self.centre).enumerate() {
            if c as f32 * scale > centre {
                out[i / 64] |= 1 << (i % 64);
            }
        }
    }

    fn account(&mut self, code: &[i8], scale: f32, sign: f64) {
        for (sum, &c) in self.sums.iter_mut().zip(code) {
            *sum += sign * c as f64 * scale as f64;
        }
    }

    /// Appends a slot for the last code of `all` (every slot's int8 codes,
    /// slot-major; `scales` map them back to the normalised vectors): a push
    /// that doubles the count re-centres from them.
    pub fn push(&mut self, all: &[i8], scales: &[f32]) {
        let slot = self.len();
        let (Some(code), Some(&scale)) =
            (all.get(slot * self.dimension..(slot + 1) * self.dimension), scales.get(slot))
        else {
            return;
        };
        self.account(code, scale, 1.0);
        self.bits.resize((slot + 1) * self.words, 0);
        self.set_pattern(slot, code, scale);
        let n = self.len();
        if n >= FIRST_CENTRE && n >= 2 * self.centred_at {
            self.recentre(all, scales);
        }
    }

    /// Slot `slot` now holds `code` instead of `old`.
    pub fn replace(&mut self, slot: usize, old: (&[i8], f32), code: &[i8], scale: f32) {
        self.account(old.0, old.1, -1.0);
        self.account(code, scale, 1.0);
        self.set_pattern(slot, code, scale);
    }

    /// Drops slot `slot` (whose code was `old`); the last slot moves into it.
    pub fn swap_remove(&mut self, slot: usize, old: (&[i8], f32)) {
        self.account(old.0, old.1, -1.0);
        let last = self.len() - 1;
        if slot != last {
            self.bits.copy_within(last * self.words..(last + 1) * self.words, slot * self.words);
        }
        self.bits.truncate(last * self.words);
    }

    /// The centre becomes the mean of the vectors held, and every bit is recomputed.
    fn recentre(&mut self, all: &[i8], scales: &[f32]) {
        let n = self.len();
        for (c, s) in self.centre.iter_mut().zip(&self.sums) {
            *c = (s / n.max(1) as f64) as f32;
        }
        for (slot, (code, &scale)) in all.chunks_exact(self.dimension).zip(scales).enumerate() {
            self.set_pattern(slot, code, scale);
        }
        self.centred_at = n;
    }

    /// For each slot in `slots`, the sum of `query`'s components where the
    /// slot's bit is set, into `out` (one per slot).
    pub fn scores(&self, query: &[i8], slots: std::ops::Range<usize>, out: &mut [i32]) {
        let bits = &self.bits[slots.start * self.words..slots.end * self.words];
        #[cfg(target_arch = "x86_64")]
        if self.vnni {
            let mut padded = vec![0i8; self.words * 64];
            padded[..query.len().min(self.dimension)].copy_from_slice(&query[..query.len().min(self.dimension)]);
            // SAFETY: AVX-512 F/BW/VNNI were detected by the owner at construction.
            unsafe { scores_vnni(&padded, self.words, bits, out) };
            return;
        }
        scores_table(query, self.words, bits, out);
    }
}

/// The portable kernel: per query, a table of the sums of its components for
/// each of the 256 patterns of each byte of bits; then a vector's score is
/// one lookup per byte (48 for 384 dimensions) instead of one test per bit.
fn scores_table(query: &[i8], words: usize, bits: &[u64], out: &mut [i32]) {
    let bytes = words * 8;
    let mut table = vec![0i32; bytes * 256];
    for byte in 0..bytes {
        for pattern in 1..256usize {
            // The pattern without its lowest bit was filled in already.
            let low = pattern.trailing_zeros() as usize;
            let q = query.get(byte * 8 + low).copied().unwrap_or(0) as i32;
            table[byte * 256 + pattern] = table[byte * 256 + (pattern & (pattern - 1))] + q;
        }
    }
    for (vector, out) in bits.chunks_exact(words).zip(out.iter_mut()) {
        let mut sum = 0;
        for (w, word) in vector.iter().enumerate() {
            for (b, byte) in word.to_le_bytes().into_iter().enumerate() {
                sum += table[(w * 8 + b) * 256 + byte as usize];
            }
        }
        *out = sum;
    }
}

/// 64 dimensions per step: the query's bytes where the word's bits are set
/// (`vmovdqu8` with the word as its mask), summed in fours into i32 lanes by
/// `vpdpbusd` against ones; one horizontal sum per vector. Four vectors per
/// pass, so that four independent chains of `vpdpbusd` (latency ~5 cycles
/// each) overlap; the usual embedding widths get a copy of the loop with the
/// number of words fixed, so that it unrolls and keeps the query in registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn scores_vnni(query: &[i8], words: usize, bits: &[u64], out: &mut [i32]) {
    use std::arch::x86_64::*;
    // SAFETY: `query` holds words x 64 bytes (padded by the caller).
    let q: Vec<__m512i> =
        (0..words).map(|w| unsafe { _mm512_loadu_si512(query.as_ptr().add(w * 64).cast()) }).collect();
    let n = out.len().min(bits.len() / words.max(1));
    let (bits, out) = (&bits[..n * words], &mut out[..n]);
    // SAFETY (each call): the features this function enables.
    unsafe {
        match words {
            2 => scores_fixed::<2>(&q, bits, out),
            6 => scores_fixed::<6>(&q, bits, out),
            12 => scores_fixed::<12>(&q, bits, out),
            16 => scores_fixed::<16>(&q, bits, out),
            _ => scores_any(&q, bits, out),
        }
    }
}

/// [`scores_vnni`] for `W` words per vector (`q.len() == W`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn scores_fixed<const W: usize>(q: &[std::arch::x86_64::__m512i], bits: &[u64], out: &mut [i32]) {
    use std::arch::x86_64::*;
    let ones = _mm512_set1_epi8(1);
    let q: [__m512i; W] = std::array::from_fn(|w| q[w]);
    let groups = bits.chunks_exact(4 * W);
    let done = groups.len() * 4;
    for (v, out) in groups.zip(out.chunks_exact_mut(4)) {
        let (mut a0, mut a1, mut a2, mut a3) =
            (_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512());
        for w in 0..W {
            a0 = _mm512_dpbusd_epi32(a0, ones, _mm512_maskz_mov_epi8(v[w], q[w]));
            a1 = _mm512_dpbusd_epi32(a1, ones, _mm512_maskz_mov_epi8(v[W + w], q[w]));
            a2 = _mm512_dpbusd_epi32(a2, ones, _mm512_maskz_mov_epi8(v[2 * W + w], q[w]));
            a3 = _mm512_dpbusd_epi32(a3, ones, _mm512_maskz_mov_epi8(v[3 * W + w], q[w]));
        }
        // The four horizontal sums together: pairs of lanes, then quadruples
        // (each 128-bit lane then holds one partial sum of each vector), then
        // the four 128-bit lanes: 13 instructions instead of 4 x 9.
        let t01 = _mm512_add_epi32(_mm512_unpacklo_epi32(a0, a1), _mm512_unpackhi_epi32(a0, a1));
        let t23 = _mm512_add_epi32(_mm512_unpacklo_epi32(a2, a3), _mm512_unpackhi_epi32(a2, a3));
        let u = _mm512_add_epi32(_mm512_unpacklo_epi64(t01, t23), _mm512_unpackhi_epi64(t01, t23));
        let h = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
        let x = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
        // SAFETY: `out` is a chunk of exactly four i32.
        unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), x) };
    }
    // SAFETY: the features this function enables.
    unsafe { scores_any(&q, &bits[done * W..], &mut out[done..]) };
}

/// [`scores_vnni`] one vector at a time, any number of words (`q.len()`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn scores_any(q: &[std::arch::x86_64::__m512i], bits: &[u64], out: &mut [i32]) {
    use std::arch::x86_64::*;
    let ones = _mm512_set1_epi8(1);
    for (vector, out) in bits.chunks_exact(q.len().max(1)).zip(out.iter_mut()) {
        let mut acc = _mm512_setzero_si512();
        for (word, q) in vector.iter().zip(q) {
            acc = _mm512_dpbusd_epi32(acc, ones, _mm512_maskz_mov_epi8(*word, *q));
        }
        *out = _mm512_reduce_add_epi32(acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kernels_sum_the_query_where_the_bits_are_set() {
        for dim in [384usize, 100, 64, 7] {
            let words = dim.div_ceil(64);
            let query: Vec<i8> = (0..dim).map(|i| ((i * 37 + 11) % 255) as u8 as i8).collect();
            let mut bits: Vec<u64> = (0..50 * words as u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
            // Only real dimensions may have bits.
            for v in bits.chunks_exact_mut(words) {
                if dim % 64 != 0 {
                    v[words - 1] &= (1u64 << (dim % 64)) - 1;
                }
            }
            let want: Vec<i32> = bits
                .chunks_exact(words)
                .map(|v| (0..dim).filter(|i| v[i / 64] >> (i % 64) & 1 == 1).map(|i| query[i] as i32).sum())
                .collect();
            let mut got = vec![0; 50];
            scores_table(&query, words, &bits, &mut got);
            assert_eq!(got, want, "table, dimension {dim}");
            let mut set = SignBits::new(dim, false);
            set.bits = bits.clone();
            #[cfg(target_arch = "x86_64")]
            {
                set.vnni = std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni");
            }
            let mut fast = vec![0; 50];
            set.scores(&query, 0..50, &mut fast);
            assert_eq!(fast, want, "kernel of this machine, dimension {dim}");
        }
    }

    #[test]
    fn bits_are_against_the_mean_once_there_are_enough_vectors() {
        // Every vector has a large first component: against zero its bit is
        // always set; against the mean, set for the larger half only.
        let dim = 8;
        let mut set = SignBits::new(dim, false);
        let (mut all, mut scales) = (Vec::new(), Vec::new());
        for i in 0..FIRST_CENTRE {
            let code: Vec<i8> = (0..dim).map(|d| if d == 0 { 60 + (i % 2) as i8 * 40 } else { 0 }).collect();
            all.extend_from_slice(&code);
            scales.push(0.01);
            set.push(&all, &scales);
        }
        let first_bits: Vec<u64> = set.bits.iter().map(|w| w & 1).collect();
        assert_eq!(first_bits.iter().sum::<u64>(), FIRST_CENTRE as u64 / 2);
        assert!(first_bits.iter().enumerate().all(|(i, b)| *b == (i % 2) as u64));
        // Removing keeps the sums: a replace then a removal leave the same centre inputs.
        let before = set.sums.clone();
        let big: Vec<i8> = (0..dim).map(|d| if d == 0 { 127 } else { 0 }).collect();
        set.replace(3, (&all[3 * dim..4 * dim], 0.01), &big, 0.01);
        set.replace(3, (&big, 0.01), &all[3 * dim..4 * dim], 0.01);
        assert!(set.sums.iter().zip(&before).all(|(a, b)| (a - b).abs() < 1e-9));
        set.swap_remove(0, (&all[..dim], 0.01));
        assert_eq!(set.len(), FIRST_CENTRE - 1);
        assert_eq!(set.bits[0] & 1, 1, "the last slot (odd: above the mean) moved into slot 0");
    }
}
