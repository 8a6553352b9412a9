//! POST /v1/chat/completions and POST /v1/completions.
//!
//! Both turn into a stream of [`Piece`]s, from the model directly or, when the
//! request names a `collection`, from the ask chain; the handler then either
//! collects them into one response or sends them as server-sent events.
use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::stream::{self, Stream, StreamExt};
use serde_json::{json, Value};
use tessera_proto::v1 as pb;
use tessera_types::{ChatMessage, Role, SearchMode};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::wire::{ChatRequest, CompletionRequest, Content, Prompt, SourceOut, Usage};
use super::{new_id, parse_body, unix_now, ApiError, ApiState};
use crate::chain::OutputParser;
use crate::error::CoordinatorError;

/// A piece of an answer.
enum Piece {
    Text(String),
    Done { finish: String, usage: Usage, sources: Option<Vec<SourceOut>>, parsed: Option<String> },
}

type Pieces = mpsc::Receiver<Result<Piece, CoordinatorError>>;

fn finish_reason(f: &str) -> &'static str {
    match f {
        "length" => "length",
        _ => "stop",
    }
}

fn text_of(content: Option<Content>, i: usize) -> Result<String, ApiError> {
    match content {
        None => Ok(String::new()),
        Some(Content::Text(s)) => Ok(s),
        Some(Content::Parts(parts)) => {
            let mut out = String::new();
            for p in parts {
                if p.kind != "text" {
                    return Err(ApiError::bad_param(
                        "messages",
                        format!("messages[{i}]: content parts of type '{}' are not supported (text only)", p.kind),
                    ));
                }
                out.push_str(p.text.as_deref().unwrap_or(""));
            }
            Ok(out)
        }
    }
}

fn check_sampling(temperature: Option<f32>, top_p: Option<f32>, n: Option<u32>) -> Result<(), ApiError> {
    if let Some(t) = temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::bad_param("temperature", format!("temperature must be between 0 and 2, got {t}")));
        }
    }
    if let Some(p) = top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::bad_param("top_p", format!("top_p must be in (0, 1], got {p}")));
        }
    }
    if n.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_param("n", "only n=1 is supported"));
    }
    Ok(())
}

/// Forwards a model token stream as pieces.
fn from_model(mut upstream: tonic::Streaming<pb::GenerateChunk>) -> Pieces {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let item = match upstream.message().await {
                Ok(Some(c)) if !c.finish_reason.is_empty() => {
                    let piece = Piece::Text(c.text);
                    if tx.send(Ok(piece)).await.is_err() {
                        return;
                    }
                    Ok(Piece::Done {
                        finish: c.finish_reason,
                        usage: Usage::from_pb(c.usage),
                        sources: None,
                        parsed: None,
                    })
                }
                Ok(Some(c)) => Ok(Piece::Text(c.text)),
                Ok(None) => Err(CoordinatorError::internal("the model stream ended early")),
                Err(s) => Err(CoordinatorError::Upstream(s)),
            };
            let end = !matches!(item, Ok(Piece::Text(_)));
            if tx.send(item).await.is_err() || end {
                return;
            }
        }
    });
    rx
}

/// Forwards an ask stream as pieces.
fn from_ask(mut upstream: crate::ask::AskReceiver) -> Pieces {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(item) = upstream.recv().await {
            let item = item.map(|chunk| match chunk.result {
                Some(r) => Piece::Done {
                    finish: r.finish_reason,
                    usage: Usage::from_pb(r.usage),
                    sources: Some(
                        r.sources
                            .into_iter()
                            .map(|s| SourceOut { doc_id: s.doc_id, chunk_id: s.chunk_id, score: s.score })
                            .collect(),
                    ),
                    parsed: (!r.parsed_json.is_empty()).then_some(r.parsed_json),
                },
                None => Piece::Text(chunk.text),
            });
            let end = !matches!(item, Ok(Piece::Text(_)));
            if tx.send(item).await.is_err() || end {
                return;
            }
        }
    });
    rx
}

