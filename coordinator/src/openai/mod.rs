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
use tokio::sync::OnceCell;

pub use error::ApiError;

use crate::coordinator::Coordinator;
use crate::error::CoordinatorError;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub(crate) coordinator: Coordinator,
    ids: Arc<OnceCell<ModelIds>>,
}

/// The ids /v1/models lists.
#[derive(Debug, Clone)]
pub(crate) struct ModelIds {
    pub chat: Option<String>,
    pub embedding: Option<String>,
}

/// Names a client may use for the chat model besides its id.
const CHAT_ALIASES: [&str; 2] = ["default", "tessera"];

impl ApiState {
    pub(crate) async fn ids(&self) -> Result<&ModelIds, ApiError> {
        self.ids
            .get_or_try_init(|| async {
                let chat = self.coordinator.model_info().await?.map(|m| m.name);
                let embedding = self.coordinator.embedder_name().await?;
                Ok::<_, ApiError>(ModelIds { chat, embedding })
            })
            .await
    }

    /// The chat model's id, checking the name a request gave.
    pub(crate) async fn chat_model(&self, asked: &str) -> Result<String, ApiError> {
        let ids = self.ids().await?;
        let Some(id) = &ids.chat else {
            return Err(ApiError::from(CoordinatorError::unavailable(
                "no chat model is loaded (run scripts/fetch-models.sh and restart)",
            )));
        };
        if asked == id || CHAT_ALIASES.contains(&asked) {
            Ok(id.clone())
        } else {
            Err(ApiError::model_not_found(format!(
                "the model '{asked}' does not exist here; use '{id}' (or 'default'), see GET /v1/models"
            )))
        }
    }
}

/// The routes under `/v1`.
pub fn router(coordinator: Coordinator) -> Router {
    let state = ApiState { coordinator, ids: Arc::default() };
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
    let ids = state.ids().await?;
    let data: Vec<Value> = [&ids.chat, &ids.embedding]
        .into_iter()
        .flatten()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "tessera"}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}
