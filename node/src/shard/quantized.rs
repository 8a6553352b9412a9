//! Int8 codes of a shard's chunk vectors, held densely for scans.
//!
//! A filtered search that keeps a few thousand chunks is answered by scanning
//! exactly those chunks. Reading each f32 vector back out of usearch costs
//! ~1.6 µs per vector (a key lookup and a copy through the C++ API: 16 ms for
//! 10,000 matches, BENCHMARKS.md); here each distinct vector also has 384
//! bytes of int8 code in one array, scored with an integer dot product, and
//! only the best candidates are re-scored exactly in f32. Costs one byte per
//! dimension per chunk (a quarter of the f32 vector) and a 4-byte slot per key.
//!
//! Codes are of the L2-normalised vector, scaled by its largest component so
//! that it maps to ±127: the dot product of two codes times their scales
//! approximates the cosine, with an error of the order of 1e-3, far below
//! the gaps the re-scoring list has to bridge (the benchmark measures recall
//! against the f32 scan).

/// One vector's code: int8 components and the scale that maps them back.
pub struct Code {
    values: Vec<i8>,
    scale: f32,
}

/// Quantises `v` (see the module documentation); the zero vector gets scale 0.
pub fn quantize(v: &[f32]) -> Code {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs())) / norm.max(f32::MIN_POSITIVE);
    if norm == 0.0 || max == 0.0 || !max.is_finite() {
        return Code { values: vec![0; v.len()], scale: 0.0 };
    }
    let scale = max / 127.0;
    let inv = 1.0 / (norm * scale);
    Code { values: v.iter().map(|x| (x * inv).round().clamp(-127.0, 127.0) as i8).collect(), scale }
}

use rayon::prelude::*;

use std::cmp::Ordering;

use super::sign_bits::SignBits;

/// No slot.
const NONE: u32 = u32::MAX;

/// Slots per parallel task of a full scan (1.5 MB of 384-dimension codes).
const SCAN_BLOCK: usize = 4096;

/// Slots per parallel task of the sign-bit stage, at least (0.8 MB of
/// 384-dimension bits): a block keeps its own list of the stage's length, so
/// blocks are also at least 8 such lists long (else most of a block would
/// enter its list before the floor rises).
const SIGN_BLOCK: usize = 16_384;

/// Candidates per parallel task of the staged scan's int8 stage.
const RESCORE_TASK: usize = 1024;

/// Codes scored ahead of the one being scored are fetched this far ahead.
const PREFETCH_AHEAD: usize = 8;

/// See the module documentation.
pub struct QuantizedVectors {
    dimension: usize,
    /// Slot-major codes: slot `s` is `codes[s * dimension..][..dimension]`.
    codes: Vec<i8>,
    scales: Vec<f32>,
    /// Slot -> the chunk key it holds.
    keys: Vec<u64>,
    /// Slot -> whether its chunk is a copy of another chunk's vector. A full
    /// scan skips copies: their representative stands for them, and thousands
    /// of copies of one boilerplate vector would otherwise fill the list of
    /// candidates re-scored in f32 and push the true neighbours out of it.
    copy: Vec<bool>,
    /// Chunk key -> slot (`NONE` for none). A table indexed by key, not a hash
    /// map: a scan walks a filter's keys in ascending order, so its lookups
    /// here are sequential reads instead of one cache miss each (a hash
    /// lookup per key made the scan 5x slower at 100k chunks). Chunk keys are
    /// the shard's own counter, so the table is 4 bytes per key allocated
    /// since the shard was opened empty.
    slot_of: Vec<u32>,
    /// Sign bits of every slot's code: the first stage of [`QuantizedVectors::scan_staged`].
    signs: SignBits,
    avx2: bool,
    vnni: bool,
}

impl QuantizedVectors {
    /// An empty set of `dimension`-dimensional codes.
    pub fn new(dimension: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        let (avx2, vnni) = (
            std::arch::is_x86_feature_detected!("avx2"),
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni"),
        );
        #[cfg(not(target_arch = "x86_64"))]
        let (avx2, vnni) = (false, false);
        Self {
            dimension,
            codes: Vec::new(),
            scales: Vec::new(),
            keys: Vec::new(),
            copy: Vec::new(),
            slot_of: Vec::new(),
            signs: SignBits::new(dimension, vnni),
            avx2,
            vnni,
        }
    }

