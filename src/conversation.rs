//! `tessera ask`, `tessera chat` and `tessera sessions`: the RAG chain from the
//! command line.
use std::io::{BufRead, Write};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use tessera_proto::v1 as pb;

use crate::client::{connect, parse_filters, rpc};
use crate::{Mode, ServerArg};

/// How the answer is parsed.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq)]
pub enum OutputKind {
    Text,
    Json,
    List,
    Regex,
}

/// Which part of the session history goes into the prompt.
#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum MemoryArg {
    Buffer,
    Window,
    Tokens,
    Summary,
}

/// What `ask` and `chat` share.
#[derive(Args, Debug, Clone)]
pub struct AskOptions {
    /// Collection to retrieve from.
    #[arg(long)]
    collection: String,
    /// Which served model answers (see `tessera status`); default: the first.
    #[arg(long, default_value = "")]
    model: String,
    /// Session id: history is kept under it (across restarts) and used for follow-ups.
    #[arg(long)]
    session: Option<String>,
    /// Chunks to retrieve (default 4).
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    /// Retrieval ranking.
    #[arg(long, value_enum, default_value = "vector")]
    mode: Mode,
    /// Metadata filter KEY=VALUE (as in `search`).
    #[arg(long = "filter", value_name = "KEY=VALUE")]
    filters: Vec<String>,
    /// Prompt template name (default "qa"; the server loads more with --templates).
    #[arg(long)]
    template: Option<String>,
    /// Extra template variable NAME=VALUE (repeatable).
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<String>,
    /// Output parser.
    #[arg(long, value_enum, default_value = "text")]
    output: OutputKind,
    /// JSON Schema for --output json: inline JSON or a file path. The answer
    /// is generated under it, so it always validates (unless max_tokens ends it).
    #[arg(long, visible_alias = "json-schema", value_name = "FILE")]
    schema: Option<String>,
    /// Regex for --output regex.
    #[arg(long)]
    pattern: Option<String>,
    /// Memory kind (default: the server's, window of 4 turns).
    #[arg(long, value_enum)]
    memory: Option<MemoryArg>,
    /// Turns for window/summary memory.
    #[arg(long, default_value_t = 0)]
    window: u32,
    /// Token budget for tokens memory.
    #[arg(long, default_value_t = 0)]
    memory_tokens: u32,
    /// Most answer tokens (default 256).
    #[arg(long, default_value_t = 0)]
    max_tokens: u32,
    /// Sampling temperature (default 0: greedy).
    #[arg(long, allow_hyphen_values = true)]
    temperature: Option<f32>,
    /// Random seed.
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    server: ServerArg,
}

/// Arguments of `tessera ask`.
#[derive(Args, Debug)]
pub struct AskArgs {
    #[command(flatten)]
    opts: AskOptions,
    /// Print {"answer","sources":[{"doc_id","chunk_id","score"}],"session",...} at the end
    /// (the streamed answer then goes to stderr, so stdout is one JSON object).
    #[arg(long)]
    json: bool,
    /// The question.
    question: String,
}

/// Arguments of `tessera chat`.
#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    opts: AskOptions,
}

