//! A sequence's key/value cache: per layer, the keys and values of every
//! position so far, `[position][kv head][head dim]`, appended in place, in f16
//! like llama.cpp's default cache (half the memory and bandwidth of f32, and
//! the same rounding the reference outputs were made with).
//!
//! Growing a `Vec` in blocks of positions keeps appends amortised O(new
//! tokens); the old cache was a tensor concatenated every step (a full copy per
//! token per layer) and then repeated once per query head for GQA. Here a
//! query head reads its key/value group directly by index.

use half::f16;
use half::slice::HalfFloatSliceExt;

/// Positions reserved at a time when a layer's cache is full.
const GROW_POSITIONS: usize = 128;

/// Keys and values of one layer.
#[derive(Default)]
pub struct LayerKv {
    /// `positions × width` keys.
    pub k: Vec<f16>,
    /// `positions × width` values.
    pub v: Vec<f16>,
}

/// One sequence's cache on one rank.
pub struct SeqCache {
    layers: Vec<LayerKv>,
    /// Values per position: this rank's kv heads × head dim.
    width: usize,
}

impl SeqCache {
    /// An empty cache of `n_layer` layers, `width` values per position.
    pub fn new(n_layer: usize, width: usize) -> Self {
        Self { layers: (0..n_layer).map(|_| LayerKv::default()).collect(), width }
    }

    /// Positions cached (in layer 0; every layer has the same after a step).
    pub fn positions(&self) -> usize {
        self.layers.first().map_or(0, |l| l.k.len() / self.width.max(1))
    }

    /// Appends keys and values (whole positions) to layer `l`, rounded to f16.
    pub fn append(&mut self, l: usize, k: &[f32], v: &[f32]) {
        let width = self.width;
        let layer = &mut self.layers[l];
        for (buf, new) in [(&mut layer.k, k), (&mut layer.v, v)] {
            if buf.capacity() - buf.len() < new.len() {
                buf.reserve_exact(new.len().max(GROW_POSITIONS * width));
            }
            let at = buf.len();
            buf.resize(at + new.len(), f16::ZERO);
            buf[at..].convert_from_f32_slice(new);
        }
    }

    /// Layer `l`.
    pub fn layer(&self, l: usize) -> &LayerKv {
        &self.layers[l]
    }

    /// A copy of the first `positions` positions of every layer (all of
    /// them when fewer are cached), sized exactly: a prompt prefix kept for
    /// later requests, or a new sequence started from one.
    pub fn prefix(&self, positions: usize) -> SeqCache {
        let take = positions.min(self.positions()) * self.width;
        let layers = self.layers.iter().map(|l| LayerKv { k: l.k[..take].to_vec(), v: l.v[..take].to_vec() }).collect();
        SeqCache { layers, width: self.width }
    }

    /// Bytes held (capacity, not just length: what the process pays).
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| (l.k.capacity() + l.v.capacity()) * std::mem::size_of::<f16>()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_whole_positions_per_layer() {
        let mut c = SeqCache::new(2, 4);
        assert_eq!(c.positions(), 0);
        c.append(0, &[1.0; 8], &[2.0; 8]);
        c.append(1, &[3.0; 8], &[4.0; 8]);
        assert_eq!(c.positions(), 2);
        c.append(0, &[5.0; 4], &[6.0; 4]);
        assert_eq!(c.positions(), 3);
        assert_eq!(&c.layer(0).k[8..], &[f16::from_f32(5.0); 4]);
        assert_eq!(c.layer(1).v.len(), 8);
        assert!(c.bytes() >= 12 * 2 * 2);
    }
}
