//! Errors in OpenAI's JSON shape: `{"error": {"message", "type", "param", "code"}}`.
//!
//! The one mapping of [`CoordinatorError`] to HTTP (the gRPC one is in `crate::error`).
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tonic::Code;

use crate::error::CoordinatorError;

/// An HTTP error as OpenAI clients expect it.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OpenAI error type.
    pub kind: &'static str,
    /// The offending request field, if known.
    pub param: Option<String>,
    /// Machine-readable code.
    pub code: Option<&'static str>,
    /// For people.
    pub message: String,
}

impl ApiError {
    /// 400 invalid_request_error.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            param: None,
            code: None,
            message: message.into(),
        }
    }

    /// 400 naming the field.
    pub fn bad_param(param: &str, message: impl Into<String>) -> Self {
        Self { param: Some(param.to_string()), ..Self::bad_request(message) }
    }

    /// 404 for an unknown model.
    pub fn model_not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
            message: message.into(),
        }
    }
}

/// HTTP status, OpenAI error type and code for a gRPC code (errors nodes sent).
fn by_code(code: Code) -> (StatusCode, &'static str, Option<&'static str>) {
    match code {
        Code::InvalidArgument | Code::OutOfRange => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
        Code::NotFound => (StatusCode::NOT_FOUND, "invalid_request_error", Some("not_found")),
        Code::AlreadyExists => (StatusCode::CONFLICT, "invalid_request_error", None),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", Some("overloaded")),
        Code::Aborted => (StatusCode::CONFLICT, "server_error", None),
        Code::FailedPrecondition | Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "server_error", None),
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "server_error", None),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None),
    }
}

impl From<CoordinatorError> for ApiError {
    fn from(e: CoordinatorError) -> Self {
        let (status, kind, code) = match &e {
            CoordinatorError::OutputParse(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_response_error", Some("output_parse_error"))
            }
            CoordinatorError::TooLarge(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", Some("request_too_large"))
            }
            other => by_code(other.code()),
        };
        let message = match e {
            CoordinatorError::Upstream(s) => s.message().to_string(),
            other => other.to_string(),
        };
        Self { status, kind, param: None, code, message }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        (self.status, axum::Json(body)).into_response()
    }
}
