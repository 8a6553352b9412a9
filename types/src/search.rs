//! Search modes and the scored chunks that shards return and coordinators merge.
use std::fmt;

/// How a shard ranks chunks for a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SearchMode {
    /// Nearest neighbours of the query's embedding (the default).
    #[default]
    Vector,
    /// BM25 over the chunk text.
    Bm25,
    /// Both lists, fused by reciprocal rank.
    Hybrid,
}

impl SearchMode {
    /// Whether the mode needs the query's embedding.
    pub fn needs_vector(self) -> bool {
        matches!(self, SearchMode::Vector | SearchMode::Hybrid)
    }

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            SearchMode::Vector => "vector",
            SearchMode::Bm25 => "bm25",
            SearchMode::Hybrid => "hybrid",
        }
    }
}

impl fmt::Display for SearchMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A search hit as the coordinator merges it: one chunk with its score and,
/// when MMR asked for them, its vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// Chunk id `{doc_id}#{n}`.
    pub chunk_id: String,
    /// Document id.
    pub doc_id: String,
    /// Higher is better; comparable only within one list.
    pub score: f32,
    /// Chunk text.
    pub text: String,
    /// Metadata as a JSON object.
    pub metadata_json: String,
    /// The chunk's vector (empty unless asked for).
    pub vector: Vec<f32>,
}

/// A search mode name that is not vector, bm25 or hybrid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("mode must be vector, bm25 or hybrid, not '{0}'")]
pub struct UnknownSearchModeName(pub String);

impl std::str::FromStr for SearchMode {
    type Err = UnknownSearchModeName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vector" => Ok(SearchMode::Vector),
            "bm25" => Ok(SearchMode::Bm25),
            "hybrid" => Ok(SearchMode::Hybrid),
            other => Err(UnknownSearchModeName(other.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_names_parse_and_print_the_same() {
        for m in [SearchMode::Vector, SearchMode::Bm25, SearchMode::Hybrid] {
            assert_eq!(m.as_str().parse::<SearchMode>(), Ok(m));
        }
        assert_eq!(
            "fuzzy".parse::<SearchMode>().unwrap_err().to_string(),
            "mode must be vector, bm25 or hybrid, not 'fuzzy'"
        );
        assert!(SearchMode::Hybrid.needs_vector() && !SearchMode::Bm25.needs_vector());
    }
}

/// Per-collection search settings, with every default filled in. They are
/// query-time settings: kept in the catalog, sent with every shard search, so a
/// change needs no rebuild.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SearchSettings {
    /// BM25 term-frequency saturation.
    pub bm25_k1: f32,
    /// BM25 length normalisation.
    pub bm25_b: f32,
    /// HNSW candidate list floor (the search also uses at least 8 x top_k).
    pub hnsw_ef: u32,
    /// Shards with at most this many chunks are searched by a full scan of
    /// their int8 codes, the best candidates re-scored exactly in f32 (what
    /// exact search finds, up to the int8 error); larger ones by the staged
    /// scan up to `binary_below`.
    pub exact_below: u32,
    /// Shards above `exact_below` and with at most this many chunks are
    /// searched by a staged scan: every chunk's sign bits, the best
    /// candidates by their int8 codes, the best of those exactly in f32.
    /// Larger shards go through HNSW (0: never scan in stages).
    pub binary_below: u32,
    /// Hybrid: candidates taken from each side before fusion (at least 4 x top_k).
    pub fusion_depth: u32,
}

impl SearchSettings {
    /// Default BM25 k1 (Lucene's).
    pub const BM25_K1: f32 = 1.2;
    /// Default BM25 b (Lucene's).
    pub const BM25_B: f32 = 0.75;
    /// Default HNSW candidate floor.
    pub const HNSW_EF: u32 = 128;
    /// Default full-scan size limit per shard. Measured (BENCHMARKS.md, "Full
    /// int8 scan"): at 100k clustered chunks the scan took 1.3 ms p50 and
    /// returned the whole exact top 10 for every query, HNSW 0.4-1.1 ms and
    /// 88-95 % of queries; at 1M the scan took 24 ms, so larger shards walk the graph.
    pub const EXACT_BELOW: u32 = 100_000;
    /// Default staged-scan size limit per shard. Measured (BENCHMARKS.md,
    /// "Staged scan"): at 1M clustered chunks 7.5 ms p50 with the whole exact
    /// top 10 for every query, where HNSW at ef 1024 took 6 ms and missed
    /// part of it for 3.5 % of queries; the scan grows linearly (~15 ms at
    /// 2M), so larger shards walk the graph.
    pub const BINARY_BELOW: u32 = 2_000_000;
    /// Floor of the staged scan's first-stage list (at 300k chunks, 3,000
    /// passed on gave the whole exact top 10 for 99.5 % of queries, no margin).
    pub const BINARY_FIRST: usize = 5_000;
    /// The staged scan's first stage keeps one chunk in this many. Measured at
    /// 1M: one in 200 gave the whole exact top 10 for 99.5 % of queries, one
    /// in 100 for all of them (0.5 ms more).
    pub const BINARY_SHARE: usize = 100;
    /// Default hybrid fusion depth floor.
    pub const FUSION_DEPTH: u32 = 50;

