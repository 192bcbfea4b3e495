//! The order service's errors and their one mapping to gRPC status codes.

use oms_common::db::DbError;
use tonic::Status;

pub type Result<T, E = OrderError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("order_id {0:?} is not a UUID")]
    InvalidOrderId(String),
    #[error("page_token is not a token this service issued")]
    InvalidPageToken,
    #[error("page_size must not be negative")]
    InvalidPageSize,
    #[error("order {0} not found")]
    NotFound(uuid::Uuid),
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
            | OrderError::InvalidPageToken
            | OrderError::InvalidPageSize => Status::invalid_argument(err.to_string()),
            OrderError::NotFound(_) => Status::not_found(err.to_string()),
            OrderError::Database(DbError::Pool(_) | DbError::Connect(_)) => {
                tracing::warn!(error = %err, "database unavailable");
                Status::unavailable("the order database is unavailable, retry later")
            }
            OrderError::Database(_) => {
                tracing::error!(error = ?err, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
