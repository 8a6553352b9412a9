//! The coordinator's one error type.
//!
//! Every coordinator operation fails with a [`CoordinatorError`]; it is mapped
//! once to a gRPC status (here, `From<CoordinatorError> for Status`) and once to
//! OpenAI's error shape (`openai::error`). An output-parse failure is its own
//! variant, so HTTP answers 422 for it without decoding a status code.
use tessera_proto::convert::UnknownSearchMode;
use thiserror::Error;
use tonic::{Code, Status};

use crate::catalog::{CatalogError, InvalidName};
use crate::nodes::NodeRef;

/// Why a coordinator operation failed.
#[derive(Debug, Error)]
pub enum CoordinatorError {
    /// The request is malformed or over a limit (`INVALID_ARGUMENT`).
    #[error("{0}")]
    Invalid(String),
    /// A request whose work is over a size limit (`RESOURCE_EXHAUSTED`, HTTP 413).
    #[error("{0}")]
    TooLarge(String),
    /// A collection or session that does not exist (`NOT_FOUND`).
    #[error("{0}")]
    NotFound(String),
    /// A collection that already exists (`ALREADY_EXISTS`).
    #[error("{0}")]
    AlreadyExists(String),
    /// The deployment cannot do this (too few nodes, no embedder) (`FAILED_PRECONDITION`).
    #[error("{0}")]
    FailedPrecondition(String),
    /// No node that could do it is alive now (`UNAVAILABLE`).
    #[error("{0}")]
    Unavailable(String),
    /// Someone else changed the placement meanwhile (`ABORTED`).
    #[error("{0}")]
    Conflict(String),
    /// A wait ran out (`DEADLINE_EXCEEDED`).
    #[error("{0}")]
    Timeout(String),
    /// The model's answer did not parse with the requested output parser
    /// (`ABORTED` over gRPC, 422 over HTTP).
    #[error("{0}")]
    OutputParse(String),
    /// The catalog failed (`INTERNAL`).
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A node answered with an error; its code is kept, its id added to the message.
    #[error("node {node}: {}", status.message())]
    Node {
        /// Which node.
        node: String,
        /// What it said.
        status: Status,
    },
    /// A node call failed where the node is implied (a stream, a follow-up call).
    #[error("{}", .0.message())]
    Upstream(Status),
    /// A bug or an impossible state (`INTERNAL`).
    #[error("{0}")]
    Internal(String),
}

impl CoordinatorError {
    /// `Invalid` from anything printable.
    pub fn invalid(m: impl Into<String>) -> Self {
        Self::Invalid(m.into())
    }

    /// `NotFound` from anything printable.
    pub fn not_found(m: impl Into<String>) -> Self {
        Self::NotFound(m.into())
    }

    /// `AlreadyExists` from anything printable.
    pub fn already_exists(m: impl Into<String>) -> Self {
        Self::AlreadyExists(m.into())
    }

    /// `FailedPrecondition` from anything printable.
    pub fn failed_precondition(m: impl Into<String>) -> Self {
        Self::FailedPrecondition(m.into())
    }

    /// `Unavailable` from anything printable.
    pub fn unavailable(m: impl Into<String>) -> Self {
        Self::Unavailable(m.into())
    }

    /// `Conflict` from anything printable.
    pub fn conflict(m: impl Into<String>) -> Self {
        Self::Conflict(m.into())
    }

    /// `Timeout` from anything printable.
    pub fn timeout(m: impl Into<String>) -> Self {
        Self::Timeout(m.into())
    }

    /// `Internal` from anything printable.
    pub fn internal(m: impl Into<String>) -> Self {
        Self::Internal(m.into())
    }

    /// A node's error status, attributed to it.
    pub fn node(node: &NodeRef, status: Status) -> Self {
        Self::Node { node: node.id.clone(), status }
    }

    /// The gRPC code this error travels with.
    pub fn code(&self) -> Code {
        match self {
            Self::Invalid(_) => Code::InvalidArgument,
            Self::NotFound(_) => Code::NotFound,
            Self::TooLarge(_) => Code::ResourceExhausted,
            Self::AlreadyExists(_) => Code::AlreadyExists,
            Self::FailedPrecondition(_) => Code::FailedPrecondition,
            Self::Unavailable(_) => Code::Unavailable,
            Self::Conflict(_) | Self::OutputParse(_) => Code::Aborted,
            Self::Timeout(_) => Code::DeadlineExceeded,
            Self::Catalog(_) | Self::Internal(_) => Code::Internal,
            Self::Node { status, .. } | Self::Upstream(status) => status.code(),
        }
    }
}

impl From<Status> for CoordinatorError {
    fn from(s: Status) -> Self {
        Self::Upstream(s)
    }
}

impl From<InvalidName> for CoordinatorError {
    fn from(e: InvalidName) -> Self {
        Self::Invalid(e.to_string())
    }
}

impl From<UnknownSearchMode> for CoordinatorError {
    fn from(e: UnknownSearchMode) -> Self {
        Self::Invalid(e.to_string())
    }
}

impl From<CoordinatorError> for Status {
    fn from(e: CoordinatorError) -> Self {
        match e {
            CoordinatorError::Upstream(s) => s,
            other => Status::new(other.code(), other.to_string()),
        }
    }
}

/// Results of coordinator operations.
pub type Result<T, E = CoordinatorError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_keeps_its_code_and_message_over_grpc() {
        let s = Status::from(CoordinatorError::invalid("top_k must be between 1 and 1000, got 0"));
        assert_eq!((s.code(), s.message()), (Code::InvalidArgument, "top_k must be between 1 and 1000, got 0"));
        assert_eq!(Status::from(CoordinatorError::OutputParse("x".into())).code(), Code::Aborted);
        let node = CoordinatorError::Node { node: "n1".into(), status: Status::resource_exhausted("queue full") };
        let s = Status::from(node);
        assert_eq!((s.code(), s.message()), (Code::ResourceExhausted, "node n1: queue full"));
        assert_eq!(Status::from(CoordinatorError::from(Status::not_found("gone"))).code(), Code::NotFound);
    }
}
