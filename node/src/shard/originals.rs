//! Where an int8 collection's full-precision vectors are read from when its
//! best candidates are re-scored.
//!
//! The codes in memory rank the candidates; the last step needs each
//! candidate's f32 vector. sled holds every vector already, but reading 80
//! of them per query from a tree larger than sled's cache cost 6–7 ms at
//! 300,000 chunks (each a page rebuilt from the log; BENCHMARKS.md). So a
//! shard with a folder keeps a flat file beside its sled tree, in the slots
//! of its int8 codes (vector of slot `s` at byte `s × dimension × 4`), read
//! with one `pread` per candidate from the OS page cache (not the process's
//! memory, and given back under pressure), as Qdrant keeps originals on disk
//! beside quantized vectors in RAM. A removal moves the last slot's vector
//! into the hole and shortens the file, as the codes do, so the file is
//! always the live vectors' size. It is derived, like the codes: rewritten
//! from sled at every open, so it needs no flush or recovery of its own.
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::store::{decode_into, encode_vector};
use super::{ShardError, ShardStore};

/// See the module documentation.
pub enum Originals {
    /// Read from the shard's sled tree (no folder to put a file in: tests, benchmarks).
    Store(ShardStore),
    /// The flat file.
    File(OriginalsFile),
}

impl Originals {
    /// Records `key`'s vector, whose code is in `slot` (the file only: sled has it already).
    pub fn record(&mut self, slot: usize, vector: &[f32]) -> Result<(), ShardError> {
        match self {
            Originals::Store(_) => Ok(()),
            Originals::File(f) => f.put(slot, vector),
        }
    }

    /// Reads `key`'s vector (code in `slot`) into `buf`; false when it has none of that length.
    pub fn get_into(&self, key: u64, slot: usize, buf: &mut [f32]) -> bool {
        match self {
            Originals::Store(store) => store.vector_into(key, buf),
            Originals::File(f) => f.get_into(slot, buf),
        }
    }

    /// Mirrors a code removal: the vector of slot `last` moves into `slot`
    /// (unless they are the same) and the file ends at `last`.
    pub fn removed(&mut self, slot: usize, last: usize) -> Result<(), ShardError> {
        match self {
            Originals::Store(_) => Ok(()),
            Originals::File(f) => f.move_last(slot, last),
        }
    }
}

/// Vectors at fixed offsets of one file (see the module documentation).
pub struct OriginalsFile {
    file: File,
    dimension: usize,
}

fn io(path: &Path, e: std::io::Error) -> ShardError {
    ShardError::Ann(format!("{}: {e}", path.display()))
}

impl OriginalsFile {
    /// An empty file at `path` (an earlier one is truncated: it is rebuilt from sled).
    pub fn create(path: &Path, dimension: usize) -> Result<Self, ShardError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| io(path, e))?;
        Ok(Self { file, dimension })
    }

    fn offset(&self, slot: usize) -> u64 {
        slot as u64 * self.dimension as u64 * 4
    }

    fn failed(e: std::io::Error) -> ShardError {
        ShardError::Ann(format!("originals file: {e}"))
    }

    /// Writes slot `slot`'s vector.
    pub fn put(&self, slot: usize, vector: &[f32]) -> Result<(), ShardError> {
        self.file.write_all_at(&encode_vector(vector), self.offset(slot)).map_err(Self::failed)
    }

    /// Moves slot `last`'s vector into `slot` and cuts the file at `last`.
    pub fn move_last(&self, slot: usize, last: usize) -> Result<(), ShardError> {
        if slot != last {
            let mut bytes = vec![0u8; self.dimension * 4];
            self.file.read_exact_at(&mut bytes, self.offset(last)).map_err(Self::failed)?;
            self.file.write_all_at(&bytes, self.offset(slot)).map_err(Self::failed)?;
        }
        self.file.set_len(self.offset(last)).map_err(Self::failed)
    }

    /// Reads slot `slot`'s vector into `buf` (`dimension` long). A failed
    /// read is logged: the candidate is then skipped by the caller.
    pub fn get_into(&self, slot: usize, buf: &mut [f32]) -> bool {
        if buf.len() != self.dimension {
            return false;
        }
        let mut bytes = vec![0u8; buf.len() * 4];
        if let Err(e) = self.file.read_exact_at(&mut bytes, self.offset(slot)) {
            tracing::warn!(slot, error = %e, "reading an original vector failed; the candidate is skipped");
            return false;
        }
        decode_into(&bytes, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_come_back_from_their_offsets_and_a_reopen_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s/0.f32");
        let f = OriginalsFile::create(&path, 3).unwrap();
        f.put(0, &[0.25, 0.5, 0.75]).unwrap();
        f.put(1, &[1.0, -2.0, 3.5]).unwrap();
        f.put(2, &[7.0, 8.0, 9.0]).unwrap();
        let mut buf = [0f32; 3];
        assert!(f.get_into(1, &mut buf) && buf == [1.0, -2.0, 3.5]);
        assert!(f.get_into(0, &mut buf) && buf == [0.25, 0.5, 0.75]);
        assert!(!f.get_into(3, &mut buf), "past the end");
        assert!(!f.get_into(0, &mut [0f32; 2]), "wrong length");
        // Removing slot 0: the last vector moves in, the file shrinks to two.
        f.move_last(0, 2).unwrap();
        assert!(f.get_into(0, &mut buf) && buf == [7.0, 8.0, 9.0]);
        assert!(!f.get_into(2, &mut buf));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * 3 * 4);
        f.move_last(1, 1).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 * 4);
        let again = OriginalsFile::create(&path, 3).unwrap();
        assert!(!again.get_into(0, &mut buf), "rebuilt from sled at open, so truncated");
    }
}
