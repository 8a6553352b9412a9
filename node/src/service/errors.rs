//! The one mapping of the node's error types to gRPC status codes.
use tonic::Status;

use crate::load::LoaderError;
use crate::model::ModelError;
use crate::session::SessionError;
use crate::shard::ShardError;

/// Maps model errors onto gRPC codes.
pub fn model_status(e: ModelError) -> Status {
    match e {
        ModelError::Input(m) => Status::invalid_argument(m),
        ModelError::Busy(m) => Status::resource_exhausted(m),
        ModelError::Template(m) => Status::invalid_argument(format!("chat template: {m}")),
        other => Status::internal(other.to_string()),
    }
}

/// Maps shard errors onto gRPC codes.
pub fn shard_status(e: ShardError) -> Status {
    match e {
        ShardError::Invalid(_) | ShardError::Dimension { .. } => Status::invalid_argument(e.to_string()),
        ShardError::NotFound(_) => Status::not_found(e.to_string()),
        ShardError::OutOfOrder { .. } => Status::failed_precondition(e.to_string()),
        ShardError::Unavailable(_) => Status::unavailable(e.to_string()),
        ShardError::Storage(_) | ShardError::Corrupt(_) | ShardError::Ann(_) => Status::internal(e.to_string()),
    }
}

/// Maps session errors onto gRPC codes.
pub fn session_status(e: SessionError) -> Status {
    match e {
        SessionError::Invalid(m) => Status::invalid_argument(m),
        SessionError::SessionId(e) => Status::invalid_argument(e.to_string()),
        SessionError::Unavailable(m) => Status::unavailable(m),
        other => Status::internal(other.to_string()),
    }
}

/// Maps loader errors onto gRPC codes.
pub fn loader_status(e: LoaderError) -> Status {
    match e {
        LoaderError::Spec(m) => Status::invalid_argument(m),
        LoaderError::Unavailable(m) => Status::unavailable(m),
    }
}
