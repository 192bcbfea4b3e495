//! What the payment service does with `process-payment`.

use chrono::Utc;
use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use uuid::Uuid;

use oms_api::Event;
use oms_api::money;
use oms_api::orders::events::v1::{PaymentSucceeded, ProcessPayment};
use oms_common::consumer::{EventHandler, InboundRecord, Rejection};
use oms_common::outbox::OutboxMessage;

use crate::repository::{self, NewPayment, STATUS_COMPLETED};

pub struct PaymentEvents {
    /// Full name of the `payment-succeeded` topic.
    pub payment_succeeded_topic: String,
    pub source: &'static str,
}

impl EventHandler for PaymentEvents {
    type Event = NewPayment;

    fn decode(&self, record: &InboundRecord) -> Result<NewPayment, Rejection> {
        let envelope = record.envelope()?;
        if envelope.event_type != ProcessPayment::TYPE {
            return Err(Rejection(format!(
                "unknown ce_type {:?}",
                envelope.event_type
            )));
        }
        validate(record.decode()?)
    }

    async fn apply(
        &self,
        conn: &mut AsyncPgConnection,
        payments: Vec<NewPayment>,
    ) -> QueryResult<Vec<OutboxMessage>> {
        let mut outbox = Vec::new();
        for payment in payments {
            if !repository::insert_if_new(conn, &payment).await? {
                tracing::debug!(order_id = %payment.order_id, "duplicate process-payment ignored");
                continue;
            }
            tracing::info!(order_id = %payment.order_id, payment_id = %payment.payment_id, "payment completed");
            let now = Utc::now();
            let event = PaymentSucceeded {
                order_id: payment.order_id.to_string(),
                payment_id: payment.payment_id.to_string(),
                customer_id: payment.customer_id,
                amount: Some(money::from_minor_units(
                    &payment.currency_code,
                    payment.amount_minor,
                )),
                complete_time: Some(prost_types::Timestamp {
                    seconds: now.timestamp(),
                    nanos: now.timestamp_subsec_nanos() as i32,
                }),
            };
            outbox.push(OutboxMessage::event(
                self.payment_succeeded_topic.clone(),
                self.source,
                &event.order_id,
                &event,
            ));
        }
        Ok(outbox)
    }
}

fn validate(request: ProcessPayment) -> Result<NewPayment, Rejection> {
    let order_id = Uuid::parse_str(&request.order_id)
        .map_err(|_| Rejection(format!("order_id {:?} is not a UUID", request.order_id)))?;
    let amount = request
        .amount
        .ok_or_else(|| Rejection("amount is missing".into()))?;
    let amount_minor = money::to_minor_units(&amount)
        .filter(|minor| *minor > 0)
        .ok_or_else(|| Rejection("amount is not a positive whole number of cents".into()))?;
    if amount.currency_code.len() != 3
        || !amount.currency_code.chars().all(|c| c.is_ascii_uppercase())
    {
        return Err(Rejection(format!(
            "currency_code {:?} is invalid",
            amount.currency_code
        )));
    }
    if request.customer_id.is_empty() {
        return Err(Rejection("customer_id is missing".into()));
    }
    Ok(NewPayment {
        payment_id: Uuid::now_v7(),
        order_id,
        customer_id: request.customer_id,
        amount_minor,
        currency_code: amount.currency_code,
        status: STATUS_COMPLETED,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oms_api::google::r#type::Money;

    #[test]
    fn payment_request_without_amount_is_poison() {
        let request = ProcessPayment {
            order_id: Uuid::now_v7().to_string(),
            customer_id: "c".into(),
            amount: None,
        };
        assert_eq!(validate(request).unwrap_err().0, "amount is missing");
    }

    #[test]
    fn valid_payment_request_becomes_a_completed_payment() {
        let request = ProcessPayment {
            order_id: Uuid::now_v7().to_string(),
            customer_id: "c".into(),
            amount: Some(Money {
                currency_code: "USD".into(),
                units: 3,
                nanos: 10_000_000,
            }),
        };
        let payment = validate(request).unwrap();
        assert_eq!(payment.amount_minor, 301);
        assert_eq!(payment.status, STATUS_COMPLETED);
    }
}