    /// Bytes the codes, their scales and sign bits fill (a vector's spare
    /// capacity is never touched, so never resident; the slot tables are
    /// bookkeeping, counted with the rest of the shard's maps).
    pub fn memory_bytes(&self) -> usize {
        self.codes.len() + self.scales.len() * 4 + self.signs.memory_bytes()
    }

    /// Codes held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.len()
    }

    /// The slot holding `key`'s code. Slots stay dense: see [`QuantizedVectors::remove`].
    pub fn slot(&self, key: u64) -> Option<usize> {
        let slot = *self.slot_of.get(usize::try_from(key).ok()?)?;
        (slot != NONE).then_some(slot as usize)
    }

    /// Stores the code of `vector` under chunk `key` (replacing what `key` had).
    pub fn insert(&mut self, key: u64, vector: &[f32]) {
        let code = quantize(vector);
        if let Some(slot) = self.slot(key) {
            let at = slot * self.dimension;
            self.signs.replace(
                slot,
                (&self.codes[at..at + self.dimension], self.scales[slot]),
                &code.values,
                code.scale,
            );
            self.codes[at..at + self.dimension].copy_from_slice(&code.values);
            self.scales[slot] = code.scale;
            self.copy[slot] = false;
            return;
        }
        let Ok(index) = usize::try_from(key) else { return };
        if index >= self.slot_of.len() {
            self.slot_of.resize((index + 1).max(self.slot_of.len() * 5 / 4), NONE);
        }
        self.slot_of[index] = self.keys.len() as u32;
        self.keys.push(key);
        self.copy.push(false);
        self.codes.extend_from_slice(&code.values);
        self.scales.push(code.scale);
        self.signs.push(&self.codes, &self.scales);
    }

    /// A hash of `key`'s code (values and scale): equal vectors have equal
    /// codes, so equal fingerprints, and a vector set finds a new vector's
    /// possible copies by it without holding the f32 vector (an int8
    /// collection has only the codes in memory). Different vectors may share
    /// a code; callers compare the originals.
    pub fn fingerprint(&self, key: u64) -> Option<u64> {
        use std::hash::{Hash, Hasher};
        let slot = self.slot(key)?;
        let mut h = ahash::AHasher::default();
        self.codes[slot * self.dimension..(slot + 1) * self.dimension].hash(&mut h);
        self.scales[slot].to_bits().hash(&mut h);
        Some(h.finish())
    }

    /// Marks `key`'s chunk as a copy of another chunk's vector (or not); see `copy`.
    pub fn mark_copy(&mut self, key: u64, copy: bool) {
        if let Some(slot) = self.slot(key) {
            self.copy[slot] = copy;
        }
    }

    /// Drops `key`'s code; the last slot moves into the hole, so the array stays dense.
    ///
    /// Returns `(slot, last)`: the slot that held `key` and the last slot,
    /// whose code now fills it (equal when the last was removed), so that
    /// anything kept by slot (an int8 shard's originals file) can follow.
    pub fn remove(&mut self, key: u64) -> Option<(usize, usize)> {
        let slot = self.slot(key)?;
        self.slot_of[key as usize] = NONE;
        let at = slot * self.dimension;
        self.signs.swap_remove(slot, (&self.codes[at..at + self.dimension], self.scales[slot]));
        let last = self.keys.len() - 1;
        if slot != last {
            let moved = self.keys[last];
            self.codes.copy_within(last * self.dimension..(last + 1) * self.dimension, slot * self.dimension);
            self.scales[slot] = self.scales[last];
            self.copy[slot] = self.copy[last];
            self.keys[slot] = moved;
            self.slot_of[moved as usize] = slot as u32;
        }
        self.keys.pop();
        self.copy.pop();
        self.scales.pop();
        self.codes.truncate(last * self.dimension);
        Some((slot, last))
    }

    /// Approximate cosine between the query's code and `key`'s; None when `key` has no code.
    #[cfg(test)]
    fn score(&self, query: &Code, key: u64) -> Option<f32> {
        self.slot(key).map(|slot| self.score_slot(query, slot))
    }

    fn score_slot(&self, query: &Code, slot: usize) -> f32 {
        let code = &self.codes[slot * self.dimension..(slot + 1) * self.dimension];
        self.dot(&query.values, code) as f32 * query.scale * self.scales[slot]
    }

    /// Approximate cosines of every key in `keys` that has a code, in order.
    /// The codes of the keys a few places ahead are prefetched: for a filter
    /// that keeps a tenth of the chunks, each code is a fresh cache miss.
    pub fn score_all(&self, query: &Code, keys: impl IntoIterator<Item = u64>) -> Vec<(u64, f32)> {
        let slots: Vec<(u64, usize)> = keys.into_iter().filter_map(|k| self.slot(k).map(|s| (k, s))).collect();
        let mut out = Vec::with_capacity(slots.len());
        for (i, &(key, slot)) in slots.iter().enumerate() {
            if let Some(&(_, ahead)) = slots.get(i + PREFETCH_AHEAD) {
                self.prefetch(ahead);
            }
            out.push((key, self.score_slot(query, slot)));
        }
        out
    }

    /// The `keep` best chunks that are not copies, by int8 score against
    /// `query`: (key, approximate cosine), in no particular order. Every code
    /// is read once, in slot order (sequential memory, so the scan runs at
    /// memory bandwidth), blocks of `SCAN_BLOCK` slots in parallel on rayon's
    /// pool, each keeping its own list.
    pub fn scan_distinct(&self, query: &Code, keep: usize) -> Vec<(u64, f32)> {
        let slots = self.keys.len();
        if keep == 0 || slots == 0 || query.values.len() != self.dimension {
            return Vec::new();
        }
        let blocks: Vec<Vec<(u32, f32)>> = (0..slots.div_ceil(SCAN_BLOCK))
            .into_par_iter()
            .map(|b| self.scan_block(query, b * SCAN_BLOCK..((b + 1) * SCAN_BLOCK).min(slots), keep))
            .collect();
        let mut found: Vec<(u64, f32)> =
            blocks.into_iter().flatten().map(|(slot, score)| (self.keys[slot as usize], score)).collect();
        keep_best(&mut found, keep);
        found
    }

    /// The `keep` best chunks found in stages (see `sign_bits.rs`): every
    /// slot's sign bits scored against the query's code, the best `first` of
    /// those by their int8 codes; (key, approximate cosine), in no particular
    /// order. Reads 48 bytes per 384-dimension slot instead of 384, plus
    /// `first` codes. Only chunks that `pass` are kept: without a filter, the
    /// chunks that are not copies (their representative stands for them);
    /// with one, the allowed chunks, copies included (an allowed copy's
    /// representative may not be allowed).
    pub fn scan_staged(&self, query: &Code, first: usize, keep: usize, pass: Pass<'_>) -> Vec<(u64, f32)> {
        let slots = self.keys.len();
        if keep == 0 || slots == 0 || query.values.len() != self.dimension {
            return Vec::new();
        }
        let first = first.max(keep);
        let block = SIGN_BLOCK.max(8 * first);
        // A filter becomes one bit per slot: the block loop then tests a word
        // instead of probing the treemap (~30 ns) for each slot over the floor.
        let mask: Option<Vec<u64>> = match pass {
            Pass::Distinct => None,
            Pass::Allowed(allowed) => {
                let mut mask = vec![0u64; slots.div_ceil(64)];
                for slot in allowed.iter().filter_map(|key| self.slot(key)) {
                    mask[slot / 64] |= 1 << (slot % 64);
                }
                Some(mask)
            }
        };
        let mask = mask.as_deref();
        let mut candidates: Vec<(u32, i32)> = (0..slots.div_ceil(block))
            .into_par_iter()
            .map(|b| self.sign_block(query, b * block..((b + 1) * block).min(slots), first, mask))
            .flatten()
            .collect();
        if candidates.len() > first {
            candidates.select_nth_unstable_by(first - 1, |a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            candidates.truncate(first);
        }
        // Slot order, so the codes are read front to back; gathered into one
        // buffer per task and scored by the batch kernel (a call of the
        // one-code path per candidate cost 0.25 µs each, most of it set-up).
        candidates.sort_unstable_by_key(|c| c.0);
        let mut found: Vec<(u64, f32)> = candidates
            .par_chunks(RESCORE_TASK)
            .flat_map_iter(|part| {
                let mut codes = Vec::with_capacity(part.len() * self.dimension);
                for &(slot, _) in part {
                    let at = slot as usize * self.dimension;
                    codes.extend_from_slice(&self.codes[at..at + self.dimension]);
                }
                let mut dots = vec![0i32; part.len()];
                self.dots(&query.values, &codes, &mut dots);
                part.iter().zip(dots).map(|(&(slot, _), dot)| {
                    (self.keys[slot as usize], dot as f32 * query.scale * self.scales[slot as usize])
                })
            })
            .collect();
        keep_best(&mut found, keep);
        found
    }

    /// One block of [`QuantizedVectors::scan_staged`]'s first stage: its best
    /// `keep` slots by sign-bit score, among the slots set in `mask` (with a
    /// filter) or the slots that are not copies (without).
    fn sign_block(
        &self,
        query: &Code,
        slots: std::ops::Range<usize>,
        keep: usize,
        mask: Option<&[u64]>,
    ) -> Vec<(u32, i32)> {
        let mut scores = vec![0i32; slots.len()];
        self.signs.scores(&query.values, slots.clone(), &mut scores);
        let mut best = TopList::new(keep);
        for (slot, score) in slots.zip(scores) {
            let passes = || match mask {
                None => !self.copy[slot],
                Some(mask) => mask[slot / 64] >> (slot % 64) & 1 == 1,
            };
            if best.admits(score) && passes() {
                best.push(slot as u32, score);
            }
        }
        best.into_vec()
    }

    /// One block of [`QuantizedVectors::scan_distinct`]: its best `keep` slots.
    fn scan_block(&self, query: &Code, slots: std::ops::Range<usize>, keep: usize) -> Vec<(u32, f32)> {
        let mut dots = vec![0i32; slots.len()];
        self.dots(&query.values, &self.codes[slots.start * self.dimension..slots.end * self.dimension], &mut dots);
        let mut best = TopList::new(keep);
        for (slot, dot) in slots.zip(dots) {
            if self.copy[slot] {
                continue;
            }
            let score = dot as f32 * query.scale * self.scales[slot];
            if best.admits(score) {
                best.push(slot as u32, score);
            }
        }
        best.into_vec()
    }

    /// Dot products of `query` with each code in `codes` (slot-major, `out.len()` of them).
    fn dots(&self, query: &[i8], codes: &[i8], out: &mut [i32]) {
        #[cfg(target_arch = "x86_64")]
        if self.vnni {
            // SAFETY: AVX-512 F/BW/VNNI were detected at construction.
            unsafe { dots_vnni(query, codes, out) };
            return;
        }
        for (code, out) in codes.chunks_exact(self.dimension).zip(out.iter_mut()) {
            *out = self.dot(query, code);
        }
    }

    fn prefetch(&self, slot: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let code = &self.codes[slot * self.dimension..(slot + 1) * self.dimension];
            for line in code.chunks(64) {
                // SAFETY: a prefetch of a valid address; it has no other effect.
                unsafe { _mm_prefetch(line.as_ptr(), _MM_HINT_T0) };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = slot;
    }

    fn dot(&self, a: &[i8], b: &[i8]) -> i32 {
        #[cfg(target_arch = "x86_64")]
        if self.vnni && a.len() == b.len() {
            let mut out = [0i32];
            // SAFETY: AVX-512 F/BW/VNNI were detected at construction.
            unsafe { dots_vnni(a, b, &mut out) };
            return out[0];
        }
        #[cfg(target_arch = "x86_64")]
        if self.avx2 {
            // SAFETY: AVX2 was detected at construction.
            return unsafe { dot_avx2(a, b) };
        }
        dot_plain(a, b)
    }
}

/// The best `keep` (at least 1) of a stream of (slot, score), for the block
/// loops of the scans: a list twice as long as needed, cut back to `keep`
/// when full, so a slot costs one comparison against the floor and a
/// selection runs now and then. The result is unsorted and may hold up to
/// `2 keep - 1` entries; the caller's merge cuts it.
struct TopList<S> {
    best: Vec<(u32, S)>,
    keep: usize,
    floor: Option<S>,
}

impl<S: Copy + PartialOrd> TopList<S> {
    fn new(keep: usize) -> Self {
        Self { best: Vec::with_capacity(2 * keep), keep, floor: None }
    }

    /// Whether `score` can still enter the list (checked before anything costlier).
    fn admits(&self, score: S) -> bool {
        self.floor.is_none_or(|floor| score >= floor)
    }

    fn push(&mut self, slot: u32, score: S) {
        self.best.push((slot, score));
        if self.best.len() == 2 * self.keep {
            let keep = self.keep;
            self.best.select_nth_unstable_by(keep - 1, |a, b| b.1.partial_cmp(&a.1).unwrap_or(Ordering::Equal));
            self.best.truncate(keep);
            self.floor = Some(self.best[keep - 1].1);
        }
    }

    fn into_vec(self) -> Vec<(u32, S)> {
        self.best
    }
}

/// Which chunks a staged scan keeps; see [`QuantizedVectors::scan_staged`].
#[derive(Clone, Copy)]
pub enum Pass<'a> {
    /// Every chunk that is not a copy.
    Distinct,
    /// The chunks in the filter's bitmap.
    Allowed(&'a roaring::RoaringTreemap),
}

/// Keeps the `keep` best of `found` (higher score first, then the smaller key; left unsorted).
fn keep_best(found: &mut Vec<(u64, f32)>, keep: usize) {
    if found.len() > keep && keep > 0 {
        found.select_nth_unstable_by(keep - 1, |a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        found.truncate(keep);
    }
}

/// Four codes at a time against one query, 64 components per step with
/// `vpdpbusd` (u8 x i8 products summed in fours into i32 lanes). The
/// instruction wants one unsigned operand: the code's sign bit is flipped
/// (c + 128, as u8) and 128 x the query's component sum taken off at the end.
/// Masked loads zero the tail of a dimension that is not a multiple of 64
/// (a zeroed query lane adds nothing whatever the code lane holds).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dots_vnni(query: &[i8], codes: &[i8], out: &mut [i32]) {
    use std::arch::x86_64::*;
    let dim = query.len();
    if dim == 0 {
        out.fill(0);
        return;
    }
    let n = out.len().min(codes.len() / dim);
    let bias: i32 = 128 * query.iter().map(|&x| x as i32).sum::<i32>();
    let flip = _mm512_set1_epi8(i8::MIN);
    // The 64-byte steps of a row and their load masks (all ones but the last step's).
    let steps = (0..dim).step_by(64).map(|at| {
        let len = (dim - at).min(64);
        (at, if len == 64 { u64::MAX } else { (1u64 << len) - 1 })
    });
    // SAFETY (all loads below): slot s < n <= codes.len() / dim, and each
    // masked load reads only the `len` bytes at `at..at + len` within a row.
    let row = |s: usize, at: usize, mask: __mmask64| unsafe {
        _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, codes.as_ptr().add(s * dim + at)), flip)
    };
    let mut s = 0;
    while s + 4 <= n {
        let (mut a0, mut a1, mut a2, mut a3) =
            (_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512());
        for (at, mask) in steps.clone() {
            // SAFETY: at + len <= dim = query.len().
            let q = unsafe { _mm512_maskz_loadu_epi8(mask, query.as_ptr().add(at)) };
            a0 = _mm512_dpbusd_epi32(a0, row(s, at, mask), q);
            a1 = _mm512_dpbusd_epi32(a1, row(s + 1, at, mask), q);
            a2 = _mm512_dpbusd_epi32(a2, row(s + 2, at, mask), q);
            a3 = _mm512_dpbusd_epi32(a3, row(s + 3, at, mask), q);
        }
        out[s] = _mm512_reduce_add_epi32(a0) - bias;
        out[s + 1] = _mm512_reduce_add_epi32(a1) - bias;
        out[s + 2] = _mm512_reduce_add_epi32(a2) - bias;
        out[s + 3] = _mm512_reduce_add_epi32(a3) - bias;
        s += 4;
    }
    while s < n {
        let mut a = _mm512_setzero_si512();
        for (at, mask) in steps.clone() {
            // SAFETY: as above.
            let q = unsafe { _mm512_maskz_loadu_epi8(mask, query.as_ptr().add(at)) };
            a = _mm512_dpbusd_epi32(a, row(s, at, mask), q);
        }
        out[s] = _mm512_reduce_add_epi32(a) - bias;
        s += 1;
    }
}

