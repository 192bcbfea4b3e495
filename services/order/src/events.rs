//! What the order service does with `order-created` and `payment-succeeded`.

use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use uuid::Uuid;

use oms_api::Event;
use oms_api::money;
use oms_api::orders::events::v1::{OrderCreated, PaymentFailed, PaymentSucceeded, ProcessPayment};
use oms_api::validation::{self, OrderFields};
use oms_common::consumer::{EventHandler, InboundRecord, Rejection};
use oms_common::outbox::OutboxMessage;

use crate::metrics;
use crate::repository::{self, NewOrder, STATUS_AWAITING_PAYMENT, STATUS_CANCELLED, STATUS_PAID};

#[derive(Debug)]
pub enum OrderEvent {
    Created(NewOrder),
    Paid { order_id: Uuid, payment_id: Uuid },
    PaymentFailed { order_id: Uuid, reason: String },
}

pub struct OrderEvents {
    /// Full name of the `process-payment` topic.
    pub process_payment_topic: String,
    pub source: &'static str,
}

impl EventHandler for OrderEvents {
    type Event = OrderEvent;

    fn decode(&self, record: &InboundRecord) -> Result<OrderEvent, Rejection> {
        let envelope = record.envelope()?;
        match envelope.event_type.as_str() {
            OrderCreated::TYPE => validate_created(record.decode()?).map(OrderEvent::Created),
            PaymentSucceeded::TYPE => {
                let event: PaymentSucceeded = record.decode()?;
                Ok(OrderEvent::Paid {
                    order_id: parse_uuid("order_id", &event.order_id)?,
                    payment_id: parse_uuid("payment_id", &event.payment_id)?,
                })
            }
            PaymentFailed::TYPE => {
                let event: PaymentFailed = record.decode()?;
                let mut violations = Vec::new();
                validation::check_reason(&mut violations, "reason", &event.reason);
                Rejection::unless_valid(&violations)?;
                Ok(OrderEvent::PaymentFailed {
                    order_id: parse_uuid("order_id", &event.order_id)?,
                    reason: event.reason,
                })
            }
            other => Err(Rejection(format!("unknown ce_type {other:?}"))),
        }
    }

    async fn apply(
        &self,
        conn: &mut AsyncPgConnection,
        events: Vec<OrderEvent>,
    ) -> QueryResult<Vec<OutboxMessage>> {
        let mut outbox = Vec::new();
        // New orders are recorded together, in one statement; a batch of
        // one topic holds only those or only transitions.
        let mut new_orders = Vec::new();
        let mut paid = Vec::new();
        for event in events {
            match event {
                OrderEvent::Created(order) => new_orders.push(order),
                OrderEvent::Paid {
                    order_id,
                    payment_id,
                } => paid.push((order_id, payment_id)),
                OrderEvent::PaymentFailed { order_id, reason } => {
                    if let Some(create_time) =
                        repository::mark_cancelled(conn, order_id, &reason).await?
                    {
                        tracing::info!(%order_id, %reason, "order cancelled, payment declined");
                        metrics::finished(STATUS_CANCELLED, create_time);
                    } else {
                        refused(conn, order_id, STATUS_CANCELLED).await?;
                    }
                }
            }
        }
        self.record(conn, new_orders, &mut outbox).await?;
        mark_paid(conn, paid).await?;
        Ok(outbox)
    }
}

/// Marks the orders paid together, in one statement, and explains each
/// payment that changed nothing.
async fn mark_paid(conn: &mut AsyncPgConnection, paid: Vec<(Uuid, Uuid)>) -> QueryResult<()> {
    if paid.is_empty() {
        return Ok(());
    }
    let mut changed = repository::mark_all_paid(conn, &paid).await?;
    for (order_id, payment_id) in paid {
        // Removed once reported, so a repeat within the batch is refused.
        if let Some(create_time) = changed.remove(&order_id) {
            tracing::info!(%order_id, %payment_id, "order paid");
            metrics::finished(STATUS_PAID, create_time);
        } else {
            refused(conn, order_id, STATUS_PAID).await?;
        }
    }
    Ok(())
}

