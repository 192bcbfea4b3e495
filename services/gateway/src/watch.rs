//! `WatchOrder`: the gateway forwards each watch to the order service over
//! its one HTTP/2 connection (a stream per watcher, not a connection), so
//! a thousand watchers cost the gateway one connection and the order service
//! one database listener.

use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Status, Streaming};
use tonic_types::FieldViolation;
use uuid::Uuid;

use oms_api::orders::v1::{Order, WatchOrderRequest};

use crate::error::GatewayError;
use crate::service::{Gateway, upstream_error};

pub type OrderStream = Pin<Box<dyn Stream<Item = Result<Order, Status>> + Send>>;

impl Gateway {
    pub(crate) async fn watch_order(
        &self,
        request: WatchOrderRequest,
        timeout: Option<Duration>,
    ) -> Result<OrderStream, GatewayError> {
        if Uuid::parse_str(&request.order_id).is_err() {
            return Err(GatewayError::InvalidArgument(vec![FieldViolation::new(
                "order_id",
                "must be a UUID",
            )]));
        }
        let order_id = request.order_id.clone();
        let mut forwarded = Request::new(request);
        if let Some(timeout) = timeout {
            forwarded.set_timeout(timeout);
        }
        let changes = self
            .orders
            .clone()
            .watch_order(forwarded)
            .await
            .map_err(|status| watch_error(&order_id, status))?
            .into_inner();
        Ok(forward(order_id, changes, self.shutdown.clone()))
    }
}

/// Passes the order service's messages on. A stream that stops before a
/// terminal state always ends with an error, so a caller never mistakes a
/// shutdown for the end of the order's life.
fn forward(
    order_id: String,
    changes: Streaming<Order>,
    shutdown: CancellationToken,
) -> OrderStream {
    let state = Some((changes, order_id, shutdown));
    Box::pin(futures::stream::unfold(state, |state| async move {
        let (mut changes, order_id, shutdown) = state?;
        let next = tokio::select! {
            next = changes.next() => next?,
            _ = shutdown.cancelled() => return Some((Err(GatewayError::ShuttingDown.into()), None)),
        };
        match next {
            Ok(order) => Some((Ok(order), Some((changes, order_id, shutdown)))),
            Err(status) => Some((Err(watch_error(&order_id, status).into()), None)),
        }
    }))
}

/// What the order service's answer to a watch means for the caller.
fn watch_error(order_id: &str, status: Status) -> GatewayError {
    match status.code() {
        Code::NotFound => GatewayError::NotFound(order_id.to_owned()),
        Code::DeadlineExceeded => GatewayError::DeadlineExceeded(order_id.to_owned()),
        Code::InvalidArgument => {
            GatewayError::InvalidArgument(vec![FieldViolation::new("order_id", status.message())])
        }
        _ => upstream_error(status),
    }
}
