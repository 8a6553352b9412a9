//! The ANN index of a shard: usearch HNSW over f32 vectors with cosine distance.
//!
//! usearch was chosen because it supports removal by key and filtered search
//! (hnsw_rs has no delete; instant-distance builds in batch only), is maintained,
//! and can save and reload an index, which lets a clean restart skip the rebuild.
use std::path::Path;

use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

use super::ShardError;

/// See the module documentation.
pub struct AnnIndex {
    index: Index,
    dimension: usize,
}

/// The candidate list of a plain [`AnnIndex::search`].
pub(super) const DEFAULT_EF: usize = 64;

fn ann_err(e: impl std::fmt::Display) -> ShardError {
    ShardError::Ann(e.to_string())
}

impl AnnIndex {
    /// An empty index of `dimension` dimensions.
    pub fn new(dimension: usize) -> Result<Self, ShardError> {
        let options = IndexOptions {
            dimensions: dimension,
            metric: MetricKind::Cos,
            quantization: ScalarKind::F32,
            connectivity: 16,
            expansion_add: 128,
            expansion_search: 64,
            multi: false,
        };
        let index = Index::new(&options).map_err(ann_err)?;
        index.reserve(1024).map_err(ann_err)?;
        Ok(Self { index, dimension })
    }

    /// Bytes usearch has allocated (vectors and graph).
    pub fn memory_bytes(&self) -> usize {
        self.index.memory_usage()
    }

    /// Vector dimension.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Vectors held.
    pub fn len(&self) -> usize {
        self.index.size()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a vector, growing capacity geometrically.
    pub fn add(&mut self, key: u64, vector: &[f32]) -> Result<(), ShardError> {
        if vector.len() != self.dimension {
            return Err(ShardError::Dimension { expected: self.dimension, got: vector.len() });
        }
        if self.index.size() + 1 > self.index.capacity() {
            let target = (self.index.capacity() * 2).max(1024);
            self.index.reserve(target).map_err(ann_err)?;
        }
        self.index.add(key, vector).map_err(ann_err)
    }

    /// Removes a vector (absent keys are fine).
    pub fn remove(&mut self, key: u64) -> Result<(), ShardError> {
        self.index.remove(key).map(|_| ()).map_err(ann_err)
    }

    /// The stored vector of `key`.
    pub fn get(&self, key: u64) -> Option<Vec<f32>> {
        let mut buf = vec![0f32; self.dimension];
        match self.index.get(key, &mut buf) {
            Ok(n) if n > 0 => Some(buf),
            _ => None,
        }
    }

    /// Copies the stored vector of `key` into `buf` (of the index's dimension);
    /// false when the key is absent.
    pub fn get_into(&self, key: u64, buf: &mut [f32]) -> bool {
        buf.len() == self.dimension && matches!(self.index.get(key, buf), Ok(n) if n > 0)
    }

    /// Approximate nearest neighbours: (key, cosine similarity), best first.
    pub fn search(&self, query: &[f32], k: usize) -> Result<Vec<(u64, f32)>, ShardError> {
        self.search_ef(query, k, DEFAULT_EF)
    }

    /// As [`AnnIndex::search`] with a candidate list of `ef` (at least `k`): a
    /// longer list visits more of the graph, finding neighbours that a short one
    /// misses in clustered data, at a cost roughly linear in `ef`.
    pub fn search_ef(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<(u64, f32)>, ShardError> {
        self.check(query)?;
        if self.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        self.set_ef(ef.max(k));
        let m = self.index.search(query, k).map_err(ann_err)?;
        Ok(m.keys.into_iter().zip(m.distances).map(|(k, d)| (k, 1.0 - d)).collect())
    }

    /// Nearest neighbours among keys `accept` lets through, candidate list `ef`.
    pub fn filtered_search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        accept: impl Fn(u64) -> bool,
    ) -> Result<Vec<(u64, f32)>, ShardError> {
        self.check(query)?;
        if self.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        self.set_ef(ef.max(k));
        let m = self.index.filtered_search(query, k, accept).map_err(ann_err)?;
        Ok(m.keys.into_iter().zip(m.distances).map(|(k, d)| (k, 1.0 - d)).collect())
    }

    /// Exact search by brute force (for recall measurement and small candidate sets).
    pub fn exact_search(&self, query: &[f32], k: usize) -> Result<Vec<(u64, f32)>, ShardError> {
        self.check(query)?;
        if self.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let m = self.index.exact_search(query, k).map_err(ann_err)?;
        Ok(m.keys.into_iter().zip(m.distances).map(|(k, d)| (k, 1.0 - d)).collect())
    }

    /// Writes the index to `path`.
    pub fn save(&self, path: &Path) -> Result<(), ShardError> {
        self.index.save(&path.to_string_lossy()).map_err(ann_err)
    }

    /// Loads an index written by [`AnnIndex::save`].
    pub fn load(path: &Path, dimension: usize) -> Result<Self, ShardError> {
        let me = Self::new(dimension)?;
        me.index.load(&path.to_string_lossy()).map_err(ann_err)?;
        if me.index.dimensions() != dimension {
            return Err(ShardError::Ann("saved index has another dimension".into()));
        }
        Ok(me)
    }

    /// usearch keeps the candidate list length in the index; the shard actor
    /// serialises searches, so setting it before each one is race-free.
    fn set_ef(&self, ef: usize) {
        if self.index.expansion_search() != ef {
            self.index.change_expansion_search(ef);
        }
    }

    fn check(&self, query: &[f32]) -> Result<(), ShardError> {
        if query.len() != self.dimension {
            return Err(ShardError::Dimension { expected: self.dimension, got: query.len() });
        }
        Ok(())
    }
}

pub use tessera_types::cosine;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A pseudo-random unit vector per `i` (xorshift), distinct for distinct `i`.
    pub(crate) fn unit(i: usize, dim: usize) -> Vec<f32> {
        let mut state = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut v: Vec<f32> = (0..dim)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % 10_000) as f32 / 10_000.0 - 0.5
            })
            .collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        v
    }

    #[test]
    fn add_search_remove_filter_save_load() {
        let dim = 16;
        let mut idx = AnnIndex::new(dim).unwrap();
        for i in 0..2000 {
            idx.add(i as u64, &unit(i, dim)).unwrap();
        }
        assert_eq!(idx.len(), 2000);
        let q = unit(7, dim);
        let hits = idx.search(&q, 5).unwrap();
        assert_eq!(hits[0].0, 7);
        assert!((hits[0].1 - 1.0).abs() < 1e-4);
        let odd = idx.filtered_search(&q, 5, 64, |k| k % 2 == 1).unwrap();
        assert!(!odd.is_empty() && odd.iter().all(|(k, _)| k % 2 == 1));
        idx.remove(7).unwrap();
        assert_ne!(idx.search(&q, 1).unwrap()[0].0, 7);
        // Exact search (the default below `exact_below`) must not see removed vectors either.
        assert!(idx.exact_search(&q, 5).unwrap().iter().all(|(k, _)| *k != 7));
        assert!(idx.get(7).is_none());
        assert!(idx.search(&[0.0; 3], 1).is_err());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("i.usearch");
        idx.save(&path).unwrap();
        let back = AnnIndex::load(&path, dim).unwrap();
        assert_eq!(back.len(), 1999);
        assert_eq!(back.search(&unit(8, dim), 1).unwrap()[0].0, 8);
    }
}
