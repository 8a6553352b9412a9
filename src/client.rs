//! The command-line client: each command is one or a few `Tessera` RPCs.
use std::collections::BTreeMap;

use anyhow::{bail, Context};
use serde_json::{json, Value};
use tessera_proto::v1 as pb;
use tessera_proto::v1::tessera_client::TesseraClient;
use tessera_types::limits::MAX_MESSAGE_BYTES;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;

use crate::progress::IngestProgress;
use crate::walk::expand;
use crate::{CollectionsCmd, DeleteArgs, GenerateArgs, IngestArgs, SearchArgs, ServerArg};

/// Files per ingest request, and bytes per request (below the server's `MAX_MESSAGE_BYTES`).
const FILES_PER_REQUEST: usize = 32;
const BYTES_PER_REQUEST: usize = 16 * 1024 * 1024;

/// The CLI's client: every request carries the API key, when one is given.
pub(crate) type Client = TesseraClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer KEY` to each request.
#[derive(Clone)]
pub(crate) struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert("authorization", value.clone());
        }
        Ok(req)
    }
}

pub(crate) async fn connect(server: &ServerArg) -> anyhow::Result<Client> {
    let url = &server.server;
    let mut endpoint =
        tonic::transport::Endpoint::from_shared(url.clone()).with_context(|| format!("invalid server URL {url}"))?;
    if url.starts_with("https://") {
        let ca = server.tls_ca.as_ref().with_context(|| {
            format!("{url} is https: give --tls-ca (or TESSERA_TLS_CA), the CA that signed the server's certificate")
        })?;
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem));
        endpoint = endpoint.tls_config(tls).context("TLS settings")?;
    }
    let channel = endpoint.connect().await.with_context(|| {
        format!("cannot reach the Tessera server at {url} (is `tessera up` running? set --server or TESSERA_SERVER)")
    })?;
    let bearer = match &server.api_key {
        Some(key) => Some(
            format!("Bearer {key}").parse::<MetadataValue<Ascii>>().context("the API key must be printable ASCII")?,
        ),
        None => None,
    };
    Ok(TesseraClient::with_interceptor(channel, Bearer(bearer))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Turns a gRPC status into a one-line error.
pub(crate) fn rpc<T>(r: Result<tonic::Response<T>, tonic::Status>) -> anyhow::Result<T> {
    r.map(tonic::Response::into_inner).map_err(status_error)
}

/// A status as the one-line error `rpc` prints.
pub(crate) fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

pub async fn collections(cmd: CollectionsCmd) -> anyhow::Result<()> {
    match cmd {
        CollectionsCmd::Create {
            name,
            shards,
            replication,
            bm25_k1,
            bm25_b,
            hnsw_ef,
            exact_below,
            binary_below,
            fusion_depth,
            quantization,
            server,
        } => {
            let mut c = connect(&server).await?;
            // An absent flag is an absent field: the server's default.
            let settings = pb::SearchSettings { bm25_k1, bm25_b, hnsw_ef, exact_below, binary_below, fusion_depth };
            let request = pb::CreateCollectionRequest {
                name,
                shards,
                replication,
                settings: Some(settings),
                quantization: quantization.to_string(),
            };
            let info = rpc(c.create_collection(request).await)?;
            println!(
                "created collection {} ({} shards, replication {}, dimension {}, quantization {})",
                info.name, info.shards, info.replication, info.dimension, info.quantization
            );
        }
        CollectionsCmd::List { json, server } => {
            let mut c = connect(&server).await?;
            let list = rpc(c.list_collections(pb::ListCollectionsRequest {}).await)?;
            if json {
                let items: Vec<Value> = list
                    .collections
                    .iter()
                    .map(|c| json!({"name": c.name, "shards": c.shards, "replication": c.replication, "dimension": c.dimension,
                                    "metric": c.metric, "embedder": c.embedder, "documents": c.documents, "chunks": c.chunks,
                                    "quantization": c.quantization}))
                    .collect();
                println!("{}", json!({ "collections": items }));
            } else if list.collections.is_empty() {
                println!("no collections");
            } else {
                println!(
                    "{:<24} {:>6} {:>5} {:>10} {:>10} {:>6}",
                    "NAME", "SHARDS", "REPL", "DOCUMENTS", "CHUNKS", "QUANT"
                );
                for c in list.collections {
                    println!(
                        "{:<24} {:>6} {:>5} {:>10} {:>10} {:>6}",
                        c.name, c.shards, c.replication, c.documents, c.chunks, c.quantization
                    );
                }
            }
        }
        CollectionsCmd::Drop { name, server } => {
            let mut c = connect(&server).await?;
            rpc(c.drop_collection(pb::DropCollectionRequest { name: name.clone() }).await)?;
            println!("dropped collection {name}");
        }
    }
    Ok(())
}

pub async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    let (files, unsupported) = expand(&args.paths).map_err(anyhow::Error::msg)?;
    let mut errors: Vec<(String, String)> = unsupported
        .iter()
        .map(|p| {
            (
                p.display().to_string(),
                "unsupported file type (supported: txt, md, html, json, jsonl, csv, pdf)".to_string(),
            )
        })
        .collect();
    let mut client = connect(&args.server).await?;
    let bytes_total: u64 = files.iter().filter_map(|f| std::fs::metadata(&f.path).ok()).map(|m| m.len()).sum();
    let mut progress = IngestProgress::new(files.len() as u64, bytes_total, args.json);
    let (mut documents, mut chunks) = (0u64, 0u64);
    let mut batch: Vec<pb::FileInput> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut pending = files.into_iter().peekable();
    while let Some(f) = pending.next() {
        match std::fs::read(&f.path) {
            Ok(content) => {
                batch_bytes += content.len();
                let name = f.path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                let metadata = json!({ "path": f.path.display().to_string() }).to_string();
                batch.push(pb::FileInput { name, doc_id: f.doc_id, content, metadata_json: metadata });
            }
            Err(e) => errors.push((f.path.display().to_string(), e.to_string())),
        }
        let full = batch.len() >= FILES_PER_REQUEST || batch_bytes >= BYTES_PER_REQUEST;
        if !batch.is_empty() && (full || pending.peek().is_none()) {
            let request = pb::IngestRequest {
                collection: args.collection.clone(),
                files: std::mem::take(&mut batch),
                documents: vec![],
                chunk_size: args.chunk_size,
                chunk_overlap: args.chunk_overlap,
                splitter: args.splitter.clone(),
            };
            let files_in_request = request.files.len() as u64;
            progress.request_started(batch_bytes as u64);
            batch_bytes = 0;
            let mut stream = rpc(client.ingest_stream(request).await)?;
            let mut done = None;
            while let Some(message) = stream.message().await.map_err(status_error)? {
                match message.done {
                    Some(resp) => done = Some(resp),
                    None => progress.update(message),
                }
            }
            let resp = done.context("the server ended the ingest stream without a result")?;
            documents += resp.documents;
            chunks += resp.chunks;
            progress.request_done(files_in_request, resp.chunks);
            errors.extend(resp.errors.into_iter().map(|e| (e.source, e.message)));
        }
    }
    progress.finish();
    if args.json {
        let errors: Vec<Value> = errors.iter().map(|(s, m)| json!({"source": s, "message": m})).collect();
        println!(
            "{}",
            json!({"collection": args.collection, "documents": documents, "chunks": chunks, "errors": errors})
        );
    } else {
        for (source, message) in &errors {
            eprintln!("error: {source}: {message}");
        }
        println!(
            "stored {documents} documents, {chunks} chunks in '{}'{}",
            args.collection,
            if errors.is_empty() { String::new() } else { format!("; {} files failed", errors.len()) }
        );
    }
    if !errors.is_empty() {
        std::process::exit(if documents > 0 { 2 } else { 1 });
    }
    Ok(())
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let mut c = connect(&args.server).await?;
    let resp = rpc(c.delete(pb::DeleteRequest { collection: args.collection, doc_ids: args.doc_ids }).await)?;
    println!("deleted {} documents, {} chunks", resp.documents, resp.chunks);
    Ok(())
}

/// `KEY=VALUE` pairs, grouped by key into one-of conditions.
pub(crate) fn parse_filters(filters: &[String]) -> anyhow::Result<Option<pb::Filter>> {
    if filters.is_empty() {
        return Ok(None);
    }
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in filters {
        let Some((k, v)) = f.split_once('=') else { bail!("filter '{f}' is not KEY=VALUE") };
        if k.is_empty() {
            bail!("filter '{f}' has an empty key");
        }
        by_key.entry(k.to_string()).or_default().push(json!(v).to_string());
    }
    Ok(Some(pb::Filter {
        must: by_key.into_iter().map(|(key, values_json)| pb::FilterCondition { key, values_json }).collect(),
    }))
}

pub async fn search(args: SearchArgs) -> anyhow::Result<()> {
    let filter = parse_filters(&args.filters)?;
    let mode = pb::SearchMode::from(args.mode);
    let mut c = connect(&args.server).await?;
    let resp = rpc(c
        .search(pb::SearchRequest {
            collection: args.collection,
            query: args.query,
            top_k: args.top_k,
            filter,
            mode: mode as i32,
            min_score: args.min_score,
            mmr: args.mmr,
            mmr_lambda: 0.0,
            fetch_k: 0,
            exact: args.exact,
            fusion_depth: args.fusion_depth.unwrap_or(0),
        })
        .await)?;
    if args.json {
        let hits: Vec<Value> = resp
            .hits
            .iter()
            .map(|h| {
                let metadata: Value = serde_json::from_str(&h.metadata_json).unwrap_or(Value::Null);
                json!({"doc_id": h.doc_id, "chunk_id": h.chunk_id, "score": h.score, "text": h.text, "metadata": metadata})
            })
            .collect();
        println!("{}", json!({ "hits": hits }));
    } else if resp.hits.is_empty() {
        println!("no hits");
    } else {
        for (i, h) in resp.hits.iter().enumerate() {
            let snippet: String = h.text.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(160).collect();
            println!("{}. [{:.4}] {}\n   {}", i + 1, h.score, h.chunk_id, snippet);
        }
    }
    Ok(())
}

/// A schema argument: inline JSON (starts with `{`) or a file path.
pub(crate) fn schema_text(arg: &str) -> anyhow::Result<String> {
    if arg.trim_start().starts_with('{') {
        return Ok(arg.to_string());
    }
    std::fs::read_to_string(arg).with_context(|| format!("reading JSON schema {arg}"))
}

/// The output constraint `tessera generate` was given, if any.
fn generate_constraint(args: &GenerateArgs) -> anyhow::Result<Option<pb::OutputConstraint>> {
    use pb::output_constraint::Kind;
    let kind = if let Some(s) = &args.json_schema {
        Kind::JsonSchema(schema_text(s)?)
    } else if let Some(r) = &args.regex {
        Kind::Regex(r.clone())
    } else if !args.choice.is_empty() {
        Kind::Choice(pb::ChoiceConstraint { options: args.choice.clone() })
    } else {
        return Ok(None);
    };
    Ok(Some(pb::OutputConstraint { kind: Some(kind) }))
}

pub async fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let constraint = generate_constraint(&args)?;
    let mut c = connect(&args.server).await?;
    let request = pb::GenerateRequest {
        prompt: args.prompt,
        messages: vec![],
        raw: args.raw,
        max_tokens: args.max_tokens,
        temperature: Some(args.temperature),
        top_p: Some(args.top_p),
        top_k: Some(args.top_k),
        repetition_penalty: Some(args.repetition_penalty),
        seed: args.seed,
        stop: args.stop,
        model: args.model,
        constraint,
    };
    let mut stream = rpc(c.generate(request).await)?;
    let mut out = std::io::stdout();
    loop {
        match stream.message().await {
            Ok(Some(chunk)) => {
                out.write_all(chunk.text.as_bytes())?;
                out.flush()?;
                if !chunk.finish_reason.is_empty() {
                    let usage = chunk.usage.unwrap_or_default();
                    writeln!(out)?;
                    eprintln!(
                        "prompt_tokens={} completion_tokens={} finish_reason={}",
                        usage.prompt_tokens, usage.completion_tokens, chunk.finish_reason
                    );
                    return Ok(());
                }
            }
            Ok(None) => bail!("the stream ended without a finish reason"),
            Err(s) => bail!("{:?}: {}", s.code(), s.message()),
        }
    }
}