/// Collects pieces into (text, finish, usage, sources, parsed).
async fn collect(mut rx: Pieces) -> Result<(String, String, Usage, Option<Vec<SourceOut>>, Option<String>), ApiError> {
    let mut text = String::new();
    while let Some(item) = rx.recv().await {
        match item? {
            Piece::Text(t) => text.push_str(&t),
            Piece::Done { finish, usage, sources, parsed } => return Ok((text, finish, usage, sources, parsed)),
        }
    }
    Err(ApiError::from(CoordinatorError::internal("the answer stream ended early")))
}

/// Server-sent events from pieces; `chunk` builds one event's JSON from (delta text, finish, sources).
fn sse(
    rx: Pieces,
    include_usage: bool,
    chunk: impl Fn(Option<&str>, Option<&str>, Option<&Vec<SourceOut>>) -> Value + Send + 'static,
    usage_chunk: impl Fn(Usage) -> Value + Send + 'static,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let first = chunk(Some(""), None, None);
    let events = ReceiverStream::new(rx).flat_map(move |item| {
        let out: Vec<Value> = match item {
            Ok(Piece::Text(t)) if t.is_empty() => vec![],
            Ok(Piece::Text(t)) => vec![chunk(Some(&t), None, None)],
            Ok(Piece::Done { finish, usage, sources, .. }) => {
                let mut v = vec![chunk(None, Some(finish_reason(&finish)), sources.as_ref())];
                if include_usage {
                    v.push(usage_chunk(usage));
                }
                v
            }
            Err(s) => {
                let e = ApiError::from(s);
                vec![json!({"error": {"message": e.message, "type": e.kind, "param": null, "code": e.code}})]
            }
        };
        stream::iter(out.into_iter().map(|v| Ok(Event::default().data(v.to_string()))))
    });
    let all = stream::once(async move { Ok(Event::default().data(first.to_string())) })
        .chain(events)
        .chain(stream::once(async { Ok(Event::default().data("[DONE]")) }));
    Sse::new(all).keep_alive(KeepAlive::default())
}

/// Chat messages in Tessera's roles (OpenAI's `developer` is a system message).
fn chat_messages(messages: Vec<super::wire::Message>) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_param("messages", "messages must not be empty"));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    return Err(ApiError::bad_param(
                        "messages",
                        format!("messages[{i}]: role '{other}' is not supported (system, developer, user, assistant)"),
                    ))
                }
            };
            Ok(ChatMessage::new(role, text_of(m.content, i)?))
        })
        .collect()
}

/// JSON output asked for by `response_format`: its parser and schema text.
fn json_output(format: Option<&super::wire::ResponseFormat>) -> Result<Option<(OutputParser, String)>, ApiError> {
    let schema = match format.map(|f| (f.kind.as_str(), f)) {
        None | Some(("text", _)) => return Ok(None),
        Some(("json_object", _)) => None,
        Some(("json_schema", f)) => f.json_schema.as_ref().and_then(|s| s.schema.clone()),
        Some((other, _)) => {
            return Err(ApiError::bad_param(
                "response_format",
                format!("response_format type '{other}' is not supported (text, json_object, json_schema)"),
            ))
        }
    };
    let schema_json = schema.map(|s| s.to_string()).unwrap_or_default();
    let parser = OutputParser::from_spec("json", &schema_json, "")
        .map_err(|e| ApiError::bad_param("response_format", e.to_string()))?;
    Ok(Some((parser, schema_json)))
}

