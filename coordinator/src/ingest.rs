//! Writes: ingest (load and split on a loader, embed, write per shard) and delete.
use std::collections::BTreeMap;

use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::try_join_all;
use futures::{stream, StreamExt};
use tessera_proto::v1 as pb;
use tessera_types::{NodeRole, Quantization, SearchSettings};
use tokio::sync::mpsc;
use tracing::info;

use crate::catalog::{shard_for, validate_name, CollectionMeta};
use crate::coordinator::{with_deadline, Coordinator};
use crate::error::{CoordinatorError, Result};

/// Document writes grouped by shard number.
type PerShard = BTreeMap<u32, Vec<pb::DocumentWrite>>;

/// The counters of one ingest, shared by its embedding loop and shard writers.
struct Progress {
    total: u64,
    embedded: AtomicU64,
    written: AtomicU64,
    documents: AtomicU64,
}

impl Progress {
    fn new(total: u64) -> Self {
        Self { total, embedded: AtomicU64::new(0), written: AtomicU64::new(0), documents: AtomicU64::new(0) }
    }

    fn embedded(&self, n: u64) {
        self.embedded.fetch_add(n, Ordering::Relaxed);
    }

    fn written(&self, chunks: u64, documents: u64) {
        self.written.fetch_add(chunks, Ordering::Relaxed);
        self.documents.fetch_add(documents, Ordering::Relaxed);
    }

    fn snapshot(&self) -> pb::IngestProgress {
        pb::IngestProgress {
            chunks_total: self.total,
            chunks_embedded: self.embedded.load(Ordering::Relaxed),
            chunks_written: self.written.load(Ordering::Relaxed),
            documents_written: self.documents.load(Ordering::Relaxed),
            done: None,
        }
    }
}

/// Chunk size and overlap of a request: 0 means the defaults (1000 / 200).
fn chunking(req: &pb::IngestRequest) -> Result<(u32, u32)> {
    let (chunk_size, chunk_overlap) = match req.chunk_size {
        0 => (1000, if req.chunk_overlap == 0 { 200 } else { req.chunk_overlap }),
        n => (n, req.chunk_overlap),
    };
    if chunk_size < tessera_types::limits::MIN_CHUNK_SIZE {
        return Err(CoordinatorError::invalid(format!(
            "chunk_size must be at least {}, got {chunk_size}",
            tessera_types::limits::MIN_CHUNK_SIZE
        )));
    }
    if chunk_overlap >= chunk_size {
        return Err(CoordinatorError::invalid(format!(
            "chunk_overlap ({chunk_overlap}) must be smaller than chunk_size ({chunk_size})"
        )));
    }
    Ok((chunk_size, chunk_overlap))
}

impl Coordinator {
    /// Loads, splits, embeds and writes files and documents, creating the
    /// collection if needed. Files that fail to load are reported, not fatal.
    pub(crate) async fn ingest(&self, req: pb::IngestRequest) -> Result<pb::IngestResponse> {
        self.ingest_with_progress(req, &|_| {}).await
    }

