//! One shard replica: the sled store plus the indexes derived from it.
use std::collections::HashMap;
use std::path::PathBuf;

use roaring::RoaringTreemap;
use sled::Batch;
use tracing::{info, warn};

use tessera_types::{Quantization, SearchSettings};

use super::originals::{Originals, OriginalsFile};
use super::payload::PayloadIndex;
use super::vectors::VectorSet;
use super::{Bm25Index, Bm25Params, ChunkRecord, Filter, ShardError, ShardStore};
use crate::load::Metadata;

/// Up to this many distinct vectors among a filter's matches, filtered vector
/// search scans them (int8 codes, the best re-scored exactly); above, it walks
/// the HNSW graph with the filter. Measured at 100k chunks (BENCHMARKS.md,
/// "Filtered vector search"): the scan's cost grows with the matches, filtered
/// HNSW's with the share of chunks the filter rejects (the walk must step over
/// them), and HNSW can miss results when few graph nodes qualify.
const SCAN_FILTER_LIMIT: usize = 30_000;

/// From this share of a shard's chunks on, a filter too large to scan is
/// answered by an unfiltered search that keeps the allowed results. Measured
/// at 100k chunks (BENCHMARKS.md): at 25 % and 50 % it took 2.5–2.7 ms p50
/// against 5–10 ms for filtered HNSW, recall@10 1.0000; at 10 % it lost
/// recall (0.995) and the scan is faster.
const POST_FILTER_SHARE: f64 = 0.2;

/// Registers the shard metrics that count by label at zero, so that a fresh
/// dashboard shows zeros for each filtered-search plan before the first filter.
pub(super) fn register_metrics_at_zero() {
    for plan in [FilterPlan::Scan, FilterPlan::Graph, FilterPlan::Exact, FilterPlan::PostFilter, FilterPlan::Staged] {
        metrics::counter!("tessera_shard_filtered_searches_total", "plan" => plan.label()).absolute(0);
    }
    for plan in ["scan", "staged", "hnsw", "exact"] {
        metrics::counter!("tessera_shard_vector_searches_total", "plan" => plan).absolute(0);
    }
}

/// Which index answers a query (Hybrid: both lists, fused later over all shards by the coordinator).
pub use tessera_types::SearchMode;

/// Replace a document's chunks, or delete the document.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DocWrite {
    /// The document.
    pub doc_id: String,
    /// Remove the document (chunks are ignored).
    pub delete: bool,
    /// The new chunks with their vectors.
    pub chunks: Vec<(ChunkRecord, Vec<f32>)>,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteOutcome {
    /// The shard's sequence number after the write.
    pub sequence: u64,
    /// Documents written or deleted.
    pub documents: u64,
    /// Chunks written, or removed by deletes.
    pub chunks: u64,
}

/// A search against one shard.
#[derive(Debug, Clone)]
pub struct ShardQuery {
    /// Query embedding (vector and hybrid modes).
    pub vector: Vec<f32>,
    /// Query text (bm25 and hybrid modes).
    pub text: String,
    /// Hits per list.
    pub top_k: usize,
    /// Metadata filter.
    pub filter: Filter,
    /// Which lists to produce.
    pub mode: SearchMode,
    /// Whether hits carry their vectors (for MMR).
    pub with_vectors: bool,
    /// The collection's search settings (BM25 k1/b, HNSW ef, exact limit).
    pub settings: SearchSettings,
    /// Exact vector search whatever the shard size.
    pub exact: bool,
    /// How a filtered vector search runs; [`FilterPlan::Auto`] outside measurements.
    pub filter_plan: FilterPlan,
}

/// The ways to run a filtered vector search. The planner (`Auto`) picks one
/// by the distinct vectors the filter keeps and its share of the shard; the
/// others can be forced so that the benchmark can time each side of the
/// crossovers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FilterPlan {
    /// Scan up to `SCAN_FILTER_LIMIT` distinct vectors, post-filter from
    /// `POST_FILTER_SHARE` of the shard, filtered HNSW otherwise.
    #[default]
    Auto,
    /// Always scan the matching chunks (int8 codes, the best re-scored in f32).
    Scan,
    /// Always score every matching chunk in f32 (the reference the scan is measured against).
    Exact,
    /// Always walk the HNSW graph with the filter.
    Graph,
    /// An unfiltered HNSW search for more neighbours, the allowed ones kept
    /// (the graph walk when too few survive).
    PostFilter,
    /// The staged scan (sign bits, int8, f32) of the whole shard, only
    /// allowed chunks kept at each stage.
    Staged,
}

