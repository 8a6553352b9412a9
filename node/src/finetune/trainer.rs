//! The training loop: shuffled batches, gradient accumulation, AdamW with a
//! linearly decaying learning rate and gradient clipping (Hugging Face's
//! trainer defaults), an evaluation pass per epoch, `train_log.jsonl`, and
//! checkpoints that `--resume` continues from.
//!
//! Output directory layout:
//! - `adapter_config.json`, `adapter_model.safetensors`: the adapter (PEFT);
//! - `train_log.jsonl`: one line per step, one per evaluation;
//! - `checkpoint/`: the latest checkpoint (an adapter, `optimizer.safetensors`
//!   and `trainer_state.json`), written every `checkpoint_every` steps, at the
//!   end and when stopped, replaced atomically (written beside, then renamed).
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::data::Example;
use super::model::{LoraParams, SplitMix, TrainModel};
use super::optimizer::{accumulate, grad_norm, AdamW, AdamWConfig};
use super::FinetuneError;
use crate::model::adapter::peft::{self, SaveInfo};
use crate::model::adapter::Target;

/// How to train.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// LoRA rank.
    pub rank: usize,
    /// `lora_alpha`.
    pub alpha: f32,
    /// Dropout on the adapter's input.
    pub dropout: f32,
    /// Projections to wrap.
    pub targets: Vec<Target>,
    /// Passes over the data (used when `max_steps` is None).
    pub epochs: usize,
    /// Optimizer steps to run, whatever the epochs.
    pub max_steps: Option<usize>,
    /// Peak learning rate (decays linearly to 0).
    pub lr: f64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Gradient-norm clip (0: none).
    pub max_grad_norm: f64,
    /// Seed of the initialisation and the shuffles.
    pub seed: u64,
    /// Steps between checkpoints (0: only at the end).
    pub checkpoint_every: usize,
    /// Where the adapter, log and checkpoint go.
    pub out: PathBuf,
    /// Continue from `out/checkpoint`.
    pub resume: bool,
    /// `base_model_name_or_path` written into the adapter's config.
    pub base_name: String,
}

/// A report after each step or evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    /// Optimizer steps done.
    pub step: usize,
    /// Steps the run will take.
    pub total_steps: usize,
    /// Fractional epoch.
    pub epoch: f64,
    /// This step's mean training loss (None on an evaluation line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    /// Held-out loss (evaluation lines).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
    /// The step's learning rate.
    pub lr: f64,
    /// Training tokens (padding excluded) per second over the run so far.
    pub tokens_per_s: f64,
    /// Seconds left at this pace.
    pub eta_s: f64,
}

/// What a finished (or stopped) run did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainSummary {
    /// Optimizer steps done.
    pub steps: usize,
    /// Stopped early (Ctrl-C): the adapter and checkpoint hold the last step.
    pub interrupted: bool,
    /// Last step's training loss.
    pub final_loss: Option<f64>,
    /// Evaluation losses, one per evaluation, in order.
    pub eval_losses: Vec<f64>,
    /// Training tokens per second.
    pub tokens_per_s: f64,
    /// Trainable parameters.
    pub parameters: usize,
    /// Peak resident memory of the process (bytes), where the OS reports it.
    pub peak_rss_bytes: Option<u64>,
    /// Where the adapter is.
    pub out: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct TrainerState {
    step: usize,
    total_steps: usize,
    seed: u64,
}

/// Checkpoint folder inside `out`.
pub const CHECKPOINT_DIR: &str = "checkpoint";
/// The per-step log inside `out`.
pub const LOG_FILE: &str = "train_log.jsonl";

