//! The notification service's read errors and their one mapping to gRPC
//! codes.

use oms_common::auth::AccessDenied;
use oms_common::db::DbError;
use oms_common::grpc::database_error_status;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum NotificationError {
    #[error("order_id or customer_id is required")]
    MissingFilter,
    #[error("order_id {0:?} is not a UUID")]
    InvalidOrderId(String),
    #[error("customer_id must be at most 128 characters")]
    InvalidCustomerId,
    #[error("page_size must not be negative")]
    InvalidPageSize,
    #[error("page_token is not a token this service issued")]
    InvalidPageToken,
    #[error(transparent)]
    Denied(#[from] AccessDenied),
    #[error(transparent)]
    Database(#[from] DbError),
}

impl From<diesel::result::Error> for NotificationError {
    fn from(err: diesel::result::Error) -> Self {
        Self::Database(err.into())
    }
}

impl From<NotificationError> for Status {
    fn from(err: NotificationError) -> Self {
        match &err {
            NotificationError::Database(err) => database_error_status(err),
            NotificationError::Denied(_) => Status::permission_denied(err.to_string()),
            _ => Status::invalid_argument(err.to_string()),
        }
    }
}
