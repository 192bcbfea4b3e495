//! The gateway's errors and their one mapping to gRPC status codes.

use crate::watch_limits::WatchRefused;
use oms_common::auth::AccessDenied;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// What a client hears when its order could not be published. The broker's
/// or the transport's own words go to the log only: they describe our
/// infrastructure, and a client can act on nothing but the advice.
pub const PUBLISH_FAILED: &str = "the order could not be published; retry with the same request_id";
/// What a client hears when the order service cannot be reached or used.
pub const ORDER_SERVICE_UNAVAILABLE: &str = "the order service is unavailable; retry later";

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid request: {}", describe(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("request_id {0:?} was already used for a different order")]
    RequestIdReused(String),
    #[error("order {0} not found (it may not be recorded yet)")]
    NotFound(String),
    #[error("the order could not be published: {0}")]
    BrokerUnavailable(String),
    #[error("the order needs {size} bytes on the broker, over its limit of {limit}")]
    OrderTooLarge { size: usize, limit: usize },
    #[error("the order service is unavailable: {0}")]
    OrderServiceUnavailable(String),
    #[error("the call's deadline passed while watching order {0}")]
    DeadlineExceeded(String),
    #[error("the gateway is shutting down; watch again")]
    ShuttingDown,
    #[error(transparent)]
    Denied(#[from] AccessDenied),
    #[error(transparent)]
    TooManyWatches(#[from] WatchRefused),
    #[error("the order service refused the caller: {}", .0.message())]
    Refused(Status),
    #[error("unexpected answer from the order service: {0}")]
    Internal(String),
}

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{} {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<GatewayError> for Status {
    fn from(err: GatewayError) -> Self {
        match err {
            GatewayError::InvalidArgument(ref violations) => Status::with_error_details(
                Code::InvalidArgument,
                err.to_string(),
                ErrorDetails::with_bad_request(violations.clone()),
            ),
            GatewayError::RequestIdReused(_) => Status::already_exists(err.to_string()),
            GatewayError::NotFound(_) => Status::not_found(err.to_string()),
            GatewayError::Denied(_) => Status::permission_denied(err.to_string()),
            GatewayError::TooManyWatches(_) => Status::resource_exhausted(err.to_string()),
            GatewayError::Refused(status) => status,
            GatewayError::DeadlineExceeded(_) => Status::deadline_exceeded(err.to_string()),
            GatewayError::ShuttingDown => Status::unavailable(err.to_string()),
            // Never published, and a retry cannot fit either: gRPC's own
            // code for a message over a size limit.
            GatewayError::OrderTooLarge { .. } => {
                tracing::warn!(error = %err, "order refused before publishing");
                Status::resource_exhausted(err.to_string())
            }
            GatewayError::BrokerUnavailable(_) => {
                tracing::warn!(error = %err, "broker unavailable");
                Status::unavailable(PUBLISH_FAILED)
            }
            GatewayError::OrderServiceUnavailable(_) => {
                tracing::warn!(error = %err, "order service unavailable");
                Status::unavailable(ORDER_SERVICE_UNAVAILABLE)
            }
            GatewayError::Internal(_) => {
                tracing::error!(error = %err, "internal error");
                Status::internal("internal error")
            }
        }
    }
}
