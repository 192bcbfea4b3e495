//! What the notification service does with `order-created` and
//! `payment-succeeded`: one notification row per (order, kind).

use std::collections::HashSet;

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use oms_api::Event;
use oms_api::money;
use oms_api::orders::events::v1::{OrderCreated, PaymentFailed, PaymentSucceeded};
use oms_api::validation::{self, OrderFields};
use oms_common::consumer::{EventHandler, InboundRecord, Rejection};
use oms_common::outbox::OutboxMessage;

use crate::schema::notifications;

pub const KIND_ORDER_RECEIVED: &str = "ORDER_RECEIVED";
pub const KIND_PAYMENT_SUCCEEDED: &str = "PAYMENT_SUCCEEDED";
pub const KIND_PAYMENT_FAILED: &str = "PAYMENT_FAILED";

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = notifications)]
pub struct NewNotification {
    pub order_id: Uuid,
    pub customer_id: String,
    pub kind: &'static str,
    pub message: String,
}

pub struct NotificationEvents;

impl EventHandler for NotificationEvents {
    type Event = NewNotification;

    fn decode(&self, record: &InboundRecord) -> Result<NewNotification, Rejection> {
        let envelope = record.envelope()?;
        match envelope.event_type.as_str() {
            OrderCreated::TYPE => {
                let event: OrderCreated = record.decode()?;
                // The order service's rules exactly: an order it dead-letters
                // is never announced as received.
                Rejection::unless_valid(&validation::order_violations(OrderFields::from(&event)))?;
                validation::event_time(event.create_time.as_ref())
                    .ok_or_else(|| Rejection("create_time is missing or out of range".into()))?;
                Ok(NewNotification {
                    order_id: parse_order_id(&event.order_id)?,
                    message: format!(
                        "we received your order {} for {} x {}",
                        event.order_id, event.quantity, event.product_id
                    ),
                    customer_id: required_customer(event.customer_id)?,
                    kind: KIND_ORDER_RECEIVED,
                })
            }
            PaymentSucceeded::TYPE => {
                let event: PaymentSucceeded = record.decode()?;
                let amount = event
                    .amount
                    .as_ref()
                    .and_then(|amount| {
                        money::to_minor_units(amount).map(|minor| (minor, &amount.currency_code))
                    })
                    .ok_or_else(|| Rejection("amount is missing or invalid".into()))?;
                Ok(NewNotification {
                    order_id: parse_order_id(&event.order_id)?,
                    message: format!(
                        "your payment of {}.{:02} {} for order {} succeeded",
                        amount.0 / 100,
                        amount.0 % 100,
                        amount.1,
                        event.order_id
                    ),
                    customer_id: required_customer(event.customer_id)?,
                    kind: KIND_PAYMENT_SUCCEEDED,
                })
            }
            PaymentFailed::TYPE => {
                let event: PaymentFailed = record.decode()?;
                let mut violations = Vec::new();
                validation::check_reason(&mut violations, "reason", &event.reason);
                Rejection::unless_valid(&violations)?;
                Ok(NewNotification {
                    order_id: parse_order_id(&event.order_id)?,
                    message: format!(
                        "your payment for order {} was declined ({}); the order is cancelled",
                        event.order_id, event.reason
                    ),
                    customer_id: required_customer(event.customer_id)?,
                    kind: KIND_PAYMENT_FAILED,
                })
            }
            other => Err(Rejection(format!("unknown ce_type {other:?}"))),
        }
    }

    async fn apply(
        &self,
        conn: &mut AsyncPgConnection,
        notifications: Vec<NewNotification>,
    ) -> QueryResult<Vec<OutboxMessage>> {
        // A thousand rows per statement, well inside PostgreSQL's 65,535
        // bind parameters.
        for chunk in notifications.chunks(1_000) {
            let mut inserted: HashSet<(Uuid, String)> = diesel::insert_into(notifications::table)
                .values(chunk)
                .on_conflict((notifications::order_id, notifications::kind))
                .do_nothing()
                .returning((notifications::order_id, notifications::kind))
                .get_results(conn)
                .await?
                .into_iter()
                .collect();
            for notification in chunk {
                // Removed once logged: a repeat within the batch, or of one
                // recorded before, is not logged again.
                if inserted.remove(&(notification.order_id, notification.kind.to_owned())) {
                    tracing::info!(
                        order_id = %notification.order_id,
                        customer_id = %notification.customer_id,
                        kind = notification.kind,
                        message = %notification.message,
                        "notification recorded"
                    );
                }
            }
        }
        // Notifications are the end of the line: nothing to publish.
        Ok(Vec::new())
    }
}

fn parse_order_id(value: &str) -> Result<Uuid, Rejection> {
    Uuid::parse_str(value).map_err(|_| Rejection(format!("order_id {value:?} is not a UUID")))
}

fn required_customer(customer_id: String) -> Result<String, Rejection> {
    let mut violations = Vec::new();
    validation::check_text(
        &mut violations,
        "customer_id",
        &customer_id,
        validation::MAX_ID_CHARS,
        true,
    );
    Rejection::unless_valid(&violations)?;
    Ok(customer_id)
}
