//! One WatchOrder call: the order's current state, then one message per
//! change, ending after a terminal state, at the call's deadline, or when the
//! service shuts down. It reads nothing itself; its subscription is fed by
//! the process's one change listener (see `watch`).

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

use oms_api::orders::v1::Order;
use oms_common::auth::Caller;

use crate::error::OrderError;
use crate::watch::Subscription;

/// How long a call without a deadline waits for an order to be recorded.
pub const UNRECORDED_WAIT: Duration = Duration::from_secs(60);

pub type OrderStream = Pin<Box<dyn Stream<Item = Result<Order, Status>> + Send>>;

pub struct OrderWatch {
    pub order_id: Uuid,
    pub subscription: Subscription,
    /// When the caller's deadline passes, if it set one.
    pub deadline: Option<Instant>,
    pub shutdown: CancellationToken,
    /// Who may see the order: for anyone else it stays unrecorded, and the
    /// watch ends NOT_FOUND just as for an order that does not exist.
    viewer: Caller,
    /// When to stop waiting for an order that is not recorded.
    unrecorded_until: Instant,
    /// The version of the last message sent; 0 before the first.
    sent_version: i32,
    finished: bool,
}

impl OrderWatch {
    pub fn new(
        order_id: Uuid,
        subscription: Subscription,
        viewer: Caller,
        timeout: Option<Duration>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            order_id,
            subscription,
            deadline: timeout.map(|timeout| Instant::now() + timeout),
            shutdown,
            viewer,
            unrecorded_until: Instant::now() + UNRECORDED_WAIT,
            sent_version: 0,
            finished: false,
        }
    }

    pub fn into_stream(self) -> OrderStream {
        Box::pin(futures::stream::unfold(self, |mut watch| async move {
            if watch.finished {
                return None;
            }
            let next = watch.next_change().await;
            watch.finished = next.is_err() || watch.finished;
            Some((next.map_err(Status::from), watch))
        }))
    }

    async fn next_change(&mut self) -> Result<Order, OrderError> {
        let unrecorded_until = self.unrecorded_until;
        loop {
            let latest = self.subscription.latest().borrow_and_update().clone();
            let visible = latest.filter(|s| {
                s.version > self.sent_version && self.viewer.may_access(&s.order.customer_id)
            });
            if let Some(snapshot) = visible {
                self.sent_version = snapshot.version;
                self.finished = snapshot.is_terminal;
                return Ok(snapshot.order.clone());
            }
            let give_up_at = match (self.deadline, self.sent_version) {
                (Some(deadline), 0) => Some(deadline.min(unrecorded_until)),
                (None, 0) => Some(unrecorded_until),
                (deadline, _) => deadline,
            };
            let give_up = async {
                match give_up_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = self.subscription.latest().changed() => {
                    // The sender lives as long as any subscription to it.
                    if changed.is_err() {
                        return Err(OrderError::ShuttingDown);
                    }
                }
                _ = give_up => {
                    let deadline_passed = self.deadline.is_some_and(|d| d <= Instant::now());
                    return Err(if deadline_passed {
                        OrderError::DeadlineExceeded(self.order_id)
                    } else {
                        OrderError::NotFound(self.order_id)
                    });
                }
                _ = self.shutdown.cancelled() => return Err(OrderError::ShuttingDown),
            }
        }
    }
}
