//! Reads: search (fan out to every shard, merge, fuse, re-rank) and embedding.
use futures::future::try_join_all;
use futures::stream::{self, StreamExt, TryStreamExt};
use tessera_proto::convert::search_mode;
use tessera_proto::v1 as pb;
use tessera_types::{NodeRole, Scored, SearchMode, SearchSettings};

use crate::catalog::CollectionMeta;
use crate::coordinator::{with_deadline, Coordinator};
use crate::error::{CoordinatorError, Result};
use crate::merge::{merge_top_k, mmr, reciprocal_rank_fusion};
use tessera_types::limits;

/// The MMR trade-off of a request: 0 means the default, 0.5.
fn mmr_lambda(req: &pb::SearchRequest) -> f32 {
    if req.mmr_lambda == 0.0 {
        0.5
    } else {
        req.mmr_lambda
    }
}

/// Candidates each shard returns: `top_k`, MMR's larger pool, or for hybrid
/// the fusion depth, so that fusion sees deep enough lists from both sides (a
/// chunk ranked 12th by vectors and 3rd by BM25 can belong in the fused top 10).
fn fetch_k(req: &pb::SearchRequest, mode: SearchMode, settings: &SearchSettings, max: u32) -> u32 {
    let mut fetch = req.top_k;
    if req.mmr {
        fetch = if req.fetch_k == 0 { 4 * req.top_k } else { req.fetch_k.max(req.top_k) };
        fetch = fetch.min(limits::MAX_MMR_CANDIDATES.max(req.top_k));
    }
    if mode == SearchMode::Hybrid {
        let depth = if req.fusion_depth > 0 {
            (req.fusion_depth as usize).max(req.top_k as usize)
        } else {
            settings.fusion_depth_for(req.top_k as usize)
        };
        fetch = fetch.max(depth as u32);
    }
    fetch.min(max.max(req.top_k))
}

/// Per-shard result lists, split by the index that ranked them.
struct ShardLists {
    vector: Vec<Vec<Scored>>,
    bm25: Vec<Vec<Scored>>,
}

impl Coordinator {
    /// A public search request: checks the limits, then [`Coordinator::search_hits`].
    pub(crate) async fn search(&self, req: pb::SearchRequest) -> Result<Vec<Scored>> {
        self.check_search(&req)?;
        let meta = self.collection(&req.collection)?;
        self.search_hits(&req, &meta, None).await
    }

    fn check_search(&self, req: &pb::SearchRequest) -> Result<()> {
        let max = self.config.max_top_k;
        if req.query.trim().is_empty() {
            return Err(CoordinatorError::invalid("query must not be empty"));
        }
        if req.query.len() > self.config.max_query_bytes {
            return Err(CoordinatorError::invalid(format!(
                "query is {} bytes, over the limit of {}",
                req.query.len(),
                self.config.max_query_bytes
            )));
        }
        if req.top_k == 0 || req.top_k > max {
            return Err(CoordinatorError::invalid(format!("top_k must be between 1 and {max}, got {}", req.top_k)));
        }
        if req.fetch_k > max {
            return Err(CoordinatorError::invalid(format!("fetch_k must be at most {max}")));
        }
        if req.fusion_depth > max {
            return Err(CoordinatorError::invalid(format!("fusion_depth must be at most {max}")));
        }
        if !(0.0..=1.0).contains(&mmr_lambda(req)) {
            return Err(CoordinatorError::invalid("mmr_lambda must be between 0 and 1"));
        }
        if req.filter.as_ref().is_some_and(|f| f.must.iter().any(|c| c.key.is_empty() || c.values_json.is_empty())) {
            return Err(CoordinatorError::invalid("each filter condition needs a key and at least one value"));
        }
        if let Some(f) = &req.filter {
            limits::check_filter(f.must.iter().map(|c| (c.key.as_str(), c.values_json.as_slice())))
                .map_err(CoordinatorError::invalid)?;
        }
        if req.mmr {
            if req.top_k > limits::MAX_MMR_TOP_K {
                return Err(CoordinatorError::invalid(format!(
                    "with mmr, top_k must be at most {}, got {}",
                    limits::MAX_MMR_TOP_K,
                    req.top_k
                )));
            }
            if req.fetch_k > limits::MAX_MMR_CANDIDATES {
                return Err(CoordinatorError::invalid(format!(
                    "with mmr, fetch_k must be at most {}, got {}",
                    limits::MAX_MMR_CANDIDATES,
                    req.fetch_k
                )));
            }
        }
        Ok(())
    }