impl FilterPlan {
    /// The `plan` label of `tessera_shard_filtered_searches_total` (`Auto` is
    /// resolved before anything is counted; it is labelled as the scan it runs as).
    fn label(self) -> &'static str {
        match self {
            FilterPlan::Auto | FilterPlan::Scan => "scan",
            FilterPlan::Graph => "graph",
            FilterPlan::Exact => "exact",
            FilterPlan::PostFilter => "post",
            FilterPlan::Staged => "staged",
        }
    }
}

impl ShardQuery {
    /// A query of `mode` for the best `top_k`, no filter, default settings.
    pub fn new(mode: SearchMode, vector: Vec<f32>, text: &str, top_k: usize) -> Self {
        Self {
            vector,
            text: text.to_string(),
            top_k,
            filter: Filter::default(),
            mode,
            with_vectors: false,
            settings: SearchSettings::default(),
            exact: false,
            filter_plan: FilterPlan::Auto,
        }
    }
}

/// A hit with its stored record.
#[derive(Debug, Clone)]
pub struct ShardHit {
    /// The chunk.
    pub record: ChunkRecord,
    /// Cosine similarity or BM25 score.
    pub score: f32,
    /// The vector, when asked for.
    pub vector: Vec<f32>,
}

/// Vector and BM25 hit lists, best first.
#[derive(Debug, Clone, Default)]
pub struct ShardResults {
    /// By cosine similarity.
    pub vector: Vec<ShardHit>,
    /// By BM25.
    pub bm25: Vec<ShardHit>,
}

/// Counters of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShardStats {
    /// Chunks stored.
    pub chunks: u64,
    /// Documents stored.
    pub documents: u64,
    /// Last applied write.
    pub sequence: u64,
    /// Vector dimension.
    pub dimension: u32,
    /// How the shard holds its vectors.
    pub quantization: Quantization,
}

struct ChunkMeta {
    doc_id: String,
    metadata: Metadata,
}

/// See the module documentation.
pub struct Shard {
    store: ShardStore,
    vectors: VectorSet,
    bm25: Bm25Index,
    payload: PayloadIndex,
    chunks: HashMap<u64, ChunkMeta>,
    docs: HashMap<String, Vec<u64>>,
    sequence: u64,
    next_key: u64,
    dimension: usize,
    ann_path: Option<PathBuf>,
}

/// A write batch prepared but not yet applied.
#[derive(Default)]
struct Staged<'w> {
    batch: Batch,
    next_key: u64,
    outcome: WriteOutcome,
    removed: Vec<u64>,
    added: Vec<(String, u64, &'w ChunkRecord, &'w Vec<f32>)>,
}

/// Checks every write before any is applied: ids, dimensions, finite vectors,
/// chunks that belong to their document.
fn validate_writes(writes: &[DocWrite], dimension: usize) -> Result<(), ShardError> {
    for w in writes {
        if w.doc_id.is_empty() {
            return Err(ShardError::Invalid("document id must not be empty".into()));
        }
        for (record, vector) in &w.chunks {
            if vector.len() != dimension {
                return Err(ShardError::Dimension { expected: dimension, got: vector.len() });
            }
            if record.doc_id != w.doc_id {
                return Err(ShardError::Invalid(format!(
                    "chunk {} belongs to {}, not {}",
                    record.chunk_id, record.doc_id, w.doc_id
                )));
            }
            if vector.iter().any(|x| !x.is_finite()) {
                return Err(ShardError::Invalid(format!("chunk {} has a non-finite vector", record.chunk_id)));
            }
        }
    }
    Ok(())
}

impl Shard {
    /// Opens a shard over `tree`, rebuilding its indexes from the stored chunks,
    /// or reloading the ANN index saved at `ann_path` when it is as new as sled.
    pub fn open(tree: sled::Tree, dimension: usize, ann_path: Option<PathBuf>) -> Result<Self, ShardError> {
        Self::open_as(tree, dimension, Quantization::None, ann_path)
    }