/// The ask chain's request for a chat with `collection`: the last user message is
/// the question; earlier messages are the history unless the server keeps it
/// under a session.
fn ask_request(
    model: &str,
    req: &ChatRequest,
    collection: String,
    messages: &[ChatMessage],
    json_schema: Option<&str>,
) -> Result<pb::AskRequest, ApiError> {
    let last_user = messages.iter().rposition(|m| m.role == Role::User).ok_or_else(|| {
        ApiError::bad_param("messages", "with 'collection', messages need a user message (the question)")
    })?;
    let history: Vec<pb::ChatMessage> =
        messages[..last_user].iter().filter(|m| m.role != Role::System).cloned().map(pb::ChatMessage::from).collect();
    let mode: SearchMode = match req.mode.as_deref() {
        None => SearchMode::Vector,
        Some(name) => name
            .parse()
            .map_err(|e: tessera_types::UnknownSearchModeName| ApiError::bad_param("mode", e.to_string()))?,
    };
    let session = req.session.clone().unwrap_or_default();
    Ok(pb::AskRequest {
        collection,
        history: if session.is_empty() { history } else { vec![] },
        session,
        question: messages[last_user].content.clone(),
        top_k: req.top_k.unwrap_or(0),
        mode: pb::SearchMode::from(mode) as i32,
        template: req.template.clone().unwrap_or_default(),
        output: json_schema.map(|schema| pb::OutputSpec {
            kind: "json".into(),
            schema_json: schema.to_string(),
            pattern: String::new(),
        }),
        max_tokens: req.max_completion_tokens.or(req.max_tokens).unwrap_or(0),
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed,
        stop: req.stop.clone().map(|s| s.into_vec()).unwrap_or_default(),
        model: model.to_string(),
        ..Default::default()
    })
}

/// The model's request for a chat without retrieval; JSON output puts the
/// parser's instructions into the system message.
fn model_request(
    model: &str,
    req: &ChatRequest,
    mut messages: Vec<ChatMessage>,
    parser: Option<&OutputParser>,
) -> Result<pb::GenerateRequest, ApiError> {
    if req.session.is_some() || req.top_k.is_some() || req.template.is_some() {
        return Err(ApiError::bad_param(
            "collection",
            "session, top_k and template need a 'collection' to retrieve from",
        ));
    }
    if let Some(p) = parser {
        let instruction = p.format_instructions();
        match messages.iter_mut().find(|m| m.role == Role::System) {
            Some(sys) => sys.content = format!("{}\n{instruction}", sys.content),
            None => messages.insert(0, ChatMessage::new(Role::System, instruction)),
        }
    }
    Ok(pb::GenerateRequest {
        messages: messages.into_iter().map(pb::ChatMessage::from).collect(),
        max_tokens: req.max_completion_tokens.or(req.max_tokens).unwrap_or(0),
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed,
        stop: req.stop.clone().map(|s| s.into_vec()).unwrap_or_default(),
        model: model.to_string(),
        constraint: parser.and_then(OutputParser::constraint),
        ..Default::default()
    })
}

#[tracing::instrument(skip_all, name = "openai.chat_completions")]
pub(crate) async fn chat_completions(
    State(state): State<ApiState>,
    principal: Option<axum::Extension<crate::auth::Principal>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    // The auth middleware leaves the key's principal here; its tenant scopes
    // the collection and session named in the body.
    let scope = crate::tenancy::Scope::of(principal.as_ref().map(|p| &p.0));
    let req: ChatRequest = parse_body(&body)?;
    let model = state.chat_model(&req.model).await?;
    check_sampling(req.temperature, req.top_p, req.n)?;
    let messages = chat_messages(req.messages.clone())?;
    let json = json_output(req.response_format.as_ref())?;
    let c = &state.coordinator;
    let pieces = match req.collection.clone() {
        Some(collection) => {
            let mut ask = ask_request(&model, &req, collection, &messages, json.as_ref().map(|(_, s)| s.as_str()))?;
            ask.collection = scope.collection(&ask.collection)?;
            ask.session = scope.session(&ask.session)?;
            from_ask(c.ask(ask).await?)
        }
        None => {
            from_model(c.generate_checked(model_request(&model, &req, messages, json.as_ref().map(|(p, _)| p))?).await?)
        }
    };
    let id = new_id("chatcmpl");
    let created = unix_now();
    if req.stream {
        let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
        return Ok(chat_events(pieces, include_usage, id, created, model).into_response());
    }
    let (mut text, finish, usage, sources, parsed) = collect(pieces).await?;
    if let Some((p, _)) = &json {
        text = match parsed {
            Some(v) => v, // the ask chain parsed it
            None => match crate::ask::parse_output(p, text) {
                Ok((text, v)) => v.map(|v| v.to_string()).unwrap_or(text),
                Err(e) => {
                    return Err(ApiError::from(CoordinatorError::OutputParse(format!(
                        "the model's output is not valid JSON: {}; raw output: {}",
                        e.reason, e.raw
                    ))))
                }
            },
        };
    }
    let mut body = json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null,
                     "finish_reason": finish_reason(&finish)}],
        "usage": usage,
    });
    if let Some(s) = sources {
        body["sources"] = json!(s);
    }
    Ok(Json(body).into_response())
}

