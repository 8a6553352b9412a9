//! Limits that more than one process must agree on.

/// Largest gRPC message any Tessera server or client sends or accepts (ingest
/// batches and shard snapshots travel in one message). Larger messages are
/// refused by tonic with `RESOURCE_EXHAUSTED`.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Smallest chunk size accepted (characters, or word pieces for the token
/// splitter): each chunk carries its document's metadata and a vector, so
/// `chunk_size 1` would multiply a document's memory by its length.
pub const MIN_CHUNK_SIZE: u32 = 16;

/// Most chunks one ingest request may produce (all its files and documents).
pub const MAX_CHUNKS_PER_REQUEST: usize = 200_000;

/// Most conditions in one search filter.
pub const MAX_FILTER_CONDITIONS: usize = 64;

/// Most values in one filter condition (matched with "one of").
pub const MAX_FILTER_VALUES: usize = 1024;

/// Most bytes of keys and JSON values in one filter.
pub const MAX_FILTER_BYTES: usize = 64 * 1024;

/// Largest top_k of an MMR search, and most candidates it re-ranks: MMR
/// compares every pick with every candidate, so its cost is their product.
pub const MAX_MMR_TOP_K: u32 = 100;
/// See [`MAX_MMR_TOP_K`].
pub const MAX_MMR_CANDIDATES: u32 = 500;

/// Most stop sequences of one generation, and longest one in bytes: every
/// token's text is searched for each.
pub const MAX_STOP_SEQUENCES: usize = 16;
/// See [`MAX_STOP_SEQUENCES`].
pub const MAX_STOP_BYTES: usize = 256;

/// Sessions per ListSessions page: the default, and the most one page may ask for.
pub const DEFAULT_SESSIONS_PAGE: u32 = 100;
/// See [`DEFAULT_SESSIONS_PAGE`].
pub const MAX_SESSIONS_PAGE: u32 = 1000;

/// Checks a filter's size: (key, JSON values) per condition.
pub fn check_filter<'a>(conditions: impl ExactSizeIterator<Item = (&'a str, &'a [String])>) -> Result<(), String> {
    if conditions.len() > MAX_FILTER_CONDITIONS {
        return Err(format!("a filter may have at most {MAX_FILTER_CONDITIONS} conditions, got {}", conditions.len()));
    }
    let mut bytes = 0usize;
    for (key, values) in conditions {
        if values.len() > MAX_FILTER_VALUES {
            return Err(format!(
                "filter condition '{key}' has {} values, over the limit of {MAX_FILTER_VALUES}",
                values.len()
            ));
        }
        bytes += key.len() + values.iter().map(String::len).sum::<usize>();
    }
    if bytes > MAX_FILTER_BYTES {
        return Err(format!("the filter is {bytes} bytes, over the limit of {MAX_FILTER_BYTES}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_limits() {
        let few = vec!["1".to_string(); 3];
        assert!(check_filter([("k", few.as_slice())].into_iter()).is_ok());
        let many = vec!["1".to_string(); MAX_FILTER_VALUES + 1];
        assert!(check_filter([("k", many.as_slice())].into_iter()).unwrap_err().contains("1025 values"));
        let big = vec!["x".repeat(1000); 100];
        assert!(check_filter([("k", big.as_slice())].into_iter()).unwrap_err().contains("bytes"));
        let conds: Vec<(&str, &[String])> = (0..MAX_FILTER_CONDITIONS + 1).map(|_| ("k", few.as_slice())).collect();
        assert!(check_filter(conds.into_iter()).unwrap_err().contains("at most 64 conditions"));
    }
}