    /// [`Shard::open`] for a collection with the given vector storage. An
    /// int8 shard keeps no graph, so nothing is saved at `ann_path` and its
    /// codes are rebuilt from sled at every open (seconds per million chunks).
    pub fn open_as(
        tree: sled::Tree,
        dimension: usize,
        quantization: Quantization,
        ann_path: Option<PathBuf>,
    ) -> Result<Self, ShardError> {
        let store = ShardStore::open(tree, dimension)?;
        let dimension = store.dimension()?;
        let sequence = store.sequence()?;
        let next_key = store.next_key()?;
        // An int8 shard's originals: a flat file beside the graph's path, else sled.
        let fresh = |store: &ShardStore| match (quantization, &ann_path) {
            (Quantization::None, _) => VectorSet::new(dimension),
            (Quantization::Int8, Some(path)) => {
                let originals = match OriginalsFile::create(&originals_path(path), dimension) {
                    Ok(file) => Originals::File(file),
                    // A shard that cannot have its file still serves, from sled (slower).
                    Err(e) => {
                        warn!(error = %e, "no originals file; re-scoring reads sled");
                        Originals::Store(store.clone())
                    }
                };
                Ok(VectorSet::quantized(dimension, originals))
            }
            (Quantization::Int8, None) => Ok(VectorSet::quantized(dimension, Originals::Store(store.clone()))),
        };

        let saved = match quantization {
            Quantization::None => ann_path.as_ref().and_then(|p| load_saved_ann(p, dimension, sequence)),
            Quantization::Int8 => None,
        };
        let reuse = saved.is_some();
        let mut vectors = match saved {
            Some(v) => v,
            None => fresh(&store)?,
        };
        let mut bm25 = Bm25Index::default();
        let mut payload = PayloadIndex::default();
        let mut chunks = HashMap::new();
        let mut docs: HashMap<String, Vec<u64>> = HashMap::new();
        // The scan is in ascending key order, which `attach` relies on.
        for item in store.scan() {
            let (key, record, vector) = item?;
            if reuse {
                vectors.attach(key, &vector);
            } else {
                vectors.add(key, &vector)?;
            }
            bm25.insert(key, &record.text);
            payload.insert(key, &record.metadata);
            docs.entry(record.doc_id.clone()).or_default().push(key);
            chunks.insert(key, ChunkMeta { doc_id: record.doc_id, metadata: record.metadata });
        }
        if reuse && !vectors.consistent(chunks.len()) {
            warn!(stored = chunks.len(), "saved ANN index disagrees with sled; rebuilding");
            vectors = fresh(&store)?;
            for item in store.scan() {
                let (key, _, vector) = item?;
                vectors.add(key, &vector)?;
            }
        }
        let distinct = vectors.distinct();
        info!(chunks = chunks.len(), distinct, documents = docs.len(), sequence, reused_ann = reuse, %quantization, "shard opened");
        Ok(Self { store, vectors, bm25, payload, chunks, docs, sequence, next_key, dimension, ann_path })
    }

    /// Counters.
    pub fn stats(&self) -> ShardStats {
        ShardStats {
            chunks: self.chunks.len() as u64,
            documents: self.docs.len() as u64,
            sequence: self.sequence,
            dimension: self.dimension as u32,
            quantization: self.vectors.quantization(),
        }
    }

    /// Vector dimension.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Bytes of memory holding vectors (see [`VectorSet::memory_bytes`]).
    pub fn vector_memory_bytes(&self) -> usize {
        self.vectors.memory_bytes()
    }

    /// Applies writes atomically in sled and then to the indexes. Not durable
    /// until [`Shard::flush`] returns; callers acknowledge only after that.
    pub fn apply(&mut self, writes: Vec<DocWrite>) -> Result<WriteOutcome, ShardError> {
        self.apply_at(writes, self.sequence + 1)
    }

    /// Applies a replicated write that the primary applied at `sequence`; only the
    /// next sequence is accepted, so a replica applies writes in the primary's order.
    pub fn apply_replicated(&mut self, writes: Vec<DocWrite>, sequence: u64) -> Result<WriteOutcome, ShardError> {
        if sequence != self.sequence + 1 {
            return Err(ShardError::OutOfOrder { have: self.sequence, got: sequence });
        }
        self.apply_at(writes, sequence)
    }

    /// Every document with its chunks and vectors, and the sequence they reflect
    /// (a snapshot for shard transfer).
    pub fn snapshot(&self) -> Result<(u64, Vec<DocWrite>), ShardError> {
        let mut writes = Vec::with_capacity(self.docs.len());
        let mut ids: Vec<&String> = self.docs.keys().collect();
        ids.sort();
        for doc_id in ids {
            let mut chunks = Vec::new();
            for &key in &self.docs[doc_id] {
                let record =
                    self.store.chunk(key)?.ok_or_else(|| ShardError::Corrupt(format!("chunk {key} missing")))?;
                let vector =
                    self.store.vector(key)?.ok_or_else(|| ShardError::Corrupt(format!("vector {key} missing")))?;
                chunks.push((record, vector));
            }
            writes.push(DocWrite { doc_id: doc_id.clone(), delete: false, chunks });
        }
        Ok((self.sequence, writes))
    }

    /// Installs a snapshot taken at `sequence` into this empty replica.
    pub fn install(&mut self, writes: Vec<DocWrite>, sequence: u64) -> Result<WriteOutcome, ShardError> {
        if self.sequence != 0 || !self.docs.is_empty() {
            return Err(ShardError::Invalid("a snapshot is installed only into an empty replica".into()));
        }
        if sequence == 0 {
            return Ok(WriteOutcome::default());
        }
        self.apply_at(writes, sequence)
    }