/// A streamed chat answer as `chat.completion.chunk` events.
fn chat_events(pieces: Pieces, include_usage: bool, id: String, created: u64, model: String) -> impl IntoResponse {
    let (id2, model2) = (id.clone(), model.clone());
    let chunk = move |delta: Option<&str>, finish: Option<&str>, sources: Option<&Vec<SourceOut>>| {
        let delta = match delta {
            Some("") => json!({"role": "assistant", "content": ""}),
            Some(t) => json!({"content": t}),
            None => json!({}),
        };
        let mut v = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        if let Some(s) = sources {
            v["sources"] = json!(s);
        }
        v
    };
    let usage_chunk = move |u: Usage| json!({"id": id2, "object": "chat.completion.chunk", "created": created, "model": model2, "choices": [], "usage": u});
    sse(pieces, include_usage, chunk, usage_chunk)
}

#[tracing::instrument(skip_all, name = "openai.completions")]
pub(crate) async fn completions(State(state): State<ApiState>, body: Bytes) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse_body(&body)?;
    let model = state.chat_model(&req.model).await?;
    check_sampling(req.temperature, req.top_p, req.n)?;
    if req.echo {
        return Err(ApiError::bad_param("echo", "echo is not supported"));
    }
    let prompt = match req.prompt {
        Prompt::One(s) => s,
        Prompt::Many(items) => match items.as_slice() {
            [Value::String(s)] => s.clone(),
            [_] => return Err(ApiError::bad_param("prompt", "token-id prompts are not supported; send text")),
            _ => return Err(ApiError::bad_param("prompt", "send one prompt per request")),
        },
    };
    if prompt.is_empty() {
        return Err(ApiError::bad_param("prompt", "prompt must not be empty"));
    }
    let gen = pb::GenerateRequest {
        prompt,
        raw: true,
        max_tokens: req.max_tokens.unwrap_or(16),
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed,
        stop: req.stop.map(|s| s.into_vec()).unwrap_or_default(),
        model: model.clone(),
        ..Default::default()
    };
    let pieces = from_model(state.coordinator.generate_checked(gen).await?);
    let id = new_id("cmpl");
    let created = unix_now();
    if req.stream {
        let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
        let (id2, model2) = (id.clone(), model.clone());
        let chunk = move |delta: Option<&str>, finish: Option<&str>, _: Option<&Vec<SourceOut>>| {
            json!({"id": id, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": delta.unwrap_or(""), "logprobs": null, "finish_reason": finish}]})
        };
        let usage_chunk = move |u: Usage| json!({"id": id2, "object": "text_completion", "created": created, "model": model2, "choices": [], "usage": u});
        return Ok(sse(pieces, include_usage, chunk, usage_chunk).into_response());
    }
    let (text, finish, usage, _, _) = collect(pieces).await?;
    Ok(Json(json!({
        "id": id, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason(&finish)}],
        "usage": usage,
    }))
    .into_response())
}
