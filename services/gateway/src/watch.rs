//! `WatchOrder`: the gateway forwards each watch to an order-service
//! instance over its one HTTP/2 connection to it (a stream per watcher, not
//! a connection), so a thousand watchers cost the gateway one connection
//! per instance and each instance one database listener.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, Streaming};
use tonic_types::FieldViolation;
use uuid::Uuid;

use oms_api::orders::v1::{Order, WatchOrderRequest};
use oms_common::auth::Caller;

use crate::error::GatewayError;
use crate::service::{Gateway, upstream_error};
use crate::upstream::{OrderService as OrderServiceInstances, is_unreachable};
use crate::watch_limits::WatchPermit;

pub type OrderStream = Pin<Box<dyn Stream<Item = Result<Order, Status>> + Send>>;

impl Gateway {
    /// The order service decides whether the caller may see the order: it
    /// checks the caller's own token, passed on with the watch.
    pub(crate) async fn watch_order(
        &self,
        caller: Caller,
        request: WatchOrderRequest,
        timeout: Option<Duration>,
    ) -> Result<OrderStream, GatewayError> {
        if Uuid::parse_str(&request.order_id).is_err() {
            return Err(GatewayError::InvalidArgument(vec![FieldViolation::new(
                "order_id",
                "must be a UUID",
            )]));
        }
        let permit = self.watches.acquire(&caller)?;
        // The longest life of a watch acts as a deadline of the server's.
        let max_age = self.watches.max_age();
        let deadline = Some(Instant::now() + timeout.map_or(max_age, |t| t.min(max_age)));
        let (changes, serving) = subscribe(&self.orders, &caller, &request, deadline)
            .await
            .map_err(|status| watch_error(&request.order_id, status))?;
        Ok(forward(Watch {
            orders: Arc::clone(&self.orders),
            caller,
            request,
            deadline,
            changes,
            serving,
            last_status: None,
            resubscribed: 0,
            shutdown: self.shutdown.clone(),
            _permit: permit,
        }))
    }
}

/// Times in a row a watch may be taken to another instance without a
/// message in between, before the caller gets the error.
const MAX_RESUBSCRIBES: u32 = 5;

/// One caller's watch, as forwarded to some order-service instance.
struct Watch {
    orders: Arc<OrderServiceInstances>,
    caller: Caller,
    request: WatchOrderRequest,
    deadline: Option<Instant>,
    changes: Streaming<Order>,
    /// The instance serving the watch.
    serving: SocketAddr,
    /// The status last passed on: a watch opened again starts with the
    /// order's current state, which the caller may have seen already.
    last_status: Option<i32>,
    resubscribed: u32,
    shutdown: CancellationToken,
    /// Held while the stream lives.
    _permit: WatchPermit,
}

/// Opens the watch on an instance that answers, with what is left of the
/// caller's deadline.
async fn subscribe(
    orders: &OrderServiceInstances,
    caller: &Caller,
    request: &WatchOrderRequest,
    deadline: Option<Instant>,
) -> Result<(Streaming<Order>, SocketAddr), Status> {
    orders
        .watch_on(|mut client| {
            let mut forwarded = caller.forward(request.clone());
            if let Some(deadline) = deadline {
                forwarded.set_timeout(deadline.saturating_duration_since(Instant::now()));
            }
            async move { Ok(client.watch_order(forwarded).await?.into_inner()) }
        })
        .await
}

/// Passes the order service's messages on. When the instance serving the
/// watch goes away (stopped, killed, unreachable), the watch is opened
/// again on another and goes on from the state the caller saw last: an
/// order's states only move forward, and every watch starts with the
/// current one, so nothing in between is missed. A stream that stops
/// before a terminal state always ends with an error, so a caller never
/// mistakes a shutdown for the end of the order's life.
fn forward(watch: Watch) -> OrderStream {
    Box::pin(futures::stream::unfold(Some(watch), |state| async move {
        let mut watch = state?;
        loop {
            let deadline = async {
                match watch.deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            let next = tokio::select! {
                // A message already received goes out before the deadline ends the watch.
                biased;
                next = watch.changes.next() => next?,
                _ = watch.shutdown.cancelled() => return Some((Err(GatewayError::ShuttingDown.into()), None)),
                // The order service ends the watch then too; this is in
                // case its answer is late.
                _ = deadline => {
                    let order_id = watch.request.order_id.clone();
                    return Some((Err(GatewayError::DeadlineExceeded(order_id).into()), None));
                }
            };
            let status = match next {
                Ok(order) if watch.last_status == Some(order.status) => continue,
                Ok(order) => {
                    watch.last_status = Some(order.status);
                    watch.resubscribed = 0;
                    return Some((Ok(order), Some(watch)));
                }
                Err(status) => status,
            };
            let order_id = watch.request.order_id.clone();
            if watch
                .deadline
                .is_some_and(|deadline| deadline <= Instant::now())
            {
                return Some((Err(GatewayError::DeadlineExceeded(order_id).into()), None));
            }
            if !is_unreachable(&status) || watch.resubscribed >= MAX_RESUBSCRIBES {
                return Some((Err(watch_error(&order_id, status).into()), None));
            }
            tracing::info!(%order_id, error = %status, "the order service instance serving a watch went away, watching on another");
            // Stopping or gone: not the place to watch again.
            watch.orders.avoid(watch.serving);
            watch.resubscribed += 1;
            match subscribe(&watch.orders, &watch.caller, &watch.request, watch.deadline).await {
                Ok((changes, serving)) => (watch.changes, watch.serving) = (changes, serving),
                Err(status) => return Some((Err(watch_error(&order_id, status).into()), None)),
            }
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