    /// The logged writes after `after` up to the current sequence.
    pub fn log_since(&self, after: u64) -> Result<Vec<(u64, Vec<DocWrite>)>, ShardError> {
        self.store
            .log_range(after + 1, self.sequence)?
            .into_iter()
            .map(|(seq, bytes)| {
                serde_json::from_slice(&bytes).map(|w| (seq, w)).map_err(|e| ShardError::Corrupt(e.to_string()))
            })
            .collect()
    }

    /// Applies `writes` as write number `sequence`: validated as a whole, then one
    /// durable sled batch (chunks, document keys, the log entry), then the derived
    /// indexes, so a failure before the batch leaves nothing half applied.
    fn apply_at(&mut self, writes: Vec<DocWrite>, sequence: u64) -> Result<WriteOutcome, ShardError> {
        validate_writes(&writes, self.dimension)?;
        let staged = self.stage(&writes)?;
        let log = serde_json::to_vec(&writes).map_err(|e| ShardError::Corrupt(e.to_string()))?;
        self.store.apply(staged.batch, sequence, staged.next_key, log)?;
        self.sequence = sequence;
        self.next_key = staged.next_key;
        let mut outcome = staged.outcome;
        outcome.sequence = sequence;
        // Derived state follows the durable state.
        self.unindex(&staged.removed)?;
        let items: Vec<(u64, &[f32])> = staged.added.iter().map(|(_, key, _, v)| (*key, v.as_slice())).collect();
        self.vectors.add_many(&items)?;
        for (doc_id, key, record, _) in staged.added {
            self.bm25.insert(key, &record.text);
            self.payload.insert(key, &record.metadata);
            self.docs.entry(doc_id.clone()).or_default().push(key);
            self.chunks.insert(key, ChunkMeta { doc_id, metadata: record.metadata.clone() });
        }
        Ok(outcome)
    }

