//! Prompt prefixes prefilled once and reused by later requests.
//!
//! Every ask renders the same system prompt and template head before its
//! context, every chat turn repeats the conversation so far, and prefill is
//! where the time to first token goes (~5 ms a token here). The scheduler
//! keeps, after a prompt is prefilled, a copy of its KV cache for the prompt's
//! whole blocks of [`BLOCK_TOKENS`] tokens; a later prompt that starts with
//! the same blocks starts its cache as a copy of them and prefills only the
//! rest. Entries are found by a chain hash at every block boundary (so a
//! prompt sharing only the first blocks of an entry still uses those),
//! checked token by token (a hash collision costs a miss, never wrong keys),
//! kept within a byte budget and evicted least recently used first.
//!
//! The index lives with rank 0's scheduler; the KV copies live on every rank
//! (each its own share of the heads), and the scheduler tells the ranks what
//! to save, fork and drop with each step's command ([`PrefixOps`]), so all
//! ranks hold the same entries.
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use serde::{Deserialize, Serialize};

/// Tokens per block: prefixes are matched and kept in whole blocks (small
/// enough that a system prompt's tail is not lost, large enough that a
/// prompt has few boundaries to hash).
pub const BLOCK_TOKENS: usize = 32;

/// What the ranks do to their prefix copies before a step, in this order:
/// saves, forks, drops (see `RankModel::apply_prefix_ops`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixOps {
    /// Keep a sequence's first positions as a new entry.
    pub save: Vec<PrefixSave>,
    /// Start a sequence's cache from an entry.
    pub fork: Vec<PrefixFork>,
    /// Forget entries (evicted).
    pub drop: Vec<u64>,
}

impl PrefixOps {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.save.is_empty() && self.fork.is_empty() && self.drop.is_empty()
    }
}

/// Sequence `seq`'s first `positions` positions become entry `entry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixSave {
    /// The sequence whose cache is copied.
    pub seq: u64,
    /// The new entry's id.
    pub entry: u64,
    /// Positions kept (whole blocks).
    pub positions: usize,
}

/// Sequence `seq` starts with entry `entry`'s first `positions` positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixFork {
    /// The entry copied.
    pub entry: u64,
    /// The new sequence.
    pub seq: u64,
    /// Positions copied (whole blocks, fewer than the sequence's prompt).
    pub positions: usize,
}

/// One kept prefix.
struct Entry {
    tokens: Vec<u32>,
    bytes: usize,
    last_used: u64,
    /// The boundary hashes that point at this entry (others may point at
    /// an older entry with the same first blocks).
    boundaries: Vec<u64>,
}

/// The scheduler's index of kept prefixes (see the module documentation).
pub struct PrefixCache {
    budget: usize,
    bytes_per_position: usize,
    entries: HashMap<u64, Entry>,
    /// Boundary hash -> (entry, positions up to that boundary).
    by_hash: HashMap<u64, (u64, usize)>,
    next_entry: u64,
    clock: u64,
    bytes: usize,
}

/// `hashes[i]` covers `tokens[..(i + 1) * BLOCK_TOKENS]`, for `blocks` blocks.
fn boundary_hashes(tokens: &[u32], blocks: usize) -> Vec<u64> {
    let mut hashes = Vec::with_capacity(blocks);
    let mut previous = 0u64;
    for block in tokens.chunks_exact(BLOCK_TOKENS).take(blocks) {
        // DefaultHasher::new() has fixed keys: the same tokens hash the
        // same in every run (no adversary chooses our token blocks' hashes
        // to any effect: a collision is checked and costs a miss).
        let mut h = DefaultHasher::new();
        previous.hash(&mut h);
        block.hash(&mut h);
        previous = h.finish();
        hashes.push(previous);
    }
    hashes
}

impl PrefixCache {
    /// An index keeping at most `budget` bytes of prefixes (rank 0's share;
    /// 0 turns reuse off), each position costing `bytes_per_position`.
    pub fn new(budget: usize, bytes_per_position: usize) -> Self {
        Self {
            budget,
            bytes_per_position: bytes_per_position.max(1),
            entries: HashMap::new(),
            by_hash: HashMap::new(),
            next_entry: 1,
            clock: 0,
            bytes: 0,
        }
    }

