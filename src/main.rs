//! `tessera`: one binary for the server roles and the command-line client.
mod adapters;
mod auth;
mod client;
mod cluster;
mod conversation;
mod finetune;
mod limit;
mod progress;
mod server;
mod telemetry;
mod tls;
mod walk;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Self-hosted LLM + retrieval: load, split, embed, store, search.
#[derive(Parser, Debug)]
#[command(name = "tessera", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Coordinator and one node in one process, no etcd (data in ./tessera-data).
    Up(server::UpArgs),
    /// Cluster mode: a node with some roles, registered in etcd.
    Node(cluster::NodeArgs),
    /// Cluster mode: the public API over the nodes registered in etcd (several may run).
    Coordinator(cluster::CoordinatorArgs),
    /// Nodes and where every shard lives.
    Status(cluster::StatusArgs),
    /// Checks that ARGS parse as a tessera command line and runs nothing (validates deployment manifests).
    #[command(hide = true)]
    CheckArgs {
        /// The arguments after `tessera`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Create, list and drop collections.
    #[command(subcommand)]
    Collections(CollectionsCmd),
    /// Load files and folders into a collection (created with defaults if missing).
    Ingest(IngestArgs),
    /// Delete documents by id.
    Delete(DeleteArgs),
    /// Search a collection.
    Search(SearchArgs),
    /// Generate text with the model, streamed to stdout (usage to stderr).
    Generate(GenerateArgs),
    /// Ask a question over a collection (retrieval + model), with session memory.
    Ask(conversation::AskArgs),
    /// Interactive ask loop over one session (/clear, /history, /exit).
    Chat(conversation::ChatArgs),
    /// List, show and clear chat sessions.
    #[command(subcommand)]
    Sessions(conversation::SessionsCmd),
    /// Train a LoRA adapter of the base model on your data (PEFT layout out).
    Finetune(finetune::FinetuneArgs),
    /// Load, unload and list the LoRA adapters the model nodes serve.
    #[command(subcommand)]
    Adapters(adapters::AdaptersCmd),
}

/// Where the client sends requests.
#[derive(Args, Debug, Clone)]
pub(crate) struct ServerArg {
    /// Coordinator gRPC URL.
    #[arg(long, env = "TESSERA_SERVER", default_value = "http://127.0.0.1:50051", global = true)]
    pub(crate) server: String,
    /// API key sent as `authorization: Bearer KEY` (servers started with --api-keys).
    #[arg(long, env = "TESSERA_API_KEY", global = true, hide_env_values = true)]
    pub(crate) api_key: Option<String>,
    /// PEM CA that signed the server's certificate (for https:// servers).
    #[arg(long = "tls-ca", env = "TESSERA_TLS_CA", global = true)]
    pub(crate) tls_ca: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
enum CollectionsCmd {
    /// Create a collection.
    Create {
        /// Collection name (ASCII letters, digits, '-', '_', '.').
        name: String,
        /// Number of shards.
        #[arg(long, default_value_t = 2)]
        shards: u32,
        /// Replicas per shard.
        #[arg(long, default_value_t = 1)]
        replication: u32,
        /// BM25 k1 (term-frequency saturation; default 1.2).
        #[arg(long)]
        bm25_k1: Option<f32>,
        /// BM25 b (length normalisation; default 0.75).
        #[arg(long)]
        bm25_b: Option<f32>,
        /// HNSW candidate list floor (default 128; at least 8 x top_k is used).
        #[arg(long)]
        hnsw_ef: Option<u32>,
        /// Shards with at most this many chunks are searched by a full int8 scan, re-scored in f32 (default 100000).
        #[arg(long)]
        exact_below: Option<u32>,
        /// Larger shards with at most this many chunks are searched by sign bits, then int8, then f32 (default 2000000); larger ones by HNSW.
        #[arg(long)]
        binary_below: Option<u32>,
        /// Vector storage, fixed for the collection's life: `none` (f32 in memory, HNSW for the largest shards) or `int8` (int8 codes and sign bits in memory, f32 originals read from disk to re-score; about a fifth of the vector memory, every search a scan).
        #[arg(long, default_value = "none")]
        quantization: tessera_types::Quantization,
        /// Hybrid: candidates from each side before fusion (default 50; at least 4 x top_k).
        #[arg(long)]
        fusion_depth: Option<u32>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List collections.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Drop a collection and its data.
    Drop {
        /// Collection name.
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
}

#[derive(Args, Debug)]
struct IngestArgs {
    /// Target collection.
    #[arg(long)]
    collection: String,
    /// Characters per chunk (word pieces with --splitter token).
    #[arg(long, default_value_t = 1000)]
    chunk_size: u32,
    /// Overlap between neighbouring chunks, same unit.
    #[arg(long, default_value_t = 200)]
    chunk_overlap: u32,
    /// Splitter: recursive (characters) or token (embedder word pieces).
    #[arg(long, default_value = "recursive")]
    splitter: String,
    /// Progress as JSON lines on stderr and the result as JSON on stdout
    /// (without it: a progress bar on a terminal, text lines otherwise).
    #[arg(long)]
    json: bool,
    /// Files and folders (folders are walked recursively).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Args, Debug)]
struct DeleteArgs {
    /// Collection.
    #[arg(long)]
    collection: String,
    /// Document ids.
    #[arg(required = true)]
    doc_ids: Vec<String>,
    #[command(flatten)]
    server: ServerArg,
}

/// `--mode` of search and ask (the names of `tessera_types::SearchMode`).
#[derive(ValueEnum, Debug, Clone, Copy)]
pub(crate) enum Mode {
    Vector,
    Bm25,
    Hybrid,
}

impl From<Mode> for tessera_proto::v1::SearchMode {
    fn from(m: Mode) -> Self {
        let mode = match m {
            Mode::Vector => tessera_types::SearchMode::Vector,
            Mode::Bm25 => tessera_types::SearchMode::Bm25,
            Mode::Hybrid => tessera_types::SearchMode::Hybrid,
        };
        mode.into()
    }
}

#[derive(Args, Debug)]
struct SearchArgs {
    /// Collection.
    #[arg(long)]
    collection: String,
    /// Number of hits.
    #[arg(long, default_value_t = 5)]
    top_k: u32,
    /// Metadata filter KEY=VALUE; repeat a key for one-of, different keys must all hold.
    #[arg(long = "filter", value_name = "KEY=VALUE")]
    filters: Vec<String>,
    /// Ranking: vector (cosine), bm25, or hybrid (reciprocal rank fusion).
    #[arg(long, value_enum, default_value = "vector")]
    mode: Mode,
    /// Drop hits scoring below this.
    #[arg(long)]
    min_score: Option<f32>,
    /// Re-rank for diversity with maximal marginal relevance.
    #[arg(long)]
    mmr: bool,
    /// Exact vector search, whatever the shard size.
    #[arg(long)]
    exact: bool,
    /// Hybrid: candidates from each side before fusion (default: the collection's).
    #[arg(long)]
    fusion_depth: Option<u32>,
    /// Print JSON: {"hits":[{"doc_id","chunk_id","score","text","metadata"}]}.
    #[arg(long)]
    json: bool,
    /// The query.
    query: String,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Args, Debug)]
struct GenerateArgs {
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    max_tokens: u32,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.7, allow_hyphen_values = true)]
    temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 0.95, allow_hyphen_values = true)]
    top_p: f32,
    /// Sample among the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    top_k: u32,
    /// Penalty for tokens already seen (1 = off).
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    repetition_penalty: f32,
    /// Random seed (same seed, same output); random when absent.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop before this text (repeatable).
    #[arg(long = "stop", value_name = "STR")]
    stop: Vec<String>,
    /// Send the prompt as is (special tokens such as <|im_start|> recognised) instead of as one chat message.
    #[arg(long)]
    raw: bool,
    /// Which served model answers (see `tessera status`); default: the first.
    #[arg(long, default_value = "")]
    model: String,
    /// Constrain the output to JSON valid against this JSON Schema (a file,
    /// or inline JSON starting with `{`).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["regex", "choice"])]
    json_schema: Option<String>,
    /// Constrain the output to a whole match of this regex.
    #[arg(long, conflicts_with = "choice")]
    regex: Option<String>,
    /// Constrain the output to exactly one of these strings (repeatable).
    #[arg(long = "choice", value_name = "TEXT")]
    choice: Vec<String>,
    /// The prompt.
    prompt: String,
    #[command(flatten)]
    server: ServerArg,
}