    /// Search after validation: fan out to every shard, merge, fuse, re-rank.
    /// `query_vector` skips the embedding step when the caller has one.
    pub(crate) async fn search_hits(
        &self,
        req: &pb::SearchRequest,
        meta: &CollectionMeta,
        query_vector: Option<Vec<f32>>,
    ) -> Result<Vec<Scored>> {
        let mode = search_mode(req.mode)?;
        let query_vector = match query_vector {
            Some(v) => v,
            None if mode.needs_vector() || req.mmr => self.embed_query(&req.query).await?,
            None => Vec::new(),
        };
        let fetch = fetch_k(req, mode, &meta.settings, self.config.max_top_k);
        // MMR needs vector candidates, whatever the mode asks for first.
        let shard_mode = if req.mmr && mode == SearchMode::Bm25 { SearchMode::Hybrid } else { mode };
        let lists = self.search_shards(req, meta, &query_vector, fetch, shard_mode).await?;
        let fetch = fetch as usize;
        let mut hits = match mode {
            SearchMode::Bm25 => merge_top_k(lists.bm25, fetch),
            SearchMode::Hybrid => {
                let v = merge_top_k(lists.vector, fetch);
                let b = merge_top_k(lists.bm25, fetch);
                reciprocal_rank_fusion(&[v, b], fetch)
            }
            SearchMode::Vector => merge_top_k(lists.vector, fetch),
        };
        if let Some(min) = req.min_score {
            hits.retain(|h| h.score >= min);
        }
        let top_k = req.top_k as usize;
        if req.mmr {
            hits = mmr(&query_vector, hits, top_k, mmr_lambda(req));
        }
        hits.truncate(top_k);
        Ok(hits)
    }

    /// Every shard's candidate lists; a shard's primary is asked first, and a
    /// failed replica is retried on the next one.
    async fn search_shards(
        &self,
        req: &pb::SearchRequest,
        meta: &CollectionMeta,
        query_vector: &[f32],
        fetch: u32,
        mode: SearchMode,
    ) -> Result<ShardLists> {
        let searches = (0..meta.shards).map(|shard| {
            let request = pb::ShardSearchRequest {
                shard: Some(pb::ShardRef { collection: meta.name.clone(), shard }),
                vector: query_vector.to_vec(),
                query: req.query.clone(),
                top_k: fetch,
                filter: req.filter.clone(),
                mode: pb::SearchMode::from(mode) as i32,
                with_vectors: req.mmr,
                settings: Some(meta.settings.into()),
                exact: req.exact,
            };
            async move {
                let mut last = None;
                for node in self.read_nodes(meta, shard)? {
                    match node
                        .client
                        .clone()
                        .shard_search(with_deadline(request.clone(), self.config.read_deadline))
                        .await
                    {
                        Ok(resp) => return Ok::<_, CoordinatorError>(resp.into_inner()),
                        Err(s) => last = Some(CoordinatorError::node(&node, s)),
                    }
                }
                Err(last.unwrap_or_else(|| CoordinatorError::unavailable(format!("shard {shard} has no replica"))))
            }
        });
        let mut lists = ShardLists { vector: Vec::new(), bm25: Vec::new() };
        for r in try_join_all(searches).await? {
            lists.vector.push(r.vector_hits.into_iter().filter_map(|h| Scored::try_from(h).ok()).collect());
            lists.bm25.push(r.bm25_hits.into_iter().filter_map(|h| Scored::try_from(h).ok()).collect());
        }
        Ok(lists)
    }

    /// The embedding of one query text.
    pub(crate) async fn embed_query(&self, query: &str) -> Result<Vec<f32>> {
        Ok(self.embed_texts(vec![query.to_string()]).await?.vectors.pop().map(|v| v.values).unwrap_or_default())
    }

