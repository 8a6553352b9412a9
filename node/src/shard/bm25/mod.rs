//! An in-memory BM25 inverted index, derived from the shard's sled tree.
//!
//! Layout: a term dictionary (term -> id), per term a posting list sorted by
//! chunk key (each posting carries the chunk's term frequency and length, so
//! scoring reads one array), and per chunk the ids of its distinct terms, so
//! removing a chunk touches only its own lists instead of scanning every
//! posting. Removal leaves a tombstone (`tf = 0`) that a list compacts away
//! once tombstones outnumber live postings. Searches run MaxScore
//! (`maxscore.rs`) over these lists; terms are made by `terms.rs`.
use std::collections::HashMap;

mod maxscore;
mod terms;

pub use terms::terms;

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

/// A query's distinct terms, sorted (a term repeated in a query counts once).
fn query_terms(query: &str) -> Vec<String> {
    let mut terms = terms(query);
    terms.sort();
    terms.dedup();
    terms
}

/// One chunk in one term's list.
#[derive(Debug, Clone, Copy)]
struct Posting {
    key: u64,
    /// Occurrences of the term in the chunk; 0 marks a removed chunk.
    tf: u32,
    /// The chunk's length in terms (BM25's document length).
    len: u32,
}

/// A term's postings, ascending by key, with the bounds MaxScore needs.
#[derive(Debug, Default)]
struct PostingList {
    postings: Vec<Posting>,
    /// Postings that are not tombstones (the term's document frequency).
    live: u32,
    /// Largest tf and smallest length ever listed: together they bound any
    /// posting's score from above (removals leave the bounds loose, never wrong).
    max_tf: u32,
    min_len: u32,
}

impl PostingList {
    fn add(&mut self, key: u64, tf: u32, len: u32) {
        let first = self.postings.is_empty();
        let posting = Posting { key, tf, len };
        // Keys arrive ascending (new chunks get new keys), so this is normally an append.
        match self.postings.last() {
            Some(last) if last.key >= key => {
                let at = self.postings.partition_point(|p| p.key < key);
                if self.postings.get(at).is_some_and(|p| p.key == key) {
                    if self.postings[at].tf == 0 {
                        self.live += 1;
                    }
                    self.postings[at] = posting;
                } else {
                    self.postings.insert(at, posting);
                    self.live += 1;
                }
            }
            _ => {
                self.postings.push(posting);
                self.live += 1;
            }
        }
        if first {
            (self.max_tf, self.min_len) = (tf, len);
        } else {
            (self.max_tf, self.min_len) = (self.max_tf.max(tf), self.min_len.min(len));
        }
    }

    fn remove(&mut self, key: u64) {
        let at = self.postings.partition_point(|p| p.key < key);
        let Some(p) = self.postings.get_mut(at).filter(|p| p.key == key && p.tf > 0) else {
            return;
        };
        p.tf = 0;
        self.live -= 1;
        let dead = self.postings.len() - self.live as usize;
        if self.live == 0 {
            *self = Self::default();
        } else if dead > self.live as usize && dead >= 32 {
            self.postings.retain(|p| p.tf > 0);
        }
    }
}

/// What the index remembers of a chunk, to remove it later.
#[derive(Debug)]
struct ChunkTerms {
    len: u32,
    terms: Vec<u32>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Bm25Index {
    term_ids: HashMap<String, u32>,
    lists: Vec<PostingList>,
    chunks: HashMap<u64, ChunkTerms>,
    total_length: u64,
}

impl Bm25Index {
    /// Indexes a chunk's text under `key` (replacing what `key` had).
    pub fn insert(&mut self, key: u64, text: &str) {
        self.remove(key);
        let all = terms(text);
        let len = all.len() as u32;
        let mut counts: HashMap<String, u32> = HashMap::new();
        for term in all {
            *counts.entry(term).or_insert(0) += 1;
        }
        let mut ids = Vec::with_capacity(counts.len());
        for (term, tf) in counts {
            let next = self.lists.len() as u32;
            let id = *self.term_ids.entry(term).or_insert(next);
            if id == next {
                self.lists.push(PostingList::default());
            }
            self.lists[id as usize].add(key, tf, len);
            ids.push(id);
        }
        self.total_length += len as u64;
        self.chunks.insert(key, ChunkTerms { len, terms: ids });
    }

    /// Forgets a chunk: its own terms' lists only.
    pub fn remove(&mut self, key: u64) {
        let Some(chunk) = self.chunks.remove(&key) else {
            return;
        };
        self.total_length -= chunk.len as u64;
        for id in chunk.terms {
            if let Some(list) = self.lists.get_mut(id as usize) {
                list.remove(key);
            }
        }
    }