#[derive(Subcommand, Debug)]
pub enum SessionsCmd {
    /// List stored sessions.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Show a session's messages, oldest first.
    Show {
        /// Session id.
        id: String,
        /// Print {"session","messages":[{"role","content"}],"summary"}.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Delete a session's history.
    Clear {
        /// Session id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArg,
    },
}

fn parse_vars(vars: &[String]) -> anyhow::Result<std::collections::HashMap<String, String>> {
    vars.iter()
        .map(|v| {
            v.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--var '{v}' is not NAME=VALUE"))
        })
        .collect()
}

fn request(o: &AskOptions, question: String, session: Option<String>) -> anyhow::Result<pb::AskRequest> {
    let schema_json = match &o.schema {
        None => String::new(),
        Some(s) => crate::client::schema_text(s)?,
    };
    let kind = match o.output {
        OutputKind::Text => "text",
        OutputKind::Json => "json",
        OutputKind::List => "list",
        OutputKind::Regex => "regex",
    };
    let memory = o.memory.map(|m| pb::MemorySpec {
        kind: match m {
            MemoryArg::Buffer => "buffer",
            MemoryArg::Window => "window",
            MemoryArg::Tokens => "tokens",
            MemoryArg::Summary => "summary",
        }
        .into(),
        window: o.window,
        max_tokens: o.memory_tokens,
    });
    let mode = pb::SearchMode::from(o.mode);
    Ok(pb::AskRequest {
        collection: o.collection.clone(),
        session: session.unwrap_or_default(),
        question,
        top_k: o.top_k,
        mode: mode as i32,
        filter: parse_filters(&o.filters)?,
        template: o.template.clone().unwrap_or_default(),
        output: Some(pb::OutputSpec { kind: kind.into(), schema_json, pattern: o.pattern.clone().unwrap_or_default() }),
        memory,
        max_tokens: o.max_tokens,
        temperature: o.temperature,
        seed: o.seed,
        variables: parse_vars(&o.vars)?,
        model: o.model.clone(),
        ..Default::default()
    })
}

/// Runs one ask, streaming text to `out`; returns the result.
async fn run_ask(
    c: &mut crate::client::Client,
    req: pb::AskRequest,
    out: &mut dyn Write,
) -> anyhow::Result<pb::AskResult> {
    let mut stream = rpc(c.ask(req).await)?;
    loop {
        match stream.message().await {
            Ok(Some(chunk)) => {
                out.write_all(chunk.text.as_bytes())?;
                out.flush()?;
                if let Some(result) = chunk.result {
                    writeln!(out)?;
                    return Ok(result);
                }
            }
            Ok(None) => bail!("the stream ended without a result"),
            Err(s) => {
                writeln!(out)?;
                bail!("{:?}: {}", s.code(), s.message())
            }
        }
    }
}

fn result_json(r: &pb::AskResult) -> Value {
    let sources: Vec<Value> =
        r.sources.iter().map(|s| json!({"doc_id": s.doc_id, "chunk_id": s.chunk_id, "score": s.score})).collect();
    let t = r.timings.unwrap_or_default();
    let usage = r.usage.unwrap_or_default();
    let mut v = json!({
        "answer": r.answer,
        "sources": sources,
        "session": r.session,
        "standalone_question": r.standalone_question,
        "finish_reason": r.finish_reason,
        "history_messages": r.history_messages,
        "context_chunks": r.context_chunks,
        "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens},
        "timings_ms": {"condense": t.condense_ms, "embed": t.embed_ms, "search": t.search_ms, "prompt": t.prompt_ms,
                       "first_token": t.first_token_ms, "generate": t.generate_ms, "total": t.total_ms},
    });
    if !r.parsed_json.is_empty() {
        v["parsed"] = serde_json::from_str(&r.parsed_json).unwrap_or(Value::Null);
    }
    v
}

fn print_sources(r: &pb::AskResult) {
    let list: Vec<String> = r.sources.iter().map(|s| format!("{} ({:.3})", s.chunk_id, s.score)).collect();
    eprintln!("sources: {}", if list.is_empty() { "none".to_string() } else { list.join(", ") });
}

pub async fn ask(args: AskArgs) -> anyhow::Result<()> {
    let req = request(&args.opts, args.question, args.opts.session.clone())?;
    let mut c = connect(&args.opts.server).await?;
    let structured = args.opts.output != OutputKind::Text;
    // stdout carries exactly one thing: the JSON result, the parsed value, or the streamed answer.
    let result = if args.json || structured {
        run_ask(&mut c, req, &mut std::io::stderr()).await?
    } else {
        run_ask(&mut c, req, &mut std::io::stdout()).await?
    };
    if args.json {
        println!("{}", result_json(&result));
    } else {
        if structured {
            println!("{}", result.parsed_json);
        }
        print_sources(&result);
    }
    Ok(())
}

pub async fn chat(args: ChatArgs) -> anyhow::Result<()> {
    let session = args.opts.session.clone().unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        format!("chat-{t}")
    });
    let mut c = connect(&args.opts.server).await?;
    eprintln!("session {session}: ask a question; /history, /clear, /exit");
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        let Some(line) = lines.next() else { break };
        let line = line?;
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => break,
            "/clear" => {
                let r = rpc(c.clear_session(pb::ClearSessionRequest { session: session.clone() }).await)?;
                eprintln!("cleared {} messages", r.messages);
                continue;
            }
            "/history" => {
                match c.get_session(pb::GetSessionRequest { session: session.clone() }).await {
                    Ok(s) => {
                        for m in s.into_inner().messages {
                            println!("{}: {}", m.role, m.content);
                        }
                    }
                    Err(s) if s.code() == tonic::Code::NotFound => eprintln!("(no history yet)"),
                    Err(s) => eprintln!("error: {:?}: {}", s.code(), s.message()),
                }
                continue;
            }
            _ => {}
        }
        let req = request(&args.opts, line.to_string(), Some(session.clone()))?;
        match run_ask(&mut c, req, &mut std::io::stdout()).await {
            Ok(result) => print_sources(&result),
            // One failed question does not end the conversation.
            Err(e) => eprintln!("error: {e:#}"),
        }
    }
    Ok(())
}

