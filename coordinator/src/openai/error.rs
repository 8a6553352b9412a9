//! Errors in OpenAI's JSON shape: `{"error": {"message", "type", "param", "code"}}`.
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tonic::{Code, Status};

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

impl From<Status> for ApiError {
    fn from(s: Status) -> Self {
        let (status, kind, code) = match s.code() {
            Code::InvalidArgument | Code::OutOfRange => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
            Code::NotFound => (StatusCode::NOT_FOUND, "invalid_request_error", Some("not_found")),
            Code::AlreadyExists => (StatusCode::CONFLICT, "invalid_request_error", None),
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", Some("overloaded")),
            Code::Aborted => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_response_error", Some("output_parse_error")),
            Code::FailedPrecondition | Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "server_error", None),
            Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "server_error", None),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None),
        };
        Self { status, kind, param: None, code, message: s.message().to_string() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body =
            json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}});
        (self.status, axum::Json(body)).into_response()
    }
}
