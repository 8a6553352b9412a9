//! The OpenAI-compatible HTTP API, so OpenAI and LangChain clients work with
//! `base_url="http://HOST:PORT/v1"` unchanged.
//!
//! `/v1/chat/completions` (plain, streamed with server-sent events, JSON
//! output), `/v1/completions`, `/v1/embeddings` and `/v1/models`. Retrieval and
//! memory are asked for with extra body fields (`collection`, `session`,
//! `top_k`, `mode`, `template`); the answer then carries `sources`. Handlers
//! call the coordinator in-process, the same code the gRPC service runs.

mod chat;
mod embeddings;
mod error;
pub mod wire;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tessera_types::names_default_model;
use tokio::sync::OnceCell;

pub use error::ApiError;

use crate::coordinator::Coordinator;
use crate::error::CoordinatorError;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub(crate) coordinator: Coordinator,
    embedding: Arc<OnceCell<Option<String>>>,
    chat: Arc<tokio::sync::RwLock<Vec<String>>>,
}

impl ApiState {
    /// The embedding model's id (asked once: one embedder per cluster).
    pub(crate) async fn embedding_id(&self) -> Result<Option<String>, ApiError> {
        Ok(self
            .embedding
            .get_or_try_init(|| async { Ok::<_, ApiError>(self.coordinator.embedder_name().await?) })
            .await?
            .clone())
    }

    /// The served chat models' ids, the default first; asked again when
    /// `refresh` (a name not seen yet may be a model node that joined since).
    async fn chat_ids(&self, refresh: bool) -> Result<Vec<String>, ApiError> {
        if !refresh {
            let known = self.chat.read().await;
            if !known.is_empty() {
                return Ok(known.clone());
            }
        }
        let ids: Vec<String> = self.coordinator.served_models().await?.into_iter().map(|m| m.name).collect();
        *self.chat.write().await = ids.clone();
        Ok(ids)
    }

    /// The id of the chat model a request named (`default` / `tessera`: the
    /// first); 404 with the served ids when it names none.
    pub(crate) async fn chat_model(&self, asked: &str) -> Result<String, ApiError> {
        let mut ids = self.chat_ids(false).await?;
        // An OpenAI request always names a model: "" is not an alias here.
        let alias = !asked.is_empty() && names_default_model(asked);
        if !alias && !ids.iter().any(|i| i == asked) {
            ids = self.chat_ids(true).await?;
        }
        let Some(first) = ids.first() else {
            return Err(ApiError::from(CoordinatorError::unavailable(
                "no chat model is loaded (run scripts/fetch-models.sh and restart)",
            )));
        };
        if alias {
            return Ok(first.clone());
        }
        if ids.iter().any(|i| i == asked) {
            return Ok(asked.to_string());
        }
        let asked: String = asked.chars().take(200).collect();
        Err(ApiError::model_not_found(format!(
            "the model '{asked}' does not exist here; served: {} (or 'default'), see GET /v1/models",
            ids.join(", ")
        )))
    }
}

/// The routes under `/v1`.
pub fn router(coordinator: Coordinator) -> Router {
    let state = ApiState { coordinator, embedding: Arc::default(), chat: Arc::default() };
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(chat::completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .with_state(state)
}

/// Parses a JSON body; any error (syntax, wrong type, missing field) is a 400 saying what.
pub(crate) fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty; send a JSON object"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A response id: prefix, time and a process-wide counter.
pub(crate) fn new_id(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{:x}{n:06x}", unix_now())
}

#[tracing::instrument(skip_all, name = "openai.models")]
async fn models(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let served = state.coordinator.served_models().await?;
    *state.chat.write().await = served.iter().map(|m| m.name.clone()).collect();
    let mut data: Vec<Value> = served
        .iter()
        .map(|m| {
            let mut v = json!({"id": m.name, "object": "model", "created": 0, "owned_by": "tessera"});
            // An adapter names the base it runs on, as vLLM lists LoRA modules.
            if !m.parent.is_empty() {
                v["parent"] = json!(m.parent);
                v["root"] = json!(m.parent);
            }
            v
        })
        .collect();
    data.extend(
        state.embedding_id().await?.map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "tessera"})),
    );
    Ok(Json(json!({"object": "list", "data": data})))
}
