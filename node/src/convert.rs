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
        quantization: s.quantization.to_string(),
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

/// A fine-tuning job from its request: 0 / "" take `tessera finetune`'s
/// defaults; `base` is the served model's GGUF.
pub fn finetune_job_from_pb(
    req: &pb::FineTuneRequest,
    base: std::path::PathBuf,
    base_name: &str,
) -> Result<crate::finetune::job::FinetuneJob, Status> {
    use crate::finetune::job::{FinetuneJob, TrainingData};
    use crate::finetune::trainer::TrainConfig;
    use crate::model::adapter::Target;
    let or = |v: u32, d: u32| if v == 0 { d } else { v } as usize;
    if req.out.is_empty() {
        return Err(Status::invalid_argument("give the adapter's output folder (out)"));
    }
    let data = if !req.texts.is_empty() {
        TrainingData::Texts(req.texts.clone())
    } else if !req.data_jsonl.is_empty() {
        TrainingData::Jsonl(req.data_jsonl.clone())
    } else {
        return Err(Status::invalid_argument("give training data (data_jsonl) or a collection"));
    };
    let targets = Target::parse_list(if req.targets.is_empty() { "q,k,v,o" } else { &req.targets })
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(FinetuneJob {
        base,
        data,
        eval: (!req.eval_jsonl.is_empty()).then(|| req.eval_jsonl.clone()),
        eval_split: if req.eval_split > 0.0 { req.eval_split } else { 0.0 },
        max_seq_len: or(req.max_seq_len, 512),
        train: TrainConfig {
            rank: or(req.rank, 8),
            alpha: if req.alpha > 0.0 { req.alpha } else { 16.0 },
            dropout: req.dropout,
            targets,
            epochs: or(req.epochs, 3),
            max_steps: (req.max_steps > 0).then_some(req.max_steps as usize),
            lr: if req.lr > 0.0 { req.lr } else { 2e-4 },
            batch_size: or(req.batch_size, 4),
            grad_accum: or(req.grad_accum, 1),
            max_grad_norm: 1.0,
            seed: req.seed,
            checkpoint_every: req.checkpoint_every as usize,
            out: std::path::PathBuf::from(&req.out),
            resume: req.resume,
            base_name: base_name.to_string(),
        },
        precision: match req.precision.as_str() {
            "" | "bf16" => crate::finetune::model::Precision::Bf16,
            "f32" => crate::finetune::model::Precision::F32,
            other => return Err(Status::invalid_argument(format!("precision '{other}': use bf16 or f32"))),
        },
    })
}

/// A job's data report on the wire.
pub fn prepared_pb(p: &crate::finetune::job::Prepared) -> pb::FineTuneProgress {
    pb::FineTuneProgress {
        prepared: Some(pb::FineTunePrepared {
            train_examples: p.train_examples as u32,
            eval_examples: p.eval_examples as u32,
            dropped: p.dropped as u32,
            target_tokens: p.target_tokens as u64,
            parameters: p.parameters as u64,
        }),
        ..Default::default()
    }
}

/// A step or evaluation report on the wire.
pub fn step_pb(p: &crate::finetune::trainer::Progress) -> pb::FineTuneProgress {
    pb::FineTuneProgress {
        progress: Some(pb::FineTuneStep {
            step: p.step as u32,
            total_steps: p.total_steps as u32,
            epoch: p.epoch,
            loss: p.loss,
            eval_loss: p.eval_loss,
            lr: p.lr,
            tokens_per_s: p.tokens_per_s,
            eta_s: p.eta_s,
        }),
        ..Default::default()
    }
}

/// A finished job on the wire; `adapter` is the name it is served under.
pub fn summary_pb(s: &crate::finetune::trainer::TrainSummary, adapter: &str) -> pb::FineTuneProgress {
    pb::FineTuneProgress {
        summary: Some(pb::FineTuneSummary {
            steps: s.steps as u32,
            interrupted: s.interrupted,
            final_loss: s.final_loss,
            eval_losses: s.eval_losses.clone(),
            tokens_per_s: s.tokens_per_s,
            parameters: s.parameters as u64,
            peak_rss_bytes: s.peak_rss_bytes,
            out: s.out.display().to_string(),
            adapter: adapter.to_string(),
        }),
        ..Default::default()
    }
}

/// What the server's `FineTune` stream reports, back in the job's types
/// (for `tessera finetune --server`).
pub fn finetune_progress_from_pb(
    msg: pb::FineTuneProgress,
) -> (
    Option<crate::finetune::job::Prepared>,
    Option<crate::finetune::trainer::Progress>,
    Option<(crate::finetune::trainer::TrainSummary, String)>,
) {
    let prepared = msg.prepared.map(|p| crate::finetune::job::Prepared {
        train_examples: p.train_examples as usize,
        eval_examples: p.eval_examples as usize,
        dropped: p.dropped as usize,
        target_tokens: p.target_tokens as usize,
        parameters: p.parameters as usize,
    });
    let progress = msg.progress.map(|p| crate::finetune::trainer::Progress {
        step: p.step as usize,
        total_steps: p.total_steps as usize,
        epoch: p.epoch,
        loss: p.loss,
        eval_loss: p.eval_loss,
        lr: p.lr,
        tokens_per_s: p.tokens_per_s,
        eta_s: p.eta_s,
    });
    let summary = msg.summary.map(|s| {
        let summary = crate::finetune::trainer::TrainSummary {
            steps: s.steps as usize,
            interrupted: s.interrupted,
            final_loss: s.final_loss,
            eval_losses: s.eval_losses,
            tokens_per_s: s.tokens_per_s,
            parameters: s.parameters as usize,
            peak_rss_bytes: s.peak_rss_bytes,
            out: std::path::PathBuf::from(&s.out),
        };
        (summary, s.adapter)
    });
    (prepared, progress, summary)
}