    /// The HNSW candidate list for a search of `k`.
    pub fn ef_for(&self, k: usize) -> usize {
        (self.hnsw_ef as usize).max(8 * k)
    }

    /// Candidates the staged scan's sign-bit stage passes on to int8 re-scoring
    /// in a shard of `chunks`: the rank sign bits give a true neighbour grows
    /// with the shard, so the list does too.
    pub fn binary_first_for(&self, k: usize, chunks: usize) -> usize {
        (chunks / Self::BINARY_SHARE).max(Self::BINARY_FIRST).max(32 * k)
    }

    /// Candidates from each side of a hybrid search of `k`.
    pub fn fusion_depth_for(&self, k: usize) -> usize {
        (self.fusion_depth as usize).max(4 * k)
    }

    /// Checks ranges (0 <= k1 <= 10, 0 <= b <= 1, finite; list lengths <= 10000).
    pub fn validate(&self) -> Result<(), InvalidSettings> {
        if !self.bm25_k1.is_finite() || self.bm25_k1 < 0.0 || self.bm25_k1 > 10.0 {
            return Err(InvalidSettings(format!("bm25_k1 must be between 0 and 10, got {}", self.bm25_k1)));
        }
        if !self.bm25_b.is_finite() || !(0.0..=1.0).contains(&self.bm25_b) {
            return Err(InvalidSettings(format!("bm25_b must be between 0 and 1, got {}", self.bm25_b)));
        }
        if self.hnsw_ef > 10_000 || self.fusion_depth > 10_000 {
            return Err(InvalidSettings("hnsw_ef and fusion_depth must be at most 10000".into()));
        }
        Ok(())
    }
}

impl Default for SearchSettings {
    fn default() -> Self {
        Self {
            bm25_k1: Self::BM25_K1,
            bm25_b: Self::BM25_B,
            hnsw_ef: Self::HNSW_EF,
            exact_below: Self::EXACT_BELOW,
            binary_below: Self::BINARY_BELOW,
            fusion_depth: Self::FUSION_DEPTH,
        }
    }
}

/// A search setting out of range; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSettings(pub String);

#[cfg(test)]
mod settings_tests {
    use super::*;

    #[test]
    fn depths_grow_with_k_and_ranges_are_checked() {
        let s = SearchSettings::default();
        assert_eq!(s.ef_for(5), 128);
        assert_eq!(s.ef_for(100), 800);
        assert_eq!(s.fusion_depth_for(10), 50);
        assert_eq!(s.fusion_depth_for(100), 400);
        assert_eq!(s.binary_first_for(10, 1_000_000), 10_000);
        assert_eq!(s.binary_first_for(10, 50_000), 5_000);
        assert_eq!(s.binary_first_for(200, 0), 6_400);
        assert!(SearchSettings { bm25_b: 2.0, ..s }.validate().is_err());
        assert!(SearchSettings { bm25_k1: f32::NAN, ..s }.validate().is_err());
        assert!(SearchSettings { bm25_b: 0.0, bm25_k1: 0.0, exact_below: 0, ..s }.validate().is_ok());
        assert!(s.validate().is_ok());
    }
}