    /// [`Coordinator::ingest`], calling `report` with the counters each time a
    /// batch of chunks is embedded or a shard write is durable.
    ///
    /// Embedding and writing overlap: chunks are embedded in batches in
    /// document order, a document goes to its shard's queue as soon as its last
    /// chunk has a vector, and one writer per shard drains its queue (in order,
    /// so a document repeated in one request still ends as its last version;
    /// whatever queued during a write goes out as the next one) while the next
    /// batches embed. Before, every write waited for the whole
    /// request's embedding.
    pub(crate) async fn ingest_with_progress(
        &self,
        req: pb::IngestRequest,
        report: &(dyn Fn(pb::IngestProgress) + Sync),
    ) -> Result<pb::IngestResponse> {
        validate_name(&req.collection)?;
        if req.files.is_empty() && req.documents.is_empty() {
            return Err(CoordinatorError::invalid("nothing to ingest: give files or documents"));
        }
        let (chunk_size, chunk_overlap) = chunking(&req)?;
        let meta = self.create(&req.collection, 0, 0, SearchSettings::default(), Quantization::None, true).await?;
        let load = pb::LoadAndSplitRequest {
            files: req.files,
            documents: req.documents,
            chunk_size,
            chunk_overlap,
            splitter: req.splitter,
        };
        let loaded = self
            .on_role(NodeRole::Loader, |mut client| {
                let load = load.clone();
                async move { client.load_and_split(load).await }
            })
            .await?;
        let errors = loaded.errors;
        let chunk_count: usize = loaded.documents.iter().map(|d| d.chunks.len()).sum();
        if chunk_count > tessera_types::limits::MAX_CHUNKS_PER_REQUEST {
            return Err(CoordinatorError::TooLarge(format!(
                "this request splits into {chunk_count} chunks, over the limit of {} per request; send fewer files at once or a larger chunk_size",
                tessera_types::limits::MAX_CHUNKS_PER_REQUEST
            )));
        }
        let progress = Progress::new(chunk_count as u64);
        report(progress.snapshot());

        // One queue and one writer per shard touched.
        let mut queues: BTreeMap<u32, mpsc::UnboundedSender<Vec<pb::DocumentWrite>>> = BTreeMap::new();
        let mut writers = Vec::new();
        for doc in &loaded.documents {
            let shard = shard_for(&doc.doc_id, meta.shards);
            if let std::collections::btree_map::Entry::Vacant(slot) = queues.entry(shard) {
                let (tx, mut rx) = mpsc::unbounded_channel::<Vec<pb::DocumentWrite>>();
                slot.insert(tx);
                let (meta, progress) = (&meta, &progress);
                writers.push(async move {
                    let mut outcomes = Vec::new();
                    while let Some(mut writes) = rx.recv().await {
                        // What queued up while the last write ran goes out as one write.
                        while let Ok(more) = rx.try_recv() {
                            writes.extend(more);
                        }
                        let outcome = self.write_shard(meta, shard, writes).await?;
                        progress.written(outcome.chunks, outcome.documents);
                        report(progress.snapshot());
                        outcomes.push(outcome);
                    }
                    Ok::<_, CoordinatorError>(outcomes)
                });
            }
        }

        let embed_and_queue = async {
            let batch_size = self.config.embed_batch.max(1);
            let mut batches: Vec<Vec<String>> = Vec::new();
            for text in loaded.documents.iter().flat_map(|d| d.chunks.iter().map(|c| c.text.clone())) {
                match batches.last_mut() {
                    Some(batch) if batch.len() < batch_size => batch.push(text),
                    _ => batches.push(vec![text]),
                }
            }
            let mut embedded = stream::iter(batches.into_iter().map(|batch| self.embed_texts(batch)))
                .buffered(self.config.embed_parallelism.max(1));
            let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(chunk_count);
            let mut docs = loaded.documents.into_iter().peekable();
            // Chunks of the documents already queued.
            let mut queued = 0usize;
            let mut pending = PerShard::new();
            let flush = |pending: &mut PerShard| -> Result<()> {
                for (shard, writes) in std::mem::take(pending) {
                    let queue =
                        queues.get(&shard).ok_or_else(|| CoordinatorError::Internal("no writer for shard".into()))?;
                    queue.send(writes).map_err(|_| CoordinatorError::Internal("shard writer stopped".into()))?;
                }
                Ok(())
            };
            // Every document whose chunks all have vectors (documents without chunks at
            // once) goes to its shard's queue.
            let mut queue_ready = |vectors: &mut Vec<Vec<f32>>| -> Result<()> {
                while let Some(doc) = docs.next_if(|d| queued + d.chunks.len() <= vectors.len()) {
                    let chunks: Vec<pb::ChunkWithVector> = doc
                        .chunks
                        .into_iter()
                        .zip(vectors[queued..].iter_mut())
                        .map(|(chunk, v)| pb::ChunkWithVector { vector: std::mem::take(v), chunk: Some(chunk) })
                        .collect();
                    queued += chunks.len();
                    pending.entry(shard_for(&doc.doc_id, meta.shards)).or_default().push(pb::DocumentWrite {
                        doc_id: doc.doc_id,
                        delete: false,
                        chunks,
                    });
                }
                // Ready documents go to their writers at once; a writer that is busy
                // coalesces what queues up meanwhile into its next write.
                flush(&mut pending)
            };
            queue_ready(&mut vectors)?;
            while let Some(batch) = embedded.next().await {
                let batch = batch?;
                progress.embedded(batch.vectors.len() as u64);
                report(progress.snapshot());
                vectors.extend(batch.vectors.into_iter().map(|v| v.values));
                queue_ready(&mut vectors)?;
            }
            if docs.peek().is_some() {
                return Err(CoordinatorError::Internal(format!(
                    "the embedder returned {} vectors for {chunk_count} chunks",
                    vectors.len()
                )));
            }
            drop(queues);
            Ok::<_, CoordinatorError>(())
        };
        // Both sides run until done or the first error; a failed embedding stops
        // the writers (their queues close), a failed write fails the request.
        let (embedding, written) = futures::join!(embed_and_queue, try_join_all(writers));
        // A failed write first: it is why the embedding loop's queue closed.
        let outcomes: Vec<pb::ShardWriteResponse> = written?.into_iter().flatten().collect();
        embedding?;
        let documents = outcomes.iter().map(|o| o.documents).sum();
        let chunks = outcomes.iter().map(|o| o.chunks).sum();
        info!(documents, chunks, errors = errors.len(), "ingested");
        Ok(pb::IngestResponse { documents, chunks, errors })
    }

