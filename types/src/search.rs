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