    /// Entries kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when reuse is on (a non-zero budget).
    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// The longest kept prefix of `prompt` that leaves at least one token to
    /// prefill (its logits are the first token's): `(entry, positions)`.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<(u64, usize)> {
        if !self.enabled() || prompt.is_empty() {
            return None;
        }
        let blocks = (prompt.len() - 1) / BLOCK_TOKENS;
        let hashes = boundary_hashes(prompt, blocks);
        self.clock += 1;
        for h in hashes.iter().rev() {
            let Some(&(entry, positions)) = self.by_hash.get(h) else { continue };
            let Some(e) = self.entries.get_mut(&entry) else { continue };
            if e.tokens.get(..positions) == Some(&prompt[..positions]) {
                e.last_used = self.clock;
                return Some((entry, positions));
            }
        }
        None
    }

    /// After sequence `seq` prefilled `prompt`: keeps its whole blocks as a
    /// new entry unless they are kept already, evicting the least recently
    /// used entries to stay within the budget; the save and the drops go
    /// into `ops` for the ranks.
    pub fn insert(&mut self, seq: u64, prompt: &[u32], ops: &mut PrefixOps) {
        let blocks = prompt.len() / BLOCK_TOKENS;
        if !self.enabled() || blocks == 0 {
            return;
        }
        let hashes = boundary_hashes(prompt, blocks);
        let positions = blocks * BLOCK_TOKENS;
        if let Some(&(entry, kept)) = self.by_hash.get(&hashes[blocks - 1]) {
            if kept == positions && self.entries.get(&entry).is_some_and(|e| e.tokens[..] == prompt[..positions]) {
                return;
            }
        }
        let bytes = positions * self.bytes_per_position;
        if bytes > self.budget {
            return;
        }
        while self.bytes + bytes > self.budget {
            let Some(oldest) = self.entries.iter().min_by_key(|(_, e)| e.last_used).map(|(id, _)| *id) else { break };
            self.evict(oldest);
            ops.drop.push(oldest);
        }
        let id = self.next_entry;
        self.next_entry += 1;
        self.clock += 1;
        let mut boundaries = Vec::new();
        for (i, h) in hashes.iter().enumerate() {
            if let std::collections::hash_map::Entry::Vacant(slot) = self.by_hash.entry(*h) {
                slot.insert((id, (i + 1) * BLOCK_TOKENS));
                boundaries.push(*h);
            }
        }
        self.entries
            .insert(id, Entry { tokens: prompt[..positions].to_vec(), bytes, last_used: self.clock, boundaries });
        self.bytes += bytes;
        ops.save.push(PrefixSave { seq, entry: id, positions });
    }

    /// Forgets every entry (after a failed step, when the ranks' copies
    /// may no longer match the index), asking the ranks to drop theirs.
    pub fn clear(&mut self, ops: &mut PrefixOps) {
        ops.save.clear();
        ops.fork.clear();
        ops.drop.extend(self.entries.keys().copied());
        self.entries.clear();
        self.by_hash.clear();
        self.bytes = 0;
    }

    fn evict(&mut self, id: u64) {
        if let Some(e) = self.entries.remove(&id) {
            self.bytes -= e.bytes;
            for h in e.boundaries {
                if self.by_hash.get(&h).is_some_and(|(entry, _)| *entry == id) {
                    self.by_hash.remove(&h);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(head: u32, len: usize) -> Vec<u32> {
        (0..len as u32).map(|i| if i < 64 { i } else { head * 1000 + i }).collect()
    }

    #[test]
    fn finds_the_longest_kept_block_prefix_and_leaves_a_token() {
        let mut cache = PrefixCache::new(1 << 20, 10);
        let mut ops = PrefixOps::default();
        let first = prompt(1, 100);
        assert_eq!(cache.lookup(&first), None);
        cache.insert(7, &first, &mut ops);
        assert_eq!(ops.save, vec![PrefixSave { seq: 7, entry: 1, positions: 96 }]);
        // The same prompt again: 96 of its 100 tokens.
        assert_eq!(cache.lookup(&first), Some((1, 96)));
        // A prompt of exactly 96 tokens reuses 64, leaving its last block to compute.
        assert_eq!(cache.lookup(&first[..96]), Some((1, 64)));
        // Another prompt sharing the first 64 tokens (two blocks) only.
        assert_eq!(cache.lookup(&prompt(2, 200)), Some((1, 64)));
        // Sharing fewer than one block: nothing.
        let mut other = first.clone();
        other[5] = 99_999;
        assert_eq!(cache.lookup(&other), None);
        // Inserting the same prompt again keeps no second copy.
        let mut again = PrefixOps::default();
        cache.insert(8, &first, &mut again);
        assert!(again.is_empty());
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn evicts_least_recently_used_within_the_budget() {
        // Room for two 96-position entries at 10 bytes a position.
        let mut cache = PrefixCache::new(2000, 10);
        let mut ops = PrefixOps::default();
        let (a, b, c) = (prompt(1, 100), prompt(2, 100), prompt(3, 100));
        cache.insert(1, &a, &mut ops);
        cache.insert(2, &b, &mut ops);
        assert!(ops.drop.is_empty());
        // Use b's own blocks so that a is the least recently used.
        assert_eq!(cache.lookup(&b).map(|(_, p)| p), Some(96));
        cache.insert(3, &c, &mut ops);
        assert_eq!(ops.drop, vec![1]);
        assert_eq!(cache.len(), 2);
        // a's entry is gone with its boundaries; c's entry, inserted after
        // the eviction, registered the two blocks all three prompts share.
        assert_eq!(cache.lookup(&a), Some((3, 64)));
        assert_eq!(cache.lookup(&b), Some((2, 96)));
        assert!(cache.bytes <= 2000);
    }

    #[test]
    fn off_with_a_zero_budget_and_for_short_prompts() {
        let mut cache = PrefixCache::new(0, 10);
        let mut ops = PrefixOps::default();
        cache.insert(1, &prompt(1, 100), &mut ops);
        assert!(ops.is_empty() && cache.lookup(&prompt(1, 100)).is_none());
        let mut cache = PrefixCache::new(1 << 20, 10);
        cache.insert(1, &prompt(1, 31), &mut ops);
        assert!(ops.is_empty());
    }
}
