//! POST /v1/embeddings.
use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};

use super::wire::{EmbeddingInput, EmbeddingRequest};
use super::{parse_body, ApiError, ApiState};
use crate::error::CoordinatorError;

const TOKEN_INPUT: &str = "token-id input is not supported; send text (LangChain's OpenAIEmbeddings: pass \
check_embedding_ctx_length=False)";

#[tracing::instrument(skip_all, name = "openai.embeddings")]
pub(crate) async fn embeddings(State(state): State<ApiState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let req: EmbeddingRequest = parse_body(&body)?;
    let model = state
        .embedding_id()
        .await?
        .ok_or_else(|| ApiError::from(CoordinatorError::unavailable("no embedder is loaded")))?;
    if req.model != model && req.model != "default" && req.model != "tessera" {
        return Err(ApiError::model_not_found(format!(
            "the embedding model '{}' does not exist here; use '{model}', see GET /v1/models",
            req.model
        )));
    }
    let texts: Vec<String> = match req.input {
        EmbeddingInput::One(s) => vec![s],
        EmbeddingInput::Many(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                Value::Number(_) | Value::Array(_) => Err(ApiError::bad_param("input", TOKEN_INPUT)),
                other => Err(ApiError::bad_param("input", format!("input[{i}] must be a string, not {other}"))),
            })
            .collect::<Result<_, _>>()?,
    };
    if texts.is_empty() {
        return Err(ApiError::bad_param("input", "input must not be empty"));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_param(
                "encoding_format",
                format!("encoding_format must be float or base64, not '{other}'"),
            ))
        }
    };
    let resp = state.coordinator.embed(texts).await?;
    if let Some(d) = req.dimensions {
        if d != resp.dimension {
            return Err(ApiError::bad_param(
                "dimensions",
                format!("{model} gives {} dimensions, not {d}", resp.dimension),
            ));
        }
    }
    let data: Vec<Value> = resp
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.values.iter().flat_map(|x| x.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v.values)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    // Token usage is not counted for embeddings (the embedder's word pieces are not the chat model's tokens).
    Ok(Json(json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": 0, "total_tokens": 0}})))
}
