//! Top-k BM25 by MaxScore (Turtle & Flood, 1995), document at a time.
//!
//! Every query term has an upper bound on what it can add to any chunk's score
//! (its idf times the BM25 saturation at the list's largest tf and smallest
//! length). Terms are ordered by bound; once the k-th best score so far, θ,
//! is at least the sum of the smallest bounds, those terms are "non-essential":
//! a chunk that has only them cannot enter the top k, so only the essential
//! lists are walked to find candidates, and the non-essential ones are probed
//! by seeking, and not at all once the remaining bounds cannot lift a
//! candidate over θ. Common words (in most chunks) have small idf and
//! hence small bounds: they stop being walked after the first few hits.
//!
//! Ties are broken towards the smaller key and chunks are visited in key
//! order, so a chunk scoring exactly θ can never displace the current k-th,
//! which is why "cannot exceed θ" is a safe test and the result equals
//! scoring every chunk.
use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::{Posting, PostingList};

/// Collection statistics and parameters for one query.
pub(super) struct Scorer {
    pub n: f64,
    pub avg_len: f64,
    pub k1: f64,
    pub b: f64,
}

impl Scorer {
    fn idf(&self, df: f64) -> f64 {
        (1.0 + (self.n - df + 0.5) / (df + 0.5)).ln()
    }

    fn saturation(&self, tf: f64, len: f64) -> f64 {
        tf / (tf + self.k1 * (1.0 - self.b + self.b * len / self.avg_len))
    }
}

/// A scored chunk; `Ord` says which is better.
#[derive(Debug, Clone, Copy)]
struct Hit {
    score: f64,
    key: u64,
}

impl PartialEq for Hit {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Hit {}
impl PartialOrd for Hit {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Hit {
    /// Higher score is better; on a tie the smaller key is.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then(other.key.cmp(&self.key))
    }
}

/// One query term's walk over its list.
struct Cursor<'a> {
    postings: &'a [Posting],
    at: usize,
    idf: f64,
    bound: f64,
}

impl Cursor<'_> {
    /// The current live posting, skipping tombstones.
    fn current(&mut self) -> Option<Posting> {
        while let Some(p) = self.postings.get(self.at) {
            if p.tf > 0 {
                return Some(*p);
            }
            self.at += 1;
        }
        None
    }

    /// Moves to the first posting with a key >= `key` (galloping, then binary search).
    fn seek(&mut self, key: u64) -> Option<Posting> {
        let rest = &self.postings[self.at..];
        if rest.first().is_some_and(|p| p.key < key) {
            let mut step = 1;
            while step < rest.len() && rest[step].key < key {
                step *= 2;
            }
            let hi = step.min(rest.len());
            let lo = step / 2;
            self.at += lo + rest[lo..hi].partition_point(|p| p.key < key);
        }
        self.current()
    }
}

/// The best `k` chunks over `lists` (one per distinct query term) that `accept` lets through.
pub(super) fn top_k(
    scorer: &Scorer,
    lists: &[&PostingList],
    k: usize,
    accept: impl Fn(u64) -> bool,
) -> Vec<(u64, f32)> {
    let mut cursors: Vec<Cursor> = lists
        .iter()
        .map(|l| {
            let idf = scorer.idf(l.live as f64);
            // Rounding could make a computed score exceed its computed bound by
            // an ulp; the margin keeps the bound an upper bound.
            let bound = idf * scorer.saturation(l.max_tf as f64, l.min_len as f64) * (1.0 + 1e-9) + 1e-12;
            Cursor { postings: &l.postings, at: 0, idf, bound }
        })
        .collect();
    cursors.sort_by(|a, b| a.bound.total_cmp(&b.bound));
    // upto[i]: sum of the bounds of cursors 0..=i.
    let upto: Vec<f64> = cursors
        .iter()
        .scan(0.0, |sum, c| {
            *sum += c.bound;
            Some(*sum)
        })
        .collect();
    let mut heap: BinaryHeap<std::cmp::Reverse<Hit>> = BinaryHeap::with_capacity(k + 1);
    let mut theta = f64::NEG_INFINITY;
    // Cursors below `essential` are non-essential.
    let mut essential = 0usize;
    let score_of = |c: &Cursor, p: Posting| c.idf * scorer.saturation(p.tf as f64, p.len as f64);

    loop {
        // The next candidate: the smallest key on an essential list.
        let mut next: Option<u64> = None;
        for c in &mut cursors[essential..] {
            if let Some(p) = c.current() {
                next = Some(next.map_or(p.key, |n: u64| n.min(p.key)));
            }
        }
        let Some(key) = next else { break };
        let mut score = 0.0;
        for c in &mut cursors[essential..] {
            if let Some(p) = c.current().filter(|p| p.key == key) {
                score += score_of(c, p);
                c.at += 1;
            }
        }
        if !accept(key) {
            continue;
        }
        // Non-essential terms, largest bound first, while they can still matter.
        let mut pruned = false;
        for i in (0..essential).rev() {
            if score + upto[i] <= theta {
                pruned = true;
                break;
            }
            let c = &mut cursors[i];
            if let Some(p) = c.seek(key).filter(|p| p.key == key) {
                score += score_of(c, p);
            }
        }
        if pruned {
            continue;
        }
        let hit = Hit { score, key };
        if heap.len() < k {
            heap.push(std::cmp::Reverse(hit));
        } else if heap.peek().is_some_and(|worst| hit > worst.0) {
            heap.pop();
            heap.push(std::cmp::Reverse(hit));
        } else {
            continue;
        }
        if heap.len() == k {
            theta = heap.peek().map_or(f64::NEG_INFINITY, |w| w.0.score);
            while essential < cursors.len() && upto[essential] <= theta {
                essential += 1;
            }
        }
    }
    let mut hits: Vec<Hit> = heap.into_iter().map(|r| r.0).collect();
    hits.sort_by(|a, b| b.cmp(a));
    hits.into_iter().map(|h| (h.key, h.score as f32)).collect()
}