/// Parses `host:port` for listen addresses, with a clear error.
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|e| format!("'{s}' is not an address like 127.0.0.1:50051: {e}"))
}

fn main() {
    // The loader sandbox: this binary re-run as a one-file parser, before any
    // runtime, thread or argument parsing exists in the child.
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some(tessera_node::load::sandbox::SANDBOX_ARG) {
        std::process::exit(tessera_node::load::sandbox::child_main(&args.next().unwrap_or_default()));
    }
    // Serving parks candle's threads between products (they would hold a
    // core the rank's own pool needs); a local fine-tune runs candle's
    // elementwise ops back to back, where spinning between them is ~10 %
    // faster (measured, 4 x 128 tokens).
    if std::env::args().nth(1).as_deref() != Some("finetune") {
        tessera_node::model::engine::park_candle_threads_between_matmuls();
    }
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::CheckArgs { args } = &cli.command {
        Cli::try_parse_from(std::iter::once("tessera".to_string()).chain(args.iter().cloned())).map_err(|e| {
            let text = e.to_string();
            anyhow::anyhow!("{}", text.trim_start_matches("error: ").trim_end())
        })?;
        println!("ok");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => server::up(args).await,
            Command::Node(args) => cluster::node(args).await,
            Command::Coordinator(args) => cluster::coordinator(args).await,
            Command::Status(args) => cluster::status(args).await,
            Command::CheckArgs { .. } => Ok(()),
            Command::Collections(cmd) => client::collections(cmd).await,
            Command::Ingest(args) => client::ingest(args).await,
            Command::Delete(args) => client::delete(args).await,
            Command::Search(args) => client::search(args).await,
            Command::Generate(args) => client::generate(args).await,
            Command::Ask(args) => conversation::ask(args).await,
            Command::Chat(args) => conversation::chat(args).await,
            Command::Sessions(cmd) => conversation::sessions(cmd).await,
            Command::Finetune(args) => finetune::finetune(args).await,
            Command::Adapters(cmd) => adapters::adapters(cmd).await,
        }
    })
}