/// Trains an adapter on `train` (evaluating on `eval` after each epoch), calling
/// `progress` after every step and evaluation; `stop` (set by Ctrl-C) ends
/// the run after the current step with a checkpoint.
pub fn train(
    model: &TrainModel,
    train: &[Example],
    eval: &[Example],
    cfg: &TrainConfig,
    progress: &mut dyn FnMut(&Progress),
    stop: &AtomicBool,
) -> Result<TrainSummary, FinetuneError> {
    if train.is_empty() {
        return Err(FinetuneError::Data("no training examples".into()));
    }
    if cfg.rank == 0 || cfg.batch_size == 0 || cfg.grad_accum == 0 {
        return Err(FinetuneError::Config("--rank, --batch-size and --grad-accum must be at least 1".into()));
    }
    if !(0.0..1.0).contains(&cfg.dropout) {
        return Err(FinetuneError::Config("--dropout must be in [0, 1)".into()));
    }
    let per_step = cfg.batch_size * cfg.grad_accum;
    let steps_per_epoch = train.len().div_ceil(per_step);
    let total_steps = cfg.max_steps.unwrap_or(cfg.epochs.max(1) * steps_per_epoch).max(1);
    let ckpt = cfg.out.join(CHECKPOINT_DIR);
    let adam = AdamWConfig::default();
    let (params, mut opt, mut step) = if cfg.resume {
        let state: TrainerState = serde_json::from_str(
            &std::fs::read_to_string(ckpt.join("trainer_state.json"))
                .map_err(|e| FinetuneError::Io(format!("--resume: {}: {e}", ckpt.display())))?,
        )
        .map_err(|e| FinetuneError::Io(format!("--resume: trainer_state.json: {e}")))?;
        let adapter = peft::load(&ckpt, model.config())?;
        let params = LoraParams::from_adapter(&adapter, cfg.dropout)?;
        let opt = AdamW::load(&ckpt.join("optimizer.safetensors"), &params.vars(), adam)?;
        (params, opt, state.step)
    } else {
        std::fs::create_dir_all(&cfg.out).map_err(|e| FinetuneError::Io(format!("{}: {e}", cfg.out.display())))?;
        let params = LoraParams::init(model.config(), &cfg.targets, cfg.rank, cfg.alpha, cfg.dropout, cfg.seed)?;
        let opt = AdamW::new(&params.vars(), adam)?;
        let _ = std::fs::remove_file(cfg.out.join(LOG_FILE));
        (params, opt, 0)
    };
    let vars = params.vars();
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cfg.out.join(LOG_FILE))
        .map_err(|e| FinetuneError::Io(format!("{}: {e}", cfg.out.display())))?;
    let started = Instant::now();
    let first_step = step;
    let mut tokens = 0usize;
    let mut summary = TrainSummary {
        steps: step,
        interrupted: false,
        final_loss: None,
        eval_losses: Vec::new(),
        tokens_per_s: 0.0,
        parameters: params.parameter_count(),
        peak_rss_bytes: None,
        out: cfg.out.clone(),
    };
    while step < total_steps {
        if stop.load(Ordering::Relaxed) {
            summary.interrupted = true;
            break;
        }
        let epoch = step / steps_per_epoch;
        let order = shuffled(train.len(), cfg.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9));
        let at = (step % steps_per_epoch) * per_step;
        let picked: Vec<&Example> = order[at..(at + per_step).min(order.len())].iter().map(|&i| &train[i]).collect();
        let lr = cfg.lr * (1.0 - step as f64 / total_steps as f64);
        let mut grads: Option<candle_core::backprop::GradStore> = None;
        let mut loss_sum = 0f64;
        let micro: Vec<&[&Example]> = picked.chunks(cfg.batch_size).collect();
        for batch in &micro {
            let (ids, targets, weights, real) = batch_tensors(batch)?;
            tokens += real;
            let loss = model.loss(&ids, &targets, &weights, Some(&params), true)?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
            let g = loss.backward()?;
            match grads.as_mut() {
                Some(acc) => accumulate(acc, &g, &vars)?,
                None => grads = Some(g),
            }
        }
        let Some(grads) = grads else { break };
        let scale = 1.0 / micro.len() as f64;
        let norm = grad_norm(&vars, &grads, scale)?;
        let clip = if cfg.max_grad_norm > 0.0 && norm > cfg.max_grad_norm { cfg.max_grad_norm / norm } else { 1.0 };
        opt.step(&vars, &grads, scale * clip, lr)?;
        step += 1;
        let loss = loss_sum / micro.len() as f64;
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        let done = (step - first_step) as f64;
        let p = Progress {
            step,
            total_steps,
            epoch: step as f64 / steps_per_epoch as f64,
            loss: Some(loss),
            eval_loss: None,
            lr,
            tokens_per_s: tokens as f64 / secs,
            eta_s: secs / done * (total_steps - step) as f64,
        };
        write_line(&mut log, &p)?;
        progress(&p);
        summary.final_loss = Some(loss);
        let epoch_end = step % steps_per_epoch == 0 || step == total_steps;
        if epoch_end && !eval.is_empty() {
            let e = evaluate(model, &params, eval, cfg.batch_size)?;
            let p = Progress { loss: None, eval_loss: Some(e), ..p };
            write_line(&mut log, &p)?;
            progress(&p);
            summary.eval_losses.push(e);
        }
        if cfg.checkpoint_every > 0 && step % cfg.checkpoint_every == 0 && step < total_steps {
            save_checkpoint(model, &params, &opt, cfg, step, total_steps)?;
        }
    }
    save_checkpoint(model, &params, &opt, cfg, step, total_steps)?;
    summary.steps = step;
    summary.tokens_per_s = tokens as f64 / started.elapsed().as_secs_f64().max(1e-9);
    summary.peak_rss_bytes = peak_rss();
    Ok(summary)
}

