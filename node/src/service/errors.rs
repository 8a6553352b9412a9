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

/// Maps the errors of loading an adapter: a missing folder or a file that is
/// not a fitting PEFT adapter is the caller's mistake (NOT_FOUND is kept
/// for a base model this node does not serve, so a coordinator passes on).
pub fn adapter_status(e: ModelError) -> Status {
    match e {
        ModelError::Io(m) => Status::invalid_argument(format!("adapter: {m}")),
        ModelError::Format(m) => Status::invalid_argument(format!("adapter: {m}")),
        ModelError::Unsupported(m) => Status::invalid_argument(format!("adapter not supported: {m}")),
        other => model_status(other),
    }
}

/// Maps fine-tuning errors: bad data or settings are the caller's.
pub fn finetune_status(e: crate::finetune::FinetuneError) -> Status {
    use crate::finetune::FinetuneError;
    match e {
        FinetuneError::Data(_) | FinetuneError::Config(_) => Status::invalid_argument(e.to_string()),
        FinetuneError::Io(m) => Status::failed_precondition(m),
        FinetuneError::Model(m) => adapter_status(m),
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
