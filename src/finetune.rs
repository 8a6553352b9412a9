//! `tessera finetune`: trains a LoRA adapter of the served base on this
//! machine (`--data`), or as a job on a model node (`--server`, and always
//! for `--collection`, whose chunks live in the cluster), showing step,
//! loss, tokens/s and ETA (a bar on a terminal, lines otherwise, JSON lines
//! with `--json`). Ctrl-C stops after the current step with a checkpoint.
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tessera_node::finetune::job::{FinetuneJob, Prepared, TrainingData};
use tessera_node::finetune::model::Precision;
use tessera_node::finetune::trainer::{Progress, TrainConfig, TrainSummary};
use tessera_node::model::adapter::Target;
use tessera_proto::v1 as pb;

use crate::client::{connect, rpc, status_error};
use crate::ServerArg;

/// See the module documentation.
#[derive(Args, Debug)]
pub(crate) struct FinetuneArgs {
    /// JSON Lines: {"messages":[{"role","content"},...]} or {"prompt","completion"} per line.
    #[arg(long, conflicts_with = "collection", required_unless_present = "collection")]
    data: Option<PathBuf>,
    /// Train next-token on a collection's chunks (runs on the server).
    #[arg(long)]
    collection: Option<String>,
    /// Folder for the adapter (PEFT layout), train_log.jsonl and the checkpoint.
    #[arg(long)]
    out: PathBuf,
    /// The GGUF base (default: the served model, SmolLM2 under --models).
    #[arg(long)]
    base: Option<PathBuf>,
    /// Folder with the models (for the default base).
    #[arg(long, env = "TESSERA_MODELS", default_value = "./models")]
    models: PathBuf,
    /// LoRA rank.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    rank: u32,
    /// LoRA alpha (updates are scaled by alpha / rank).
    #[arg(long, default_value_t = 16.0)]
    alpha: f32,
    /// Dropout on the adapter's input while training.
    #[arg(long, default_value_t = 0.05)]
    dropout: f32,
    /// Projections to adapt: q, k, v, o, gate, up, down.
    #[arg(long, default_value = "q,k,v,o")]
    targets: String,
    /// Passes over the data.
    #[arg(long, default_value_t = 3, conflicts_with = "max_steps")]
    epochs: u32,
    /// Optimizer steps (instead of epochs).
    #[arg(long)]
    max_steps: Option<u32>,
    /// Peak learning rate (decays linearly to 0).
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    grad_accum: u32,
    /// Longest training sequence in tokens (longer ones are cut).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(2..))]
    max_seq_len: u32,
    /// Held-out JSON Lines evaluated after each epoch.
    #[arg(long, conflicts_with = "eval_split")]
    eval: Option<PathBuf>,
    /// Fraction of the data held out for evaluation (when --eval is absent).
    #[arg(long, default_value_t = 0.1)]
    eval_split: f32,
    /// Seed of the initialisation and the shuffles.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// The frozen base's products: bf16 on the AMX tiles with f32 sums
    /// (f32 where the CPU has no AMX), or f32 throughout.
    #[arg(long, value_parser = ["bf16", "f32"], default_value = "bf16")]
    precision: String,
    /// Steps between checkpoints (0: only at the end).
    #[arg(long, default_value_t = 50)]
    checkpoint_every: u32,
    /// Continue from --out's checkpoint.
    #[arg(long)]
    resume: bool,
    /// Print JSON lines (progress, then the summary) instead of text.
    #[arg(long)]
    json: bool,
    /// Run as a job on the cluster's model node instead of here.
    #[arg(long = "server", env = "TESSERA_SERVER")]
    server_url: Option<String>,
    /// API key (servers started with --api-keys).
    #[arg(long, env = "TESSERA_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// PEM CA of an https:// server.
    #[arg(long = "tls-ca", env = "TESSERA_TLS_CA")]
    tls_ca: Option<PathBuf>,
}

/// Progress on a terminal bar or as lines.
struct View {
    bar: Option<ProgressBar>,
    json: bool,
}

impl View {
    fn new(json: bool) -> Self {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        Self { bar, json }
    }

    fn prepared(&self, p: &Prepared) {
        let line = format!(
            "data: {} training and {} held-out sequences, {} tokens to learn, {} dropped; {} trainable parameters",
            p.train_examples, p.eval_examples, p.target_tokens, p.dropped, p.parameters
        );
        if self.json {
            println!(
                "{}",
                json!({"prepared": {"train_examples": p.train_examples, "eval_examples": p.eval_examples,
                        "target_tokens": p.target_tokens, "dropped": p.dropped, "parameters": p.parameters}})
            );
        } else {
            eprintln!("{line}");
        }
    }

    fn progress(&self, p: &Progress) {
        if self.json {
            println!("{}", json!({ "progress": p }));
            return;
        }
        let what = match (p.loss, p.eval_loss) {
            (_, Some(e)) => format!("eval loss {e:.4}"),
            (Some(l), None) => format!("loss {l:.4}"),
            _ => String::new(),
        };
        let msg = format!("{what} · {:.0} tok/s · ETA {}s", p.tokens_per_s, p.eta_s.round() as u64);
        match &self.bar {
            Some(bar) => {
                bar.set_length(p.total_steps as u64);
                bar.set_position(p.step as u64);
                bar.set_message(msg);
                if p.eval_loss.is_some() {
                    bar.println(format!("epoch {:.2}: {what}", p.epoch));
                }
            }
            None => eprintln!("step {}/{} epoch {:.2} {msg}", p.step, p.total_steps, p.epoch),
        }
    }

