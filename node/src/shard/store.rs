//! The durable half of a shard: one sled tree per shard replica.
//!
//! Layout (keys are bytes; chunk keys are big-endian u64 so that scans are ordered):
//! - `c{key}` → chunk record (JSON: id, doc id, text, metadata)
//! - `v{key}` → vector (little-endian f32s)
//! - `d{doc_id}` → the document's chunk keys (JSON array)
//! - `m:seq`, `m:next`, `m:dim` → applied write sequence, next chunk key, dimension
//! - `l{seq}` → the write applied at that sequence (JSON), so that a replica that
//!   missed writes can catch up from the primary's log
//!
//! A write is one atomic sled batch followed by a flush, so a write that was
//! acknowledged survives a crash and a write that was not is either whole or absent.
use serde::{Deserialize, Serialize};
use sled::{Batch, Tree};

use super::ShardError;
use crate::load::Metadata;

const SEQ: &[u8] = b"m:seq";
const NEXT: &[u8] = b"m:next";
const DIM: &[u8] = b"m:dim";

/// A stored chunk (without its vector).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkRecord {
    /// `"{doc_id}#{n}"`.
    pub chunk_id: String,
    /// Owning document.
    pub doc_id: String,
    /// Chunk text.
    pub text: String,
    /// Chunk metadata.
    pub metadata: Metadata,
}

/// See the module documentation. Cloning shares the tree (sled's handles
/// are reference counted): an int8 collection's vector set keeps one to read
/// its originals.
#[derive(Clone)]
pub struct ShardStore {
    tree: Tree,
}

pub(crate) fn chunk_key(key: u64) -> [u8; 9] {
    let mut k = [b'c'; 9];
    k[1..].copy_from_slice(&key.to_be_bytes());
    k
}

pub(crate) fn vector_key(key: u64) -> [u8; 9] {
    let mut k = [b'v'; 9];
    k[1..].copy_from_slice(&key.to_be_bytes());
    k
}

pub(crate) fn log_key(seq: u64) -> [u8; 9] {
    let mut k = [b'l'; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(crate) fn doc_key(doc_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(doc_id.len() + 1);
    k.push(b'd');
    k.extend_from_slice(doc_id.as_bytes());
    k
}

fn u64_of(bytes: &[u8]) -> Result<u64, ShardError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| ShardError::Corrupt("counter is not 8 bytes".into()))?;
    Ok(u64::from_be_bytes(arr))
}