    /// Removes many chunks.
    pub fn remove_many(&mut self, keys: &[u64]) {
        for key in keys {
            self.remove(*key);
        }
    }

    /// Number of indexed chunks.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
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
    /// length in this index's terms. Computed in f64 so scores match a
    /// reference to 1e-4 on long documents. Ties go to the smaller key. The
    /// result is that of scoring every chunk; MaxScore only skips chunks that
    /// provably cannot enter the top `k`.
    pub fn search_with(
        &self,
        query: &str,
        k: usize,
        params: Bm25Params,
        accept: impl Fn(u64) -> bool,
    ) -> Vec<(u64, f32)> {
        let n = self.chunks.len() as f64;
        if n == 0.0 || k == 0 {
            return Vec::new();
        }
        let lists: Vec<&PostingList> = query_terms(query)
            .iter()
            .filter_map(|t| self.term_ids.get(t))
            .map(|id| &self.lists[*id as usize])
            .filter(|l| l.live > 0)
            .collect();
        let scorer = maxscore::Scorer {
            n,
            avg_len: (self.total_length as f64 / n).max(1e-9),
            k1: params.k1 as f64,
            b: params.b as f64,
        };
        maxscore::top_k(&scorer, &lists, k, accept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(idx.lists.iter().all(|l| l.live == 0 && l.postings.is_empty()));
    }

    /// Scores every live chunk the slow, obvious way (the reference for MaxScore).
    fn exhaustive(
        idx: &Bm25Index,
        query: &str,
        k: usize,
        p: Bm25Params,
        accept: impl Fn(u64) -> bool,
    ) -> Vec<(u64, f32)> {
        let n = idx.chunks.len() as f64;
        let avg = idx.total_length as f64 / n;
        let q = query_terms(query);
        let mut scores: HashMap<u64, f64> = HashMap::new();
        for term in &q {
            let Some(id) = idx.term_ids.get(term) else { continue };
            let list = &idx.lists[*id as usize];
            let df = list.live as f64;
            let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
            for post in list.postings.iter().filter(|p| p.tf > 0) {
                let (tf, len) = (post.tf as f64, post.len as f64);
                *scores.entry(post.key).or_default() +=
                    idf * tf / (tf + p.k1 as f64 * (1.0 - p.b as f64 + p.b as f64 * len / avg));
            }
        }
        let mut hits: Vec<(u64, f32)> =
            scores.into_iter().filter(|(key, _)| accept(*key)).map(|(key, s)| (key, s as f32)).collect();
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        hits.truncate(k);
        hits
    }

    #[test]
    fn maxscore_returns_what_scoring_every_chunk_returns() {
        // Zipf-like word frequencies, so that some terms are in most chunks (the
        // lists MaxScore learns to skip) and others in few.
        let words: Vec<String> = (0..300).map(|i| format!("w{i}")).collect();
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let pick = |next: &mut dyn FnMut(u64) -> u64| {
            let r = next(1_000_000) as f64 / 1_000_000.0;
            words[((r * r * r) * 300.0) as usize % 300].clone()
        };
        let mut idx = Bm25Index::default();
        let mut texts = Vec::new();
        for key in 0..3000u64 {
            let len = 3 + next(60);
            let text: Vec<String> = (0..len).map(|_| pick(&mut next)).collect();
            texts.push(text.join(" "));
            idx.insert(key, &texts[key as usize]);
        }
        // Deletes and re-inserts leave tombstones and out-of-order keys.
        for key in (0..3000u64).filter(|k| k % 7 == 0) {
            idx.remove(key);
        }
        for key in (0..3000u64).filter(|k| k % 21 == 0) {
            idx.insert(key, &texts[(key as usize + 5) % 3000]);
        }
        let mut compared = 0;
        for round in 0..300 {
            let qlen = 1 + next(8);
            let query: Vec<String> = (0..qlen).map(|_| pick(&mut next)).collect();
            let query = query.join(" ");
            let k = [1usize, 3, 10, 50][round % 4];
            let params = if round % 2 == 0 { Bm25Params::default() } else { Bm25Params { k1: 0.9, b: 0.4 } };
            let accept = |key: u64| round % 3 != 0 || !key.is_multiple_of(5);
            let got = idx.search_with(&query, k, params, accept);
            let want = exhaustive(&idx, &query, k, params, accept);
            assert_eq!(got.len(), want.len(), "query {query:?} k {k}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.0, w.0, "query {query:?} k {k}: {got:?} vs {want:?}");
                assert!((g.1 - w.1).abs() < 1e-5, "query {query:?}: {g:?} vs {w:?}");
            }
            compared += got.len();
        }
        assert!(compared > 1000, "the queries must find things: {compared}");
    }
}
