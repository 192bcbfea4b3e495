//! The payment service's read errors and their one mapping to gRPC codes.

use oms_common::db::DbError;
use oms_common::grpc::database_error_status;
use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum PaymentError {
    #[error("order_id {0:?} is not a UUID")]
    InvalidOrderId(String),
    #[error("no payment for order {0} (its payment request may not be processed yet)")]
    NotFound(uuid::Uuid),
    #[error(transparent)]
    Database(#[from] DbError),
}

impl From<diesel::result::Error> for PaymentError {
    fn from(err: diesel::result::Error) -> Self {
        Self::Database(err.into())
    }
}

impl From<PaymentError> for Status {
    fn from(err: PaymentError) -> Self {
        match &err {
            PaymentError::InvalidOrderId(_) => Status::invalid_argument(err.to_string()),
            PaymentError::NotFound(_) => Status::not_found(err.to_string()),
            PaymentError::Database(err) => database_error_status(err),
        }
    }
}