    /// Deletes documents (each on the one shard its id hashes to).
    pub(crate) async fn delete(&self, req: pb::DeleteRequest) -> Result<pb::DeleteResponse> {
        let meta = self.collection(&req.collection)?;
        if req.doc_ids.is_empty() || req.doc_ids.iter().any(|d| d.is_empty()) {
            return Err(CoordinatorError::invalid("give one or more non-empty document ids"));
        }
        let mut per_shard = PerShard::new();
        for doc_id in req.doc_ids {
            per_shard.entry(shard_for(&doc_id, meta.shards)).or_default().push(pb::DocumentWrite {
                doc_id,
                delete: true,
                chunks: vec![],
            });
        }
        let outcomes = self.write_shards(&meta, per_shard).await?;
        Ok(pb::DeleteResponse {
            documents: outcomes.iter().map(|o| o.documents).sum(),
            chunks: outcomes.iter().map(|o| o.chunks).sum(),
        })
    }

    /// Sends each shard its document writes, all shards in parallel; answers once every
    /// shard has made its writes durable on as many replicas as `write_acks` asks.
    async fn write_shards(&self, meta: &CollectionMeta, per_shard: PerShard) -> Result<Vec<pb::ShardWriteResponse>> {
        let writes = per_shard.into_iter().map(|(shard, writes)| self.write_shard(meta, shard, writes));
        try_join_all(writes).await
    }

    async fn write_shard(
        &self,
        meta: &CollectionMeta,
        shard: u32,
        writes: Vec<pb::DocumentWrite>,
    ) -> Result<pb::ShardWriteResponse> {
        let collection = meta.name.as_str();
        let node = self.node_for_shard(meta, shard)?;
        let shard_ref = pb::ShardRef { collection: collection.to_string(), shard };
        let (followers, replicas, epoch) = match meta.placement.get(shard as usize) {
            Some(p) => (
                p.replicas
                    .iter()
                    .filter(|r| **r != p.primary)
                    .filter_map(|r| self.nodes.get(r).map(|n| n.url))
                    .collect::<Vec<_>>(),
                p.replicas.len(),
                p.epoch,
            ),
            None => (vec![], 1, 0),
        };
        let min_acks = self.config.write_acks.needed(replicas) as u32;
        if min_acks as usize > followers.len() + 1 {
            return Err(CoordinatorError::unavailable(format!(
                "shard {shard} of '{collection}' has {} of {replicas} replicas alive; a write needs {min_acks}",
                followers.len() + 1
            )));
        }
        let request =
            pb::ShardWriteRequest { shard: Some(shard_ref), writes, follower_urls: followers, min_acks, epoch };
        let resp = node
            .client
            .clone()
            .shard_write(with_deadline(request, self.config.write_deadline))
            .await
            .map_err(|s| CoordinatorError::node(&node, s))?;
        Ok(resp.into_inner())
    }
}