    /// The sled batch of `writes` (later writes of the same document win) and
    /// what it removes and adds, for the derived indexes.
    fn stage<'w>(&self, writes: &'w [DocWrite]) -> Result<Staged<'w>, ShardError> {
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (i, w) in writes.iter().enumerate() {
            last.insert(w.doc_id.as_str(), i);
        }
        let mut staged = Staged { next_key: self.next_key, ..Staged::default() };
        for (i, w) in writes.iter().enumerate() {
            if last.get(w.doc_id.as_str()) != Some(&i) {
                continue;
            }
            let old = self.docs.get(&w.doc_id).cloned().unwrap_or_default();
            for &key in &old {
                ShardStore::delete_chunk(&mut staged.batch, key);
            }
            if w.delete {
                if !old.is_empty() {
                    staged.outcome.documents += 1;
                    staged.outcome.chunks += old.len() as u64;
                }
                ShardStore::put_doc(&mut staged.batch, &w.doc_id, &[]);
            } else {
                let mut keys = Vec::with_capacity(w.chunks.len());
                for (record, vector) in &w.chunks {
                    let key = staged.next_key;
                    staged.next_key += 1;
                    ShardStore::put_chunk(&mut staged.batch, key, record, vector)?;
                    keys.push(key);
                    staged.added.push((w.doc_id.clone(), key, record, vector));
                }
                ShardStore::put_doc(&mut staged.batch, &w.doc_id, &keys);
                staged.outcome.documents += 1;
                staged.outcome.chunks += w.chunks.len() as u64;
            }
            staged.removed.extend(old);
        }
        Ok(staged)
    }

    /// Drops removed chunks from the ANN and BM25 indexes and the in-memory maps.
    fn unindex(&mut self, removed: &[u64]) -> Result<(), ShardError> {
        for &key in removed {
            self.vectors.remove(key)?;
            if let Some(meta) = self.chunks.remove(&key) {
                self.payload.remove(key, &meta.metadata);
                if let Some(keys) = self.docs.get_mut(&meta.doc_id) {
                    keys.retain(|k| *k != key);
                    if keys.is_empty() {
                        self.docs.remove(&meta.doc_id);
                    }
                }
            }
        }
        self.bm25.remove_many(removed);
        Ok(())
    }

    /// A handle on the store to flush outside the shard's lock or actor.
    pub fn store(&self) -> &ShardStore {
        &self.store
    }

    /// Searches the shard. A filter is evaluated once, on the payload index, into
    /// the bitmap of matching chunks that both lists then draw from.
    pub fn search(&self, q: &ShardQuery) -> Result<ShardResults, ShardError> {
        let allowed = (!q.filter.is_empty()).then(|| self.payload.matching(&q.filter));
        let mut results = ShardResults::default();
        if q.mode.needs_vector() {
            let keys = self.vector_search(q, allowed.as_ref())?;
            results.vector = self.hits(keys, q.with_vectors)?;
        }
        if matches!(q.mode, SearchMode::Bm25 | SearchMode::Hybrid) {
            let params = Bm25Params { k1: q.settings.bm25_k1, b: q.settings.bm25_b };
            let keys = match &allowed {
                Some(set) => self.bm25.search_with(&q.text, q.top_k, params, |key| set.contains(key)),
                None => self.bm25.search_with(&q.text, q.top_k, params, |_| true),
            };
            results.bm25 = self.hits(keys, q.with_vectors)?;
        }
        Ok(results)
    }

    /// Without a filter: exact f32 brute force when asked for (`exact: true`);
    /// a full scan of the int8 codes with the best candidates re-scored in
    /// f32 when the shard holds at most `exact_below` chunks; HNSW with a
    /// candidate list scaled with k above. With a filter, the planner counts
    /// the distinct vectors among the matches (bounded from bitmaps, counted
    /// only when the bounds disagree) and scans them when there are at most
    /// `SCAN_FILTER_LIMIT` or the shard is small, post-filters an unfiltered
    /// search when it keeps at least `POST_FILTER_SHARE` of the shard, else
    /// walks the graph with the filter; `exact: true` scores every match in
    /// f32. Exact search is what recall is measured against, so below the
    /// limits the index loses nothing the int8 error does not reorder; the
    /// limits are where a scan stops being as fast as the graph (BENCHMARKS.md).
    fn vector_search(&self, q: &ShardQuery, allowed: Option<&RoaringTreemap>) -> Result<Vec<(u64, f32)>, ShardError> {
        if q.vector.len() != self.dimension {
            return Err(ShardError::Dimension { expected: self.dimension, got: q.vector.len() });
        }
        let small = self.chunks.len() <= q.settings.exact_below as usize;
        let exact = q.exact || small;
        // Without a graph (an int8 collection) the staged scan has no upper limit.
        let staged_up_to = if self.vectors.has_graph() { q.settings.binary_below as usize } else { usize::MAX };
        let ef = q.settings.ef_for(q.top_k);
        let Some(allowed) = allowed else {
            let (plan, found) = if q.exact {
                ("exact", self.vectors.exact_search(&q.vector, q.top_k)?)
            } else if small {
                ("scan", self.vectors.scan_search(&q.vector, q.top_k))
            } else if self.chunks.len() <= staged_up_to {
                let first = q.settings.binary_first_for(q.top_k, self.chunks.len());
                ("staged", self.vectors.staged_search(&q.vector, q.top_k, first))
            } else {
                ("hnsw", self.vectors.search(&q.vector, q.top_k, ef)?)
            };
            metrics::counter!("tessera_shard_vector_searches_total", "plan" => plan).increment(1);
            return Ok(found);
        };
        if allowed.is_empty() {
            return Ok(Vec::new());
        }
        let plan = match q.filter_plan {
            FilterPlan::Auto if q.exact => FilterPlan::Exact,
            // Count distinct vectors, not chunks: HNSW filters graph entries, so a filter
            // matching 40,000 copies of one vector and 100 others is a 101-entry search.
            FilterPlan::Auto if exact || !self.vectors.distinct_exceed(allowed, SCAN_FILTER_LIMIT) => FilterPlan::Scan,
            FilterPlan::Auto if self.chunks.len() <= staged_up_to => FilterPlan::Staged,
            // Forced graph plans (measurements) without a graph: the staged scan is the only other way.
            FilterPlan::Graph | FilterPlan::PostFilter if !self.vectors.has_graph() => FilterPlan::Staged,
            FilterPlan::Auto if allowed.len() as f64 >= POST_FILTER_SHARE * self.chunks.len() as f64 => {
                FilterPlan::PostFilter
            }
            FilterPlan::Auto => FilterPlan::Graph,
            chosen => chosen,
        };
        let (ran, found) = match plan {
            FilterPlan::Exact => (plan, self.vectors.exact_among(&q.vector, allowed.iter(), q.top_k)),
            FilterPlan::Scan | FilterPlan::Auto => {
                (FilterPlan::Scan, self.vectors.scan_among(&q.vector, allowed.iter(), q.top_k))
            }
            FilterPlan::PostFilter => match self.vectors.post_filtered_search(&q.vector, q.top_k, ef, allowed)? {
                Some(found) => (plan, found),
                None => (FilterPlan::Graph, self.vectors.filtered_search(&q.vector, q.top_k, ef, allowed)?),
            },
            FilterPlan::Graph => (plan, self.vectors.filtered_search(&q.vector, q.top_k, ef, allowed)?),
            FilterPlan::Staged => {
                let first = q.settings.binary_first_for(q.top_k, allowed.len() as usize);
                (plan, self.vectors.staged_among(&q.vector, q.top_k, first, allowed))
            }
        };
        // Which way filters go is what a user tunes filters and SCAN_FILTER_LIMIT by.
        metrics::counter!("tessera_shard_filtered_searches_total", "plan" => ran.label()).increment(1);
        Ok(found)
    }

    /// Exact top-k of the whole shard (for recall measurements).
    pub fn exact_search(&self, vector: &[f32], k: usize) -> Result<Vec<(u64, f32)>, ShardError> {
        self.vectors.exact_search(vector, k)
    }

    /// Top-k chunks of the whole shard by the staged scan with a first-stage
    /// list of `first` (for recall measurements), best first.
    pub fn staged_search(&self, vector: &[f32], k: usize, first: usize) -> Vec<(u64, f32)> {
        self.vectors.staged_search(vector, k, first)
    }

    /// Approximate top-k keys of the whole shard (for recall measurements).
    /// Fails in an int8 collection, which has no graph.
    pub fn ann_search(&self, vector: &[f32], k: usize) -> Result<Vec<(u64, f32)>, ShardError> {
        self.vectors.search(vector, k, super::ann::DEFAULT_EF)
    }

    fn hits(&self, keys: Vec<(u64, f32)>, with_vectors: bool) -> Result<Vec<ShardHit>, ShardError> {
        let mut out = Vec::with_capacity(keys.len());
        for (key, score) in keys {
            let Some(record) = self.store.chunk(key)? else {
                continue;
            };
            let vector = if with_vectors { self.store.vector(key)?.unwrap_or_default() } else { Vec::new() };
            out.push(ShardHit { record, score, vector });
        }
        Ok(out)
    }

    /// Saves the ANN index next to the data so the next open can skip the rebuild.
    pub fn close(&self) -> Result<(), ShardError> {
        self.store.flush_blocking()?;
        if let Some(path) = &self.ann_path {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| ShardError::Ann(e.to_string()))?;
            }
            if self.vectors.save(path)? {
                std::fs::write(seq_path(path), self.sequence.to_string())
                    .map_err(|e| ShardError::Ann(e.to_string()))?;
            }
        }
        Ok(())
    }
}

