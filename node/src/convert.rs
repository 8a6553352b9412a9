//! Wire conversions of what only a node knows: shard writes, hits and stats,
//! filters, chunk metadata, sampling settings. Shared types (chat messages,
//! sessions, search modes, hits as the coordinator merges them) convert in
//! `tessera_proto::convert`. Both the `Node` service and shard replication use
//! this module, so neither imports the other.
use tessera_proto::v1 as pb;
use tonic::Status;

use crate::load::Metadata;
use crate::model::constraint::OutputConstraint;
use crate::model::SamplingParams;
use crate::shard::{ChunkRecord, Condition, DocWrite, Filter, ShardHit, ShardStats};

/// Sampling settings of a request, with the documented defaults.
pub fn sampling_from_pb(req: &pb::GenerateRequest) -> SamplingParams {
    let d = SamplingParams::default();
    SamplingParams {
        temperature: req.temperature.unwrap_or(d.temperature),
        top_p: req.top_p.unwrap_or(d.top_p),
        top_k: req.top_k.map(|k| k as usize).unwrap_or(d.top_k),
        repetition_penalty: req.repetition_penalty.unwrap_or(d.repetition_penalty),
        seed: req.seed.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|t| t.as_nanos() as u64).unwrap_or(0)
        }),
        max_tokens: if req.max_tokens == 0 { d.max_tokens } else { req.max_tokens as usize },
        stop: req.stop.clone(),
        constraint: req.constraint.as_ref().and_then(constraint_from_pb),
    }
}

/// The output constraint of a request (`json_object: false` is no constraint).
pub fn constraint_from_pb(c: &pb::OutputConstraint) -> Option<OutputConstraint> {
    use pb::output_constraint::Kind;
    match c.kind.as_ref()? {
        Kind::JsonSchema(s) => Some(OutputConstraint::JsonSchema(s.clone())),
        Kind::JsonObject(true) => Some(OutputConstraint::JsonObject),
        Kind::JsonObject(false) => None,
        Kind::Regex(r) => Some(OutputConstraint::Regex(r.clone())),
        Kind::Choice(choice) => Some(OutputConstraint::Choice(choice.options.clone())),
    }
}

/// Parses a JSON object, treating "" as empty.
pub fn parse_metadata(json: &str) -> Result<Metadata, Status> {
    if json.trim().is_empty() {
        return Ok(Metadata::new());
    }
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        Ok(_) => Err(Status::invalid_argument("metadata must be a JSON object")),
        Err(e) => Err(Status::invalid_argument(format!("metadata is not valid JSON: {e}"))),
    }
}

/// Converts the wire filter; values that are not JSON are taken as strings.
pub fn filter_from_pb(f: Option<pb::Filter>) -> Filter {
    Filter {
        must: f
            .map(|f| f.must)
            .unwrap_or_default()
            .into_iter()
            .map(|c| Condition {
                key: c.key,
                values: c
                    .values_json
                    .into_iter()
                    .map(|v| serde_json::from_str(&v).unwrap_or(serde_json::Value::String(v)))
                    .collect(),
            })
            .collect(),
    }
}

pub fn stats_pb(collection: &str, shard: u32, s: ShardStats) -> pb::ShardStats {
    pb::ShardStats {
        shard: Some(pb::ShardRef { collection: collection.to_string(), shard }),
        chunks: s.chunks,
        documents: s.documents,
        sequence: s.sequence,
        dimension: s.dimension,
    }
}

pub fn shard_ref(r: Option<pb::ShardRef>) -> Result<pb::ShardRef, Status> {
    r.ok_or_else(|| Status::invalid_argument("shard reference missing"))
}

pub fn hit_pb(h: ShardHit) -> pb::ShardHit {
    pb::ShardHit {
        hit: Some(pb::Hit {
            doc_id: h.record.doc_id,
            chunk_id: h.record.chunk_id,
            score: h.score,
            text: h.record.text,
            metadata_json: serde_json::Value::Object(h.record.metadata).to_string(),
        }),
        vector: h.vector,
    }
}

/// The wire form of writes (also used for log catch-up).
pub fn writes_to_pb(writes: &[DocWrite]) -> Vec<pb::DocumentWrite> {
    writes
        .iter()
        .map(|w| pb::DocumentWrite {
            doc_id: w.doc_id.clone(),
            delete: w.delete,
            chunks: w
                .chunks
                .iter()
                .map(|(r, v)| pb::ChunkWithVector {
                    chunk: Some(pb::Chunk {
                        chunk_id: r.chunk_id.clone(),
                        doc_id: r.doc_id.clone(),
                        text: r.text.clone(),
                        metadata_json: serde_json::Value::Object(r.metadata.clone()).to_string(),
                    }),
                    vector: v.clone(),
                })
                .collect(),
        })
        .collect()
}

/// Writes from the wire form.
pub fn writes_from_pb(writes: Vec<pb::DocumentWrite>) -> Result<Vec<DocWrite>, Status> {
    let mut out = Vec::with_capacity(writes.len());
    for w in writes {
        let mut chunks = Vec::with_capacity(w.chunks.len());
        for c in w.chunks {
            let chunk = c.chunk.ok_or_else(|| Status::invalid_argument("chunk missing"))?;
            let metadata = parse_metadata(&chunk.metadata_json)?;
            chunks.push((
                ChunkRecord { chunk_id: chunk.chunk_id, doc_id: chunk.doc_id, text: chunk.text, metadata },
                c.vector,
            ));
        }
        out.push(DocWrite { doc_id: w.doc_id, delete: w.delete, chunks });
    }
    Ok(out)
}