/// The portable dot product (the compiler vectorises it: integer sums may be reordered).
#[inline(always)]
fn dot_plain(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(x, y)| *x as i32 * *y as i32).sum()
}

/// 32 components per step: sign-extended to i16, multiplied and summed in
/// pairs into i32 lanes (`vpmaddwd`), one horizontal sum at the end.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[i8], b: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let mut acc = _mm256_setzero_si256();
    let mut i = 0;
    while i + 32 <= n {
        // SAFETY: i + 32 <= n bounds both 32-byte loads.
        let (va, vb) = unsafe {
            (
                _mm256_loadu_si256(a.as_ptr().add(i) as *const __m256i),
                _mm256_loadu_si256(b.as_ptr().add(i) as *const __m256i),
            )
        };
        let a_lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(va));
        let a_hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(va, 1));
        let b_lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(vb));
        let b_hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(vb, 1));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(a_lo, b_lo));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(a_hi, b_hi));
        i += 32;
    }
    let sum128 = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    let sum64 = _mm_add_epi32(sum128, _mm_unpackhi_epi64(sum128, sum128));
    let sum32 = _mm_add_epi32(sum64, _mm_shuffle_epi32(sum64, 1));
    _mm_cvtsi128_si32(sum32) + dot_plain(&a[i..n], &b[i..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(i: usize, dim: usize) -> Vec<f32> {
        crate::shard::ann::tests::unit(i, dim)
    }

    #[test]
    fn scores_approximate_the_cosine_and_removal_keeps_slots_dense() {
        let dim = 384;
        let mut q = QuantizedVectors::new(dim);
        for i in 0..50 {
            // Not normalised on purpose: codes are of the normalised vector.
            let v: Vec<f32> = unit(i, dim).iter().map(|x| x * (1.0 + i as f32)).collect();
            q.insert(i as u64, &v);
        }
        let query = unit(7, dim);
        let code = quantize(&query);
        for i in [0usize, 7, 13, 49] {
            let exact = tessera_types::cosine(&query, &unit(i, dim));
            let approx = q.score(&code, i as u64).unwrap();
            assert!((approx - exact).abs() < 0.01, "vector {i}: {approx} vs {exact}");
        }
        q.remove(3);
        q.remove(49); // the last slot
        q.remove(3); // twice is fine
        assert_eq!(q.len(), 48);
        assert!(q.score(&code, 3).is_none());
        let after = q.score(&code, 48).unwrap();
        assert!((after - tessera_types::cosine(&query, &unit(48, dim))).abs() < 0.01);
        // The zero vector scores 0, as cosine says.
        q.insert(100, &vec![0.0; dim]);
        assert_eq!(q.score(&code, 100), Some(0.0));
        assert_eq!(dot_plain(&[1, -2, 3], &[4, 5, -6]), 4 - 10 - 18);
        // The AVX2 kernel agrees with the plain loop, extremes and a tail included.
        let a: Vec<i8> = (0..397).map(|i| ((i * 37) % 255) as u8 as i8).chain([-127, 127]).collect();
        let b: Vec<i8> = (0..397).map(|i| ((i * 91 + 7) % 255) as u8 as i8).chain([-127, -127]).collect();
        let q = QuantizedVectors::new(a.len());
        assert_eq!(q.dot(&a, &b), dot_plain(&a, &b));
    }

    #[test]
    fn the_full_scan_keeps_the_best_distinct_codes_on_every_kernel() {
        for dim in [384, 100, 64, 7] {
            let mut q = QuantizedVectors::new(dim);
            let n = 2 * SCAN_BLOCK + 901; // three blocks, the last one short
            for i in 0..n {
                q.insert(i as u64, &unit(i, dim));
            }
            for i in (0..n as u64).step_by(3) {
                q.mark_copy(i, true);
            }
            q.remove(5); // a hole filled by the last slot, its flag moved along
            let query = quantize(&unit(123_456, dim));
            let mut got = q.scan_distinct(&query, 50);
            let mut want: Vec<(u64, f32)> =
                (0..n as u64).filter(|i| i % 3 != 0 && *i != 5).map(|i| (i, q.score(&query, i).unwrap())).collect();
            keep_best(&mut want, 50);
            let order = |a: &(u64, f32), b: &(u64, f32)| a.0.cmp(&b.0);
            got.sort_by(order);
            want.sort_by(order);
            assert_eq!(got, want, "dimension {dim}");
            // Each kernel the machine has gives the portable dot products.
            let mut fast = vec![0i32; n - 1];
            q.dots(&query.values, &q.codes, &mut fast);
            let plain: Vec<i32> = q.codes.chunks_exact(dim).map(|c| dot_plain(&query.values, c)).collect();
            assert_eq!(fast, plain, "dimension {dim}");
            q.vnni = false;
            q.dots(&query.values, &q.codes, &mut fast);
            assert_eq!(fast, plain, "dimension {dim}, without VNNI");
        }
    }

    #[test]
    fn the_staged_scan_with_a_first_stage_of_everything_is_the_full_scan() {
        for dim in [384, 100] {
            let mut q = QuantizedVectors::new(dim);
            let n = SIGN_BLOCK + 3000; // two blocks of the sign stage when its list is short
            for i in 0..n {
                q.insert(i as u64, &unit(i, dim));
            }
            for i in (0..n as u64).step_by(5) {
                q.mark_copy(i, true);
            }
            q.remove(17); // the last slot's bits move with its code
            q.insert(41, &unit(999_999, dim)); // a replaced code, bits replaced too
            let query = quantize(&unit(77_777, dim));
            let order = |a: &(u64, f32), b: &(u64, f32)| a.0.cmp(&b.0);
            let mut full = q.scan_distinct(&query, 40);
            let mut staged = q.scan_staged(&query, n, 40, Pass::Distinct);
            full.sort_by(order);
            staged.sort_by(order);
            assert_eq!(staged, full, "dimension {dim}");
            // With a filter: the allowed chunks, copies included.
            let allowed: roaring::RoaringTreemap = (0..n as u64).filter(|i| i % 3 == 1).collect();
            let mut want: Vec<(u64, f32)> = allowed.iter().filter_map(|k| q.score(&query, k).map(|s| (k, s))).collect();
            keep_best(&mut want, 40);
            want.sort_by(order);
            let mut got = q.scan_staged(&query, n, 40, Pass::Allowed(&allowed));
            got.sort_by(order);
            assert_eq!(got, want, "dimension {dim}, filtered");
            assert!(got.iter().any(|(k, _)| k % 5 == 0), "allowed copies are kept");
            // A short first stage (two blocks) returns `keep` distinct chunks,
            // each among the best 100 by sign bits over both blocks (ties with the 100th included).
            let short = q.scan_staged(&query, 100, 40, Pass::Distinct);
            assert_eq!(short.len(), 40);
            assert!(short.iter().all(|(k, _)| k % 5 != 0));
            let mut signs = vec![0i32; q.len()];
            q.signs.scores(&query.values, 0..q.len(), &mut signs);
            let sign_of = |key: u64| signs[q.slot(key).unwrap()];
            let mut distinct: Vec<i32> = (0..q.len()).filter(|&s| !q.copy[s]).map(|s| signs[s]).collect();
            distinct.sort_unstable_by(|a, b| b.cmp(a));
            assert!(short.iter().all(|(k, _)| sign_of(*k) >= distinct[99]), "dimension {dim}");
        }
    }
}