    /// A public embed request: checks the limits, then [`Coordinator::embed_texts`].
    pub(crate) async fn embed(&self, texts: Vec<String>) -> Result<pb::EmbedResponse> {
        if texts.is_empty() {
            return Err(CoordinatorError::invalid("give at least one text to embed"));
        }
        if texts.len() > self.config.max_embed_texts {
            return Err(CoordinatorError::invalid(format!(
                "at most {} texts per request",
                self.config.max_embed_texts
            )));
        }
        let bytes: usize = texts.iter().map(String::len).sum();
        if bytes > self.config.max_embed_bytes {
            return Err(CoordinatorError::TooLarge(format!(
                "the texts of one embed request may hold at most {} bytes together, got {bytes}",
                self.config.max_embed_bytes
            )));
        }
        self.embed_texts(texts).await
    }

    /// Embeds texts over the nodes, in parallel batches, keeping order; the answer
    /// also carries the embedder's dimension and model name.
    pub(crate) async fn embed_texts(&self, texts: Vec<String>) -> Result<pb::EmbedResponse> {
        let batches: Vec<Vec<String>> = texts.chunks(self.config.embed_batch.max(1)).map(|c| c.to_vec()).collect();
        let results: Vec<pb::EmbedResponse> = stream::iter(batches.into_iter().map(|batch| async move {
            self.on_role(NodeRole::Embedder, |mut client| {
                let texts = batch.clone();
                async move { client.embed_batch(pb::EmbedRequest { texts }).await }
            })
            .await
        }))
        .buffered(self.config.embed_parallelism.max(1))
        .try_collect()
        .await?;
        let mut all = pb::EmbedResponse::default();
        for r in results {
            all.dimension = r.dimension;
            all.model = r.model;
            all.vectors.extend(r.vectors);
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(top_k: u32, fusion_depth: u32) -> pb::SearchRequest {
        pb::SearchRequest { top_k, fusion_depth, ..Default::default() }
    }

    fn hit(id: &str, score: f32) -> Scored {
        Scored {
            chunk_id: id.into(),
            doc_id: id.into(),
            score,
            text: String::new(),
            metadata_json: String::new(),
            vector: vec![],
        }
    }

    #[test]
    fn hybrid_fetches_deeper_lists_than_top_k() {
        let s = SearchSettings::default();
        assert_eq!(fetch_k(&req(10, 0), SearchMode::Vector, &s, 1000), 10);
        assert_eq!(fetch_k(&req(10, 0), SearchMode::Hybrid, &s, 1000), 50);
        assert_eq!(fetch_k(&req(30, 0), SearchMode::Hybrid, &s, 1000), 120);
        assert_eq!(fetch_k(&req(10, 200), SearchMode::Hybrid, &s, 1000), 200);
        assert_eq!(fetch_k(&req(10, 0), SearchMode::Hybrid, &s, 40), 40, "capped by max_top_k");
    }

    #[test]
    fn a_chunk_deep_in_one_list_and_high_in_the_other_survives_deep_fusion() {
        // "x" is 12th by vectors and 2nd by BM25: fusing only each side's top 10
        // never sees it in the vector list; fusing 50 deep puts it in the top 10.
        let vector: Vec<Scored> =
            (0..50)
                .map(|i| {
                    if i == 11 {
                        hit("x", 0.9 - i as f32 * 0.01)
                    } else {
                        hit(&format!("v{i}"), 0.9 - i as f32 * 0.01)
                    }
                })
                .collect();
        let bm25: Vec<Scored> = (0..50)
            .map(|i| if i == 1 { hit("x", 20.0 - i as f32) } else { hit(&format!("b{i}"), 20.0 - i as f32) })
            .collect();
        let shallow = reciprocal_rank_fusion(&[vector[..10].to_vec(), bm25[..10].to_vec()], 10);
        let deep = reciprocal_rank_fusion(&[vector.clone(), bm25.clone()], 10);
        let rank = |l: &[Scored]| l.iter().position(|h| h.chunk_id == "x");
        assert!(
            rank(&deep).is_some_and(|r| r < rank(&shallow).unwrap_or(usize::MAX)),
            "{:?} vs {:?}",
            rank(&deep),
            rank(&shallow)
        );
        assert_eq!(rank(&deep), Some(0), "in both lists, it beats every chunk that is in one only");
    }
}