/// Encodes a vector for storage.
pub(crate) fn encode_vector(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Decodes a stored vector into `buf`; false when the lengths differ.
pub(crate) fn decode_into(bytes: &[u8], buf: &mut [f32]) -> bool {
    if bytes.len() != buf.len() * 4 {
        return false;
    }
    for (x, c) in buf.iter_mut().zip(bytes.chunks_exact(4)) {
        *x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    true
}

fn decode_vector(b: &[u8]) -> Result<Vec<f32>, ShardError> {
    if !b.len().is_multiple_of(4) {
        return Err(ShardError::Corrupt("vector length is not a multiple of 4".into()));
    }
    Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

impl ShardStore {
    /// Wraps a sled tree, recording `dimension` on first use and checking it after.
    pub fn open(tree: Tree, dimension: usize) -> Result<Self, ShardError> {
        match tree.get(DIM)? {
            Some(d) => {
                let stored = u64_of(&d)? as usize;
                if stored != dimension && dimension != 0 {
                    return Err(ShardError::Invalid(format!(
                        "shard was created with dimension {stored}, opened with {dimension}"
                    )));
                }
            }
            None => {
                tree.insert(DIM, &(dimension as u64).to_be_bytes())?;
            }
        }
        Ok(Self { tree })
    }

    /// The dimension recorded at creation.
    pub fn dimension(&self) -> Result<usize, ShardError> {
        Ok(self.tree.get(DIM)?.map(|d| u64_of(&d)).transpose()?.unwrap_or(0) as usize)
    }

    /// The sequence number of the last applied write.
    pub fn sequence(&self) -> Result<u64, ShardError> {
        Ok(self.tree.get(SEQ)?.map(|d| u64_of(&d)).transpose()?.unwrap_or(0))
    }

    /// The next unused chunk key.
    pub fn next_key(&self) -> Result<u64, ShardError> {
        Ok(self.tree.get(NEXT)?.map(|d| u64_of(&d)).transpose()?.unwrap_or(1))
    }

    /// Every stored chunk with its key and vector, in key order (used to rebuild indexes).
    pub fn scan(&self) -> impl Iterator<Item = Result<(u64, ChunkRecord, Vec<f32>), ShardError>> + '_ {
        self.tree.scan_prefix(b"c").map(move |item| {
            let (k, v) = item?;
            let key = u64_of(&k[1..])?;
            let record: ChunkRecord = serde_json::from_slice(&v).map_err(|e| ShardError::Corrupt(e.to_string()))?;
            let vector = self
                .tree
                .get(vector_key(key))?
                .ok_or_else(|| ShardError::Corrupt(format!("chunk {key} has no vector")))?;
            Ok((key, record, decode_vector(&vector)?))
        })
    }

    /// The chunk stored under `key`.
    pub fn chunk(&self, key: u64) -> Result<Option<ChunkRecord>, ShardError> {
        self.tree
            .get(chunk_key(key))?
            .map(|v| serde_json::from_slice(&v).map_err(|e| ShardError::Corrupt(e.to_string())))
            .transpose()
    }

    /// The vector stored under `key`.
    pub fn vector(&self, key: u64) -> Result<Option<Vec<f32>>, ShardError> {
        self.tree.get(vector_key(key))?.map(|v| decode_vector(&v)).transpose()
    }

    /// Reads the vector stored under `key` into `buf` without allocating: what
    /// an int8 collection's re-scoring does for each of its best candidates.
    /// False when `key` has no vector of `buf`'s length (or sled fails: the
    /// candidate is then skipped rather than the search failed).
    pub fn vector_into(&self, key: u64, buf: &mut [f32]) -> bool {
        let Ok(Some(bytes)) = self.tree.get(vector_key(key)) else { return false };
        decode_into(&bytes, buf)
    }

    /// The logged writes with sequence `from..=to`, in order (fewer when the log
    /// does not reach back that far).
    pub fn log_range(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, ShardError> {
        let mut out = Vec::new();
        for item in self.tree.range(log_key(from)..=log_key(to)) {
            let (k, v) = item?;
            out.push((u64_of(&k[1..])?, v.to_vec()));
        }
        Ok(out)
    }

    /// Applies a prepared batch atomically, with the new sequence, key counter and log entry.
    pub fn apply(&self, mut batch: Batch, sequence: u64, next_key: u64, log: Vec<u8>) -> Result<(), ShardError> {
        batch.insert(&log_key(sequence), log);
        batch.insert(SEQ, &sequence.to_be_bytes());
        batch.insert(NEXT, &next_key.to_be_bytes());
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Waits until everything applied so far is on disk.
    pub async fn flush(&self) -> Result<(), ShardError> {
        self.tree.flush_async().await?;
        Ok(())
    }

    /// Flushes synchronously (at shutdown).
    pub fn flush_blocking(&self) -> Result<(), ShardError> {
        self.tree.flush()?;
        Ok(())
    }

    /// Adds a chunk to a batch.
    pub fn put_chunk(batch: &mut Batch, key: u64, record: &ChunkRecord, vector: &[f32]) -> Result<(), ShardError> {
        let json = serde_json::to_vec(record).map_err(|e| ShardError::Corrupt(e.to_string()))?;
        batch.insert(&chunk_key(key), json);
        batch.insert(&vector_key(key), encode_vector(vector));
        Ok(())
    }

    /// Removes a chunk in a batch.
    pub fn delete_chunk(batch: &mut Batch, key: u64) {
        batch.remove(&chunk_key(key));
        batch.remove(&vector_key(key));
    }

    /// Records (or, with no keys, removes) a document's chunk keys in a batch.
    pub fn put_doc(batch: &mut Batch, doc_id: &str, keys: &[u64]) {
        if keys.is_empty() {
            batch.remove(doc_key(doc_id));
        } else {
            batch.insert(doc_key(doc_id), serde_json::to_vec(keys).unwrap_or_default());
        }
    }
}