fn seq_path(ann: &std::path::Path) -> PathBuf {
    ann.with_extension("seq")
}

/// The flat file of an int8 shard's f32 originals, beside its graph's path.
pub(super) fn originals_path(ann: &std::path::Path) -> PathBuf {
    ann.with_extension("f32")
}

/// The saved index if its sequence matches sled's; the marker is removed either
/// way, so a later crash can never make a stale index look current.
fn load_saved_ann(path: &std::path::Path, dimension: usize, sequence: u64) -> Option<VectorSet> {
    let marker = seq_path(path);
    let saved_seq = std::fs::read_to_string(&marker).ok()?.trim().parse::<u64>().ok();
    let _ = std::fs::remove_file(&marker);
    if saved_seq != Some(sequence) {
        return None;
    }
    VectorSet::load(path, dimension).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(doc: &str, n: usize, text: &str, lang: &str) -> ChunkRecord {
        let mut metadata = Metadata::new();
        metadata.insert("lang".into(), json!(lang));
        ChunkRecord { chunk_id: format!("{doc}#{n}"), doc_id: doc.into(), text: text.into(), metadata }
    }

    fn vec_for(seed: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..8).map(|j| ((seed * 7 + j * 3) % 11) as f32 - 5.0).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        v
    }

    fn write(doc: &str, texts: &[(&str, &str)], seed: usize) -> DocWrite {
        DocWrite {
            doc_id: doc.into(),
            delete: false,
            chunks: texts.iter().enumerate().map(|(n, (t, l))| (record(doc, n, t, l), vec_for(seed + n))).collect(),
        }
    }

    fn query(v: Vec<f32>, text: &str, mode: SearchMode, filter: Filter) -> ShardQuery {
        ShardQuery { filter, ..ShardQuery::new(mode, v, text, 10) }
    }

    #[test]
    fn a_replica_applies_only_the_next_sequence_and_catches_up_from_the_log() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut primary = Shard::open(db.open_tree("p").unwrap(), 8, None).unwrap();
        let mut replica = Shard::open(db.open_tree("r").unwrap(), 8, None).unwrap();
        primary.apply(vec![write("a", &[("one 一", "en")], 1)]).unwrap();
        primary.apply(vec![write("b", &[("two", "en")], 2), write("a", &[("one again", "en")], 3)]).unwrap();
        let deleted = DocWrite { doc_id: "b".into(), delete: true, chunks: vec![] };
        primary.apply(vec![deleted]).unwrap();
        // The newest write alone is refused: the replica has nothing yet.
        let newest = primary.log_since(2).unwrap();
        assert_eq!(newest.len(), 1);
        let err = replica.apply_replicated(newest[0].1.clone(), 3).unwrap_err();
        assert!(matches!(err, ShardError::OutOfOrder { have: 0, got: 3 }), "{err}");
        // Catch-up from the log, in order, gives the same content and sequence.
        for (seq, w) in primary.log_since(replica.stats().sequence).unwrap() {
            replica.apply_replicated(w, seq).unwrap();
        }
        assert_eq!(replica.stats(), primary.stats());
        let hits = |s: &Shard| {
            let r = s.search(&query(vec_for(3), "one", SearchMode::Hybrid, Filter::default())).unwrap();
            r.vector.iter().map(|h| h.record.chunk_id.clone()).collect::<Vec<_>>()
        };
        assert_eq!(hits(&replica), hits(&primary));
        // A repeated write is refused, not applied twice.
        let again = primary.log_since(0).unwrap();
        assert!(matches!(
            replica.apply_replicated(again[0].1.clone(), 1),
            Err(ShardError::OutOfOrder { have: 3, got: 1 })
        ));
        assert_eq!(replica.stats().sequence, 3);
    }

    /// 300 documents of 3 chunks in 32 dimensions; every chunk of document
    /// `d` with `d % 7 == 0` has the vector of document `d - 1`'s first chunk
    /// (copies, so the vector sets dedupe), `lang` is `d % 4 == 0`.
    fn corpus(round: usize) -> Vec<DocWrite> {
        (0..300)
            .map(|d| {
                let doc = format!("d{d}");
                let chunks = (0..3)
                    .map(|n| {
                        let seed = if d % 7 == 0 && d > 0 { (d - 1) * 3 } else { d * 3 + n };
                        let lang = if d % 4 == 0 { "zh" } else { "en" };
                        let text = format!("chunk {n} of {doc} round {round}");
                        (record(&doc, n, &text, lang), crate::shard::ann::tests::unit(seed + round * 10_000, 32))
                    })
                    .collect();
                DocWrite { doc_id: doc, delete: false, chunks }
            })
            .collect()
    }

    #[test]
    fn an_int8_shard_answers_as_exact_search_does_with_no_graph_and_nothing_saved() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        let ann_path = dir.path().join("ann/q.usearch");
        let mut int8 =
            Shard::open_as(db.open_tree("q").unwrap(), 32, Quantization::Int8, Some(ann_path.clone())).unwrap();
        let mut f32s = Shard::open(db.open_tree("f").unwrap(), 32, None).unwrap();
        // Without a folder for its file, an int8 shard reads its originals from sled.
        let mut via_sled = Shard::open_as(db.open_tree("s").unwrap(), 32, Quantization::Int8, None).unwrap();
        for shard in [&mut int8, &mut f32s, &mut via_sled] {
            shard.apply(corpus(0)).unwrap();
            // Replace a third of the documents (representatives of copies among them) and delete some.
            let replaced: Vec<DocWrite> = corpus(1).into_iter().filter(|w| w.doc_id.len() % 3 == 0).take(100).collect();
            shard.apply(replaced).unwrap();
            let deleted =
                (0..300).step_by(5).map(|d| DocWrite { doc_id: format!("d{d}"), delete: true, chunks: vec![] });
            shard.apply(deleted.collect()).unwrap();
        }
        assert_eq!(int8.stats().chunks, f32s.stats().chunks);
        assert_eq!(int8.stats().quantization, Quantization::Int8);
        assert!(!int8.vectors.has_graph() && f32s.vectors.has_graph());
        assert_eq!(int8.vectors.distinct(), f32s.vectors.distinct(), "copies found without f32 vectors in memory");
        assert!(int8.vectors.distinct() < int8.stats().chunks as usize);
        let ids = |r: &ShardResults| r.vector.iter().map(|h| h.record.chunk_id.clone()).collect::<Vec<_>>();
        let zh = Filter { must: vec![crate::shard::Condition { key: "lang".into(), values: vec![json!("zh")] }] };
        // Every size limit at 0: the f32 shard walks its graph, the int8 one has to scan.
        let large = SearchSettings { exact_below: 0, binary_below: 0, ..SearchSettings::default() };
        let check = |int8: &Shard, f32s: &Shard| {
            for qi in 0..20 {
                let v = crate::shard::ann::tests::unit(50_000 + qi, 32);
                let exact = ShardQuery { exact: true, ..query(v.clone(), "", SearchMode::Vector, Filter::default()) };
                let truth = f32s.search(&exact).unwrap();
                assert_eq!(
                    ids(&int8.search(&exact).unwrap()),
                    ids(&truth),
                    "exact: true reads the originals from sled"
                );
                let q = ShardQuery { settings: large, ..query(v.clone(), "", SearchMode::Vector, Filter::default()) };
                assert_eq!(ids(&int8.search(&q).unwrap()), ids(&truth), "query {qi}: the staged scan");
                let filtered_truth = f32s
                    .search(&ShardQuery { exact: true, ..query(v.clone(), "", SearchMode::Vector, zh.clone()) })
                    .unwrap();
                for plan in [FilterPlan::Auto, FilterPlan::Graph, FilterPlan::PostFilter, FilterPlan::Staged] {
                    let q = ShardQuery {
                        settings: large,
                        filter_plan: plan,
                        ..query(v.clone(), "", SearchMode::Vector, zh.clone())
                    };
                    assert_eq!(ids(&int8.search(&q).unwrap()), ids(&filtered_truth), "query {qi}, {plan:?}");
                }
                // With vectors (for MMR): the stored originals.
                let with =
                    ShardQuery { with_vectors: true, ..query(v.clone(), "", SearchMode::Vector, Filter::default()) };
                let (a, b) = (int8.search(&with).unwrap(), f32s.search(&with).unwrap());
                assert_eq!(a.vector[0].record.chunk_id, b.vector[0].record.chunk_id);
                assert!(a.vector[0].vector.len() == 32 && a.vector[0].vector == b.vector[0].vector);
            }
        };
        check(&int8, &f32s);
        check(&via_sled, &f32s);
        assert!(int8.ann_search(&crate::shard::ann::tests::unit(1, 32), 5).is_err(), "no graph to walk");
        int8.close().unwrap();
        assert!(!ann_path.exists() && !ann_path.with_extension("seq").exists(), "an int8 shard saves no graph");
        assert!(originals_path(&ann_path).exists(), "its originals are in the flat file");
        drop(int8);
        let reopened = Shard::open_as(db.open_tree("q").unwrap(), 32, Quantization::Int8, Some(ann_path)).unwrap();
        assert_eq!(reopened.vectors.distinct(), f32s.vectors.distinct());
        check(&reopened, &f32s);
    }

    #[test]
    fn write_replace_delete_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let ann_path = dir.path().join("ann/s0.usearch");
        let db = sled::open(dir.path().join("db")).unwrap();
        {
            let mut shard = Shard::open(db.open_tree("s0").unwrap(), 8, Some(ann_path.clone())).unwrap();
            let out = shard
                .apply(vec![
                    write("a", &[("alpha one", "en"), ("alpha two", "en")], 1),
                    write("b", &[("向量 检索", "zh")], 9),
                ])
                .unwrap();
            assert_eq!(out, WriteOutcome { sequence: 1, documents: 2, chunks: 3 });
            // Re-ingesting a document replaces its chunks.
            shard.apply(vec![write("a", &[("alpha again", "en")], 3)]).unwrap();
            assert_eq!(shard.stats().chunks, 2);
            let hits = shard.search(&query(vec_for(9), "检索", SearchMode::Hybrid, Filter::default())).unwrap();
            assert_eq!(hits.vector[0].record.doc_id, "b");
            assert_eq!(hits.bm25[0].record.chunk_id, "b#0");
            let zh_only =
                Filter { must: vec![crate::shard::Condition { key: "lang".into(), values: vec![json!("zh")] }] };
            let filtered = shard.search(&query(vec_for(3), "", SearchMode::Vector, zh_only)).unwrap();
            assert!(filtered.vector.iter().all(|h| h.record.doc_id == "b"));
            // A bad vector is refused and nothing changes.
            let mut bad = write("c", &[("x", "en")], 1);
            bad.chunks[0].1 = vec![1.0; 3];
            assert!(shard.apply(vec![bad]).is_err());
            assert_eq!(shard.stats().sequence, 2);
            shard.close().unwrap();
        }
        // Clean reopen reuses the saved ANN index; answers are the same.
        {
            let mut shard = Shard::open(db.open_tree("s0").unwrap(), 8, Some(ann_path.clone())).unwrap();
            assert_eq!(
                shard.stats(),
                ShardStats { chunks: 2, documents: 2, sequence: 2, dimension: 8, quantization: Quantization::None }
            );
            let hits = shard.search(&query(vec_for(3), "alpha", SearchMode::Hybrid, Filter::default())).unwrap();
            assert_eq!(hits.vector[0].record.chunk_id, "a#0");
            assert_eq!(hits.bm25[0].record.text, "alpha again");
            let out = shard.apply(vec![DocWrite { doc_id: "a".into(), delete: true, chunks: vec![] }]).unwrap();
            assert_eq!((out.documents, out.chunks), (1, 1));
        }
        // Reopen without a clean close rebuilds from sled.
        let shard = Shard::open(db.open_tree("s0").unwrap(), 8, Some(ann_path)).unwrap();
        assert_eq!(shard.stats().chunks, 1);
        assert!(shard
            .search(&query(vec_for(3), "alpha", SearchMode::Bm25, Filter::default()))
            .unwrap()
            .bm25
            .is_empty());
    }
}