    fn done(&self, s: &TrainSummary) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if self.json {
            println!("{}", json!({ "summary": s }));
        } else {
            let state = if s.interrupted { "stopped (checkpoint kept; --resume continues)" } else { "done" };
            println!(
                "{state}: {} steps, final loss {}, eval losses {:?}, {:.0} tokens/s, peak memory {} MiB; adapter in {}",
                s.steps,
                s.final_loss.map_or("-".into(), |l| format!("{l:.4}")),
                s.eval_losses.iter().map(|l| (l * 1e4).round() / 1e4).collect::<Vec<_>>(),
                s.tokens_per_s,
                s.peak_rss_bytes.map_or("?".into(), |b| (b >> 20).to_string()),
                s.out.display()
            );
        }
    }
}

impl FinetuneArgs {
    fn train_config(&self, base_name: String) -> anyhow::Result<TrainConfig> {
        Ok(TrainConfig {
            rank: self.rank as usize,
            alpha: self.alpha,
            dropout: self.dropout,
            targets: Target::parse_list(&self.targets)?,
            epochs: self.epochs as usize,
            max_steps: self.max_steps.map(|s| s as usize),
            lr: self.lr,
            batch_size: self.batch_size as usize,
            grad_accum: self.grad_accum as usize,
            max_grad_norm: 1.0,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every as usize,
            out: self.out.clone(),
            resume: self.resume,
            base_name,
        })
    }

    fn request(&self) -> anyhow::Result<pb::FineTuneRequest> {
        let read = |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
        Ok(pb::FineTuneRequest {
            data_jsonl: self.data.as_ref().map(read).transpose()?.unwrap_or_default(),
            collection: self.collection.clone().unwrap_or_default(),
            out: self.out.display().to_string(),
            model: String::new(),
            rank: self.rank,
            alpha: self.alpha,
            dropout: self.dropout,
            targets: self.targets.clone(),
            epochs: self.epochs,
            max_steps: self.max_steps.unwrap_or(0),
            lr: self.lr,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            max_seq_len: self.max_seq_len,
            eval_jsonl: self.eval.as_ref().map(read).transpose()?.unwrap_or_default(),
            eval_split: self.eval_split,
            seed: self.seed,
            checkpoint_every: self.checkpoint_every,
            resume: self.resume,
            adapter_name: String::new(),
            texts: Vec::new(),
            precision: self.precision.clone(),
        })
    }
}

pub(crate) async fn finetune(args: FinetuneArgs) -> anyhow::Result<()> {
    if args.server_url.is_some() || args.collection.is_some() {
        return remote(args).await;
    }
    let base = args.base.clone().unwrap_or_else(|| args.models.join(tessera_node::node::DEFAULT_MODEL));
    anyhow::ensure!(
        base.exists(),
        "base model {} does not exist (run scripts/fetch-models.sh, or give --base)",
        base.display()
    );
    let data = args.data.as_ref().context("give --data FILE.jsonl or --collection NAME")?;
    tessera_node::finetune::keep_freed_memory();
    let text = std::fs::read_to_string(data).with_context(|| format!("reading {}", data.display()))?;
    let eval =
        args.eval.as_ref().map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())));
    let base_name = base.file_stem().and_then(|s| s.to_str()).unwrap_or("base").to_string();
    let job = FinetuneJob {
        base,
        data: TrainingData::Jsonl(text),
        eval: eval.transpose()?,
        eval_split: args.eval_split,
        max_seq_len: args.max_seq_len as usize,
        train: args.train_config(base_name)?,
        precision: if args.precision == "f32" { Precision::F32 } else { Precision::Bf16 },
    };
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("stopping after this step (Ctrl-C again to abort)");
            flag.store(true, Ordering::Relaxed);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let json = args.json;
    let summary = tokio::task::spawn_blocking(move || {
        let view = View::new(json);
        let s = job.run(&mut |p| view.prepared(p), &mut |p| view.progress(p), &stop);
        if let Ok(s) = &s {
            view.done(s);
        }
        s
    })
    .await??;
    if summary.interrupted {
        std::process::exit(130);
    }
    Ok(())
}

/// The job on the server: progress streamed back, the adapter written and
/// loaded there.
async fn remote(args: FinetuneArgs) -> anyhow::Result<()> {
    let server = ServerArg {
        server: args.server_url.clone().unwrap_or_else(|| "http://127.0.0.1:50051".into()),
        api_key: args.api_key.clone(),
        tls_ca: args.tls_ca.clone(),
    };
    let mut c = connect(&server).await?;
    let mut stream = rpc(c.fine_tune(args.request()?).await)?;
    let view = View::new(args.json);
    while let Some(msg) = stream.message().await.map_err(status_error)? {
        let (prepared, progress, summary) = tessera_node::convert::finetune_progress_from_pb(msg);
        if let Some(p) = prepared {
            view.prepared(&p);
        }
        if let Some(p) = progress {
            view.progress(&p);
        }
        if let Some((s, adapter)) = summary {
            view.done(&s);
            if !adapter.is_empty() {
                eprintln!("served as model '{adapter}' (see `tessera adapters list`)");
            }
        }
    }
    Ok(())
}
