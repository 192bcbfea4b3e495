//! The order service's errors and their one mapping to gRPC status codes.

use oms_common::auth::AccessDenied;
use oms_common::db::DbError;
use oms_common::grpc::database_error_status;
use tonic::Status;

pub type Result<T, E = OrderError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("order_id {0:?} is not a UUID")]
    InvalidOrderId(String),
    #[error("fingerprint {0:?} is not a UUID")]
    InvalidFingerprint(String),
    #[error("customer_id and request_id are required to claim a key")]
    UnnamedKey,
    #[error("order_id {0} is not the one customer_id and request_id name")]
    KeyMismatch(uuid::Uuid),
    #[error("page_token is not a token this service issued")]
    InvalidPageToken,
    #[error("page_size must not be negative")]
    InvalidPageSize,
    #[error("order {0} not found")]
    NotFound(uuid::Uuid),
    #[error("the call's deadline passed while watching order {0}")]
    DeadlineExceeded(uuid::Uuid),
    #[error("the order service is shutting down; watch again")]
    ShuttingDown,
    #[error(transparent)]
    Denied(#[from] AccessDenied),
    #[error(transparent)]
    Database(#[from] DbError),
}

impl From<diesel::result::Error> for OrderError {
    fn from(err: diesel::result::Error) -> Self {
        Self::Database(err.into())
    }
}

impl From<OrderError> for Status {
    fn from(err: OrderError) -> Self {
        match &err {
            OrderError::InvalidOrderId(_)
            | OrderError::InvalidFingerprint(_)
            | OrderError::UnnamedKey
            | OrderError::KeyMismatch(_)
            | OrderError::InvalidPageToken
            | OrderError::InvalidPageSize => Status::invalid_argument(err.to_string()),
            OrderError::NotFound(_) => Status::not_found(err.to_string()),
            OrderError::DeadlineExceeded(_) => Status::deadline_exceeded(err.to_string()),
            OrderError::ShuttingDown => Status::unavailable(err.to_string()),
            OrderError::Denied(_) => Status::permission_denied(err.to_string()),
            OrderError::Database(err) => database_error_status(err),
        }
    }
}