impl OrderEvents {
    /// Inserts the orders not seen before and requests their payment.
    async fn record(
        &self,
        conn: &mut AsyncPgConnection,
        new_orders: Vec<NewOrder>,
        outbox: &mut Vec<OutboxMessage>,
    ) -> QueryResult<()> {
        let mut inserted = repository::insert_new(conn, &new_orders).await?;
        for order in new_orders {
            // Removed once used, so a record repeated within the batch
            // requests one payment.
            if !inserted.remove(&order.order_id) {
                tracing::debug!(order_id = %order.order_id, "duplicate order-created ignored");
                continue;
            }
            tracing::info!(order_id = %order.order_id, "order recorded, payment requested");
            let request = ProcessPayment {
                order_id: order.order_id.to_string(),
                customer_id: order.customer_id,
                amount: Some(money::from_minor_units(
                    &order.currency_code,
                    order.amount_minor,
                )),
            };
            outbox.push(OutboxMessage::event(
                self.process_payment_topic.clone(),
                self.source,
                &request.order_id,
                &request,
            ));
        }
        Ok(())
    }
}

/// Logs why a transition to `target` changed nothing: a repeat of the
/// transition already made is routine; anything else would move the order
/// out of a terminal state (or it is unknown) and is refused.
async fn refused(conn: &mut AsyncPgConnection, order_id: Uuid, target: &str) -> QueryResult<()> {
    match repository::status_of(conn, order_id).await? {
        Some(current) if current == target => {
            tracing::debug!(%order_id, status = %current, "repeated event changed nothing");
        }
        Some(current) => {
            tracing::warn!(%order_id, from = %current, to = target, "illegal transition refused");
        }
        None => tracing::warn!(%order_id, to = target, "event for an unknown order ignored"),
    }
    Ok(())
}

fn parse_uuid(field: &str, value: &str) -> Result<Uuid, Rejection> {
    Uuid::parse_str(value).map_err(|_| Rejection(format!("{field} {value:?} is not a UUID")))
}

/// The consumer's own check of the gateway's validation, with the same
/// rules: a record that bypassed the gateway must not corrupt the table, nor
/// carry what the database refuses and block its partition.
fn validate_created(event: OrderCreated) -> Result<NewOrder, Rejection> {
    let order_id = parse_uuid("order_id", &event.order_id)?;
    Rejection::unless_valid(&validation::order_violations(OrderFields::from(&event)))?;
    let amount = money::parse_amount(event.amount).map_err(|err| Rejection(err.to_string()))?;
    let create_time = validation::event_time(event.create_time.as_ref())
        .ok_or_else(|| Rejection("create_time is missing or out of range".into()))?;
    Ok(NewOrder {
        order_id,
        customer_id: event.customer_id,
        product_id: event.product_id,
        quantity: event.quantity,
        amount_minor: amount.minor_units,
        currency_code: amount.currency_code,
        request_id: Some(event.request_id).filter(|id| !id.is_empty()),
        status: STATUS_AWAITING_PAYMENT,
        create_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oms_api::google::r#type::Money;

    fn valid_event() -> OrderCreated {
        OrderCreated {
            order_id: Uuid::now_v7().to_string(),
            customer_id: "c-1".into(),
            product_id: "p-1".into(),
            quantity: 2,
            amount: Some(Money {
                currency_code: "EUR".into(),
                units: 10,
                nanos: 500_000_000,
            }),
            request_id: String::new(),
            create_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
        }
    }

    #[test]
    fn valid_order_created_becomes_an_order_awaiting_payment() {
        let order = validate_created(valid_event()).unwrap();
        assert_eq!(order.amount_minor, 1050);
        assert_eq!(order.status, STATUS_AWAITING_PAYMENT);
        assert_eq!(order.request_id, None);
    }

    #[test]
    fn order_created_that_bypassed_validation_is_rejected() {
        let mut event = valid_event();
        event.order_id = "not-a-uuid".into();
        assert!(validate_created(event).is_err());
        let mut event = valid_event();
        event.amount = None;
        assert!(validate_created(event).is_err());
        let mut event = valid_event();
        event.quantity = 0;
        assert!(validate_created(event).is_err());
    }

    #[test]
    fn order_created_the_database_would_refuse_is_rejected() {
        let mut event = valid_event();
        event.customer_id = "eve\0".into();
        assert!(validate_created(event).is_err(), "NUL");
        let mut event = valid_event();
        event.product_id = "p".repeat(3_000);
        assert!(validate_created(event).is_err(), "past the index-row limit");
        let mut event = valid_event();
        event.request_id = "r\0".into();
        assert!(validate_created(event).is_err(), "NUL in request_id");
        let mut event = valid_event();
        event.create_time = Some(prost_types::Timestamp {
            seconds: 300_000_000_000,
            nanos: 0,
        });
        assert!(validate_created(event).is_err(), "year 11476");
    }
}
