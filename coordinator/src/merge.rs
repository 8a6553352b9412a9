//! Combining per-shard results: top-k merge, reciprocal rank fusion and MMR.
//!
//! Pure functions over hit lists, so they are tested without any server.
use std::collections::HashMap;

use tessera_types::cosine;
pub use tessera_types::Scored;

fn order(a: &Scored, b: &Scored) -> std::cmp::Ordering {
    b.score.total_cmp(&a.score).then_with(|| a.chunk_id.cmp(&b.chunk_id))
}

/// Merges per-shard lists (each best first) into the global best `k`.
pub fn merge_top_k(lists: Vec<Vec<Scored>>, k: usize) -> Vec<Scored> {
    let mut all: Vec<Scored> = lists.into_iter().flatten().collect();
    all.sort_by(order);
    all.truncate(k);
    all
}

/// The constant of reciprocal rank fusion (Cormack et al. use 60).
pub const RRF_K: f32 = 60.0;

/// Reciprocal rank fusion of ranked lists: score = Σ 1 / (RRF_K + rank).
pub fn reciprocal_rank_fusion(lists: &[Vec<Scored>], k: usize) -> Vec<Scored> {
    let mut fused: HashMap<&str, (f32, &Scored)> = HashMap::new();
    for list in lists {
        for (rank, hit) in list.iter().enumerate() {
            let add = 1.0 / (RRF_K + rank as f32 + 1.0);
            fused.entry(hit.chunk_id.as_str()).and_modify(|e| e.0 += add).or_insert((add, hit));
        }
    }
    let mut out: Vec<Scored> = fused.into_values().map(|(score, hit)| Scored { score, ..hit.clone() }).collect();
    out.sort_by(order);
    out.truncate(k);
    out
}

/// Maximal marginal relevance: picks `k` of `candidates` trading relevance to
/// the query (weight `lambda`) against similarity to what is already picked.
/// The returned hits keep their original scores.
pub fn mmr(query: &[f32], candidates: Vec<Scored>, k: usize, lambda: f32) -> Vec<Scored> {
    let mut pool = candidates;
    let mut picked: Vec<Scored> = Vec::new();
    let relevance: Vec<f32> = pool.iter().map(|c| cosine(query, &c.vector)).collect();
    let mut relevance: Vec<Option<f32>> = relevance.into_iter().map(Some).collect();
    while picked.len() < k {
        let mut best: Option<(usize, f32)> = None;
        for (i, c) in pool.iter().enumerate() {
            let Some(rel) = relevance[i] else { continue };
            let redundancy = picked.iter().map(|p| cosine(&c.vector, &p.vector)).fold(f32::MIN, f32::max);
            let redundancy = if picked.is_empty() { 0.0 } else { redundancy };
            let value = lambda * rel - (1.0 - lambda) * redundancy;
            if best.is_none_or(|(_, b)| value > b) {
                best = Some((i, value));
            }
        }
        let Some((i, _)) = best else { break };
        relevance[i] = None;
        picked.push(pool[i].clone());
    }
    pool.clear();
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(id: &str, score: f32, vector: Vec<f32>) -> Scored {
        Scored {
            chunk_id: id.into(),
            doc_id: id.into(),
            score,
            text: String::new(),
            metadata_json: "{}".into(),
            vector,
        }
    }

    #[test]
    fn merge_keeps_global_best() {
        let merged =
            merge_top_k(vec![vec![hit("a", 0.9, vec![]), hit("b", 0.2, vec![])], vec![hit("c", 0.5, vec![])]], 2);
        assert_eq!(merged.iter().map(|h| h.chunk_id.as_str()).collect::<Vec<_>>(), ["a", "c"]);
    }

    #[test]
    fn rrf_rewards_agreement() {
        let v = vec![hit("a", 0.9, vec![]), hit("b", 0.8, vec![]), hit("c", 0.7, vec![])];
        let b = vec![hit("d", 12.0, vec![]), hit("b", 10.0, vec![]), hit("e", 1.0, vec![])];
        let fused = reciprocal_rank_fusion(&[v, b], 4);
        assert_eq!(fused[0].chunk_id, "b"); // rank 2 in both beats rank 1 in one
        assert!((fused[0].score - 2.0 / 62.0).abs() < 1e-6);
        assert_eq!(fused.len(), 4);
    }

    #[test]
    fn mmr_prefers_diverse_results() {
        let q = vec![1.0, 0.0];
        let cands =
            vec![hit("a", 0.99, vec![1.0, 0.01]), hit("a2", 0.98, vec![1.0, 0.02]), hit("b", 0.6, vec![0.6, -0.8])];
        let picked = mmr(&q, cands.clone(), 2, 0.3);
        assert_eq!(picked.iter().map(|h| h.chunk_id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let relevance_only = mmr(&q, cands, 2, 1.0);
        assert_eq!(relevance_only[1].chunk_id, "a2");
    }
}