pub async fn sessions(cmd: SessionsCmd) -> anyhow::Result<()> {
    match cmd {
        SessionsCmd::List { json, server } => {
            let mut c = connect(&server).await?;
            // Every page, in id order (bounded: a token that does not advance ends it).
            let mut list = pb::ListSessionsResponse::default();
            let mut token = String::new();
            for _ in 0..100_000 {
                let page = rpc(c
                    .list_sessions(pb::ListSessionsRequest {
                        page_size: 1000,
                        page_token: token.clone(),
                        ..Default::default()
                    })
                    .await)?;
                list.sessions.extend(page.sessions);
                if page.next_page_token.is_empty() || page.next_page_token == token {
                    break;
                }
                token = page.next_page_token;
            }
            if json {
                let items: Vec<Value> = list
                    .sessions
                    .iter()
                    .map(
                        |s| json!({"session": s.session, "messages": s.messages, "updated_unix_ms": s.updated_unix_ms}),
                    )
                    .collect();
                println!("{}", json!({ "sessions": items }));
            } else if list.sessions.is_empty() {
                println!("no sessions");
            } else {
                println!("{:<32} {:>8}", "SESSION", "MESSAGES");
                for s in list.sessions {
                    println!("{:<32} {:>8}", s.session, s.messages);
                }
            }
        }
        SessionsCmd::Show { id, json, server } => {
            let mut c = connect(&server).await?;
            let s = rpc(c.get_session(pb::GetSessionRequest { session: id }).await)?;
            if json {
                let messages: Vec<Value> =
                    s.messages.iter().map(|m| json!({"role": m.role, "content": m.content})).collect();
                println!("{}", json!({"session": s.session, "messages": messages, "summary": s.summary}));
            } else {
                if !s.summary.is_empty() {
                    println!("(summary) {}", s.summary);
                }
                for m in s.messages {
                    println!("{}: {}", m.role, m.content);
                }
            }
        }
        SessionsCmd::Clear { id, json, server } => {
            let mut c = connect(&server).await?;
            let r = rpc(c.clear_session(pb::ClearSessionRequest { session: id.clone() }).await)?;
            if json {
                println!("{}", json!({"session": id, "cleared": r.cleared, "messages": r.messages}));
            } else {
                println!("cleared session {id} ({} messages)", r.messages);
            }
        }
    }
    Ok(())
}
