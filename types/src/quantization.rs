//! How a collection holds its vectors in memory.
use std::fmt;
use std::str::FromStr;

/// A collection's vector storage, chosen when it is created and fixed for its
/// life (changing it means rebuilding every shard's index).
///
/// `None` keeps each distinct vector in f32 inside the HNSW graph (plus the
/// int8 codes and sign bits the scans read): the fastest choice for shards
/// beyond the scans' reach. `Int8` keeps only the int8 codes and sign bits in
/// memory and reads the f32 originals from a file beside the shard when the
/// best candidates are re-scored, as Qdrant's scalar quantization with
/// on-disk originals does: a sixth of the vector memory, no graph to build,
/// and every search a scan (BENCHMARKS.md has the memory, recall and latency).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quantization {
    /// f32 vectors in memory, HNSW above the scans' limits (the default).
    #[default]
    None,
    /// int8 codes and sign bits in memory, f32 originals on disk, no graph.
    Int8,
}

impl Quantization {
    /// The lower-case name used on the wire, in catalogs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Quantization::None => "none",
            Quantization::Int8 => "int8",
        }
    }
}

impl fmt::Display for Quantization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A quantization name that is not one of `none`, `int8`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown quantization '{0}' (expected none or int8)")]
pub struct UnknownQuantization(pub String);

impl FromStr for Quantization {
    type Err = UnknownQuantization;

    /// Accepts the names case-insensitively; the empty string is the default,
    /// so an absent wire field means `none`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "none" => Ok(Quantization::None),
            "int8" => Ok(Quantization::Int8),
            _ => Err(UnknownQuantization(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for q in [Quantization::None, Quantization::Int8] {
            assert_eq!(q.as_str().parse::<Quantization>(), Ok(q));
            assert_eq!(serde_json::to_string(&q).unwrap(), format!("\"{q}\""));
        }
        assert_eq!("".parse::<Quantization>(), Ok(Quantization::None));
        assert_eq!("INT8".parse::<Quantization>(), Ok(Quantization::Int8));
        assert!("binary".parse::<Quantization>().unwrap_err().to_string().contains("'binary'"));
    }
}