/// Writes the checkpoint beside the old one and swaps it in (a crash leaves
/// one whole checkpoint), then the adapter itself into `out`.
fn save_checkpoint(
    model: &TrainModel,
    params: &LoraParams,
    opt: &AdamW,
    cfg: &TrainConfig,
    step: usize,
    total_steps: usize,
) -> Result<(), FinetuneError> {
    let adapter = params.to_adapter()?;
    let info = SaveInfo { dropout: cfg.dropout, base: cfg.base_name.clone() };
    let ckpt = cfg.out.join(CHECKPOINT_DIR);
    let tmp = cfg.out.join(format!("{CHECKPOINT_DIR}.tmp"));
    let io = |e: std::io::Error, p: &Path| FinetuneError::Io(format!("{}: {e}", p.display()));
    let _ = std::fs::remove_dir_all(&tmp);
    peft::save(&adapter, model.config(), &tmp, &info)?;
    opt.save(&tmp.join("optimizer.safetensors"))?;
    let state = TrainerState { step, total_steps, seed: cfg.seed };
    let text = serde_json::to_string(&state).map_err(|e| FinetuneError::Io(e.to_string()))?;
    std::fs::write(tmp.join("trainer_state.json"), text).map_err(|e| io(e, &tmp))?;
    let old = cfg.out.join(format!("{CHECKPOINT_DIR}.old"));
    let _ = std::fs::remove_dir_all(&old);
    if ckpt.exists() {
        std::fs::rename(&ckpt, &old).map_err(|e| io(e, &ckpt))?;
    }
    std::fs::rename(&tmp, &ckpt).map_err(|e| io(e, &ckpt))?;
    let _ = std::fs::remove_dir_all(&old);
    peft::save(&adapter, model.config(), &cfg.out, &info)?;
    Ok(())
}

fn write_line(log: &mut std::fs::File, p: &Progress) -> Result<(), FinetuneError> {
    let line = serde_json::to_string(p).map_err(|e| FinetuneError::Io(e.to_string()))?;
    writeln!(log, "{line}").map_err(|e| FinetuneError::Io(format!("train_log.jsonl: {e}")))
}

/// Mean held-out loss (no dropout, no gradient).
pub fn evaluate(model: &TrainModel, params: &LoraParams, eval: &[Example], batch: usize) -> Result<f64, FinetuneError> {
    let mut sum = 0f64;
    let mut n = 0usize;
    for chunk in eval.chunks(batch.max(1)) {
        let (ids, targets, weights, _) = batch_tensors(&chunk.iter().collect::<Vec<_>>())?;
        sum += model.loss(&ids, &targets, &weights, Some(params), false)?.to_scalar::<f32>()? as f64;
        n += 1;
    }
    Ok(sum / n.max(1) as f64)
}

/// Inputs (`ids[..len-1]`), next-token targets and weights of a padded
/// batch, and its real (unpadded) token count. Padding sits at the end, where
/// causal attention keeps it from touching real tokens, with weight 0.
fn batch_tensors(batch: &[&Example]) -> Result<(Tensor, Tensor, Tensor, usize), FinetuneError> {
    let len = batch.iter().map(|e| e.ids.len()).max().unwrap_or(0).saturating_sub(1).max(1);
    let (mut ids, mut targets, mut weights) = (Vec::new(), Vec::new(), Vec::new());
    let mut real = 0;
    for e in batch {
        for i in 0..len {
            ids.push(e.ids.get(i).copied().unwrap_or(0));
            targets.push(e.ids.get(i + 1).copied().unwrap_or(0));
            weights.push(if i + 1 < e.ids.len() { e.weights[i + 1] } else { 0.0 });
        }
        real += e.ids.len().saturating_sub(1);
    }
    let shape = (batch.len(), len);
    Ok((
        Tensor::from_vec(ids, shape, &Device::Cpu)?,
        Tensor::from_vec(targets, shape, &Device::Cpu)?,
        Tensor::from_vec(weights, shape, &Device::Cpu)?,
        real,
    ))
}

/// 0..n in a seeded random order (Fisher–Yates).
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = SplitMix(seed);
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// The process's peak resident set (Linux `VmHWM`).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
