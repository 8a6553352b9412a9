//! An in-memory BM25 inverted index, derived from the shard's sled tree.
//!
//! Terms are lower-cased Unicode words (UAX #29); runs of CJK characters, which
//! have no spaces between words, are indexed as single characters plus
//! character bigrams, so Chinese and Japanese queries match without a
//! dictionary-based segmenter.
use std::collections::HashMap;

use unicode_segmentation::UnicodeSegmentation;

/// BM25's two parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bm25Params {
    /// Term-frequency saturation.
    pub k1: f32,
    /// Length normalisation (0: none, 1: full).
    pub b: f32,
}

impl Default for Bm25Params {
    /// Lucene's defaults.
    fn default() -> Self {
        Self { k1: 1.2, b: 0.75 }
    }
}

/// Splits text into index terms (see the module documentation).
pub fn terms(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    // UAX #29 makes every ideograph a word of its own; adjacent ones are joined
    // back into runs here so that bigrams can be formed.
    let mut run: Vec<char> = Vec::new();
    let mut run_end = 0usize;
    for (start, word) in text.unicode_word_indices() {
        let lower = word.to_lowercase();
        let cjk = lower.chars().all(is_cjk);
        if !cjk || start != run_end {
            flush_cjk(&mut run, &mut out);
        }
        if cjk {
            run.extend(lower.chars());
            run_end = start + word.len();
        } else if lower.chars().any(is_cjk) {
            // Mixed word such as "gpu内存": latin part whole, CJK part as a run.
            let mut latin = String::new();
            for c in lower.chars() {
                if is_cjk(c) {
                    if !latin.is_empty() {
                        out.push(std::mem::take(&mut latin));
                    }
                    run.push(c);
                } else {
                    flush_cjk(&mut run, &mut out);
                    latin.push(c);
                }
            }
            flush_cjk(&mut run, &mut out);
            if !latin.is_empty() {
                out.push(latin);
            }
        } else {
            out.push(lower);
        }
    }
    flush_cjk(&mut run, &mut out);
    out
}

/// Emits a CJK run as unigrams and bigrams.
fn flush_cjk(run: &mut Vec<char>, out: &mut Vec<String>) {
    for (i, c) in run.iter().enumerate() {
        out.push(c.to_string());
        if let Some(next) = run.get(i + 1) {
            out.push(format!("{c}{next}"));
        }
    }
    run.clear();
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30FF | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0xAC00..=0xD7AF | 0x20000..=0x2FA1F)
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Bm25Index {
    postings: HashMap<String, HashMap<u64, u32>>,
    lengths: HashMap<u64, u32>,
    total_length: u64,
}

impl Bm25Index {
    /// Indexes a chunk's text under `key`.
    pub fn insert(&mut self, key: u64, text: &str) {
        let terms = terms(text);
        self.remove(key);
        self.lengths.insert(key, terms.len() as u32);
        self.total_length += terms.len() as u64;
        for term in terms {
            *self.postings.entry(term).or_default().entry(key).or_insert(0) += 1;
        }
    }

    /// Forgets a chunk (its terms are found by scanning only the postings that hold it).
    pub fn remove(&mut self, key: u64) {
        let Some(len) = self.lengths.remove(&key) else {
            return;
        };
        self.total_length -= len as u64;
        self.postings.retain(|_, list| {
            list.remove(&key);
            !list.is_empty()
        });
    }

    /// Removes many chunks in one pass over the postings.
    pub fn remove_many(&mut self, keys: &[u64]) {
        let mut any = false;
        for key in keys {
            if let Some(len) = self.lengths.remove(key) {
                self.total_length -= len as u64;
                any = true;
            }
        }
        if any {
            let set: std::collections::HashSet<u64> = keys.iter().copied().collect();
            self.postings.retain(|_, list| {
                list.retain(|k, _| !set.contains(k));
                !list.is_empty()
            });
        }
    }

    /// Number of indexed chunks.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// The best `k` chunks for `query` among those `accept` lets through, best
    /// first, with Lucene's defaults.
    pub fn search(&self, query: &str, k: usize, accept: impl Fn(u64) -> bool) -> Vec<(u64, f32)> {
        self.search_with(query, k, Bm25Params::default(), accept)
    }

    /// BM25 as Lucene computes it (`BM25Similarity` since Lucene 8, bm25s'
    /// "lucene" method): per query term, `idf * tf / (tf + k1 * (1 - b + b * dl / avgdl))`
    /// with `idf = ln(1 + (N - df + 0.5) / (df + 0.5))`; a query term repeated
    /// in the query counts once (Lucene's query parser would add a clause per
    /// repeat; the reference test feeds bm25s de-duplicated queries); document
    /// length in this index's terms. Computed in f64 so
    /// scores match a reference to 1e-4 on long documents.
    pub fn search_with(
        &self,
        query: &str,
        k: usize,
        params: Bm25Params,
        accept: impl Fn(u64) -> bool,
    ) -> Vec<(u64, f32)> {
        let n = self.lengths.len() as f64;
        if n == 0.0 || k == 0 {
            return Vec::new();
        }
        let (k1, b) = (params.k1 as f64, params.b as f64);
        let avg = (self.total_length as f64 / n).max(1e-9);
        let mut query_terms = terms(query);
        query_terms.sort();
        query_terms.dedup();
        let mut scores: HashMap<u64, f64> = HashMap::new();
        for term in &query_terms {
            let Some(list) = self.postings.get(term) else {
                continue;
            };
            let df = list.len() as f64;
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            for (&key, &tf) in list {
                let len = *self.lengths.get(&key).unwrap_or(&0) as f64;
                let tf = tf as f64;
                *scores.entry(key).or_insert(0.0) += idf * tf / (tf + k1 * (1.0 - b + b * len / avg));
            }
        }
        let mut hits: Vec<(u64, f32)> =
            scores.into_iter().filter(|(key, _)| accept(*key)).map(|(key, s)| (key, s as f32)).collect();
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        hits.truncate(k);
        hits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cjk_runs_become_unigrams_and_bigrams() {
        assert_eq!(terms("Rust 索引"), vec!["rust", "索", "索引", "引"]);
        assert_eq!(terms("GPU内存"), vec!["gpu", "内", "内存", "存"]);
        assert_eq!(terms("复制，目录"), vec!["复", "复制", "制", "目", "目录", "录"]);
    }

    #[test]
    fn ranks_by_bm25_and_honours_filter_and_removal() {
        let mut idx = Bm25Index::default();
        idx.insert(1, "cp copies files; cp -r copies directories recursively");
        idx.insert(2, "ls lists directory contents");
        idx.insert(3, "向量数据库用于语义检索");
        let hits = idx.search("copy directories recursively", 10, |_| true);
        assert_eq!(hits[0].0, 1);
        assert_eq!(idx.search("语义检索", 10, |_| true)[0].0, 3);
        assert!(idx.search("directory", 10, |k| k != 2).is_empty());
        idx.remove(1);
        assert!(idx.search("recursively", 10, |_| true).is_empty());
        assert_eq!(idx.len(), 2);
        idx.remove_many(&[2, 3]);
        assert!(idx.is_empty());
    }
}
