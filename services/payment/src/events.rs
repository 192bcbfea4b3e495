//! What the payment service does with `process-payment`: ask the provider,
//! record the payment (completed or declined, once per order) and announce
//! the outcome on `payment-succeeded` or `payment-failed`.

use chrono::Utc;
use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use uuid::Uuid;

use oms_api::Event;
use oms_api::money;
use oms_api::orders::events::v1::{PaymentFailed, PaymentSucceeded, ProcessPayment};
use oms_common::consumer::{EventHandler, InboundRecord, Rejection};
use oms_common::outbox::OutboxMessage;

use crate::provider::{Charge, Decision, PaymentProvider};
use crate::repository::{self, NewPayment, STATUS_COMPLETED, STATUS_DECLINED};

/// A payment request that passed validation.
#[derive(Debug, Clone)]
pub struct PaymentRequest {
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount_minor: i64,
    pub currency_code: String,
}

pub struct PaymentEvents<P> {
    pub provider: P,
    /// Full names of the `payment-succeeded` and `payment-failed` topics.
    pub payment_succeeded_topic: String,
    pub payment_failed_topic: String,
    pub source: &'static str,
}

impl<P: PaymentProvider> EventHandler for PaymentEvents<P> {
    type Event = PaymentRequest;

    fn decode(&self, record: &InboundRecord) -> Result<PaymentRequest, Rejection> {
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
        requests: Vec<PaymentRequest>,
    ) -> QueryResult<Vec<OutboxMessage>> {
        let new_payments: Vec<NewPayment> = requests
            .into_iter()
            .map(|request| self.decide(request))
            .collect();
        let mut inserted = repository::insert_new(conn, &new_payments).await?;
        let mut outbox = Vec::new();
        for payment in new_payments {
            // Of a request repeated within the batch, only the payment that
            // was recorded is announced.
            if !inserted.remove(&payment.payment_id) {
                tracing::debug!(order_id = %payment.order_id, "duplicate process-payment ignored");
                continue;
            }
            outbox.push(self.announce(payment));
        }
        Ok(outbox)
    }
}

impl<P: PaymentProvider> PaymentEvents<P> {
    /// Asks the provider and describes the payment to record.
    fn decide(&self, request: PaymentRequest) -> NewPayment {
        let charge = Charge {
            customer_id: &request.customer_id,
            amount_minor: request.amount_minor,
            currency_code: &request.currency_code,
        };
        let decision = self.provider.decide(charge);
        NewPayment {
            payment_id: Uuid::now_v7(),
            order_id: request.order_id,
            customer_id: request.customer_id,
            amount_minor: request.amount_minor,
            currency_code: request.currency_code,
            status: match decision {
                Decision::Approved => STATUS_COMPLETED,
                Decision::Declined { .. } => STATUS_DECLINED,
            },
            decline_reason: match &decision {
                Decision::Approved => None,
                Decision::Declined { reason } => Some(reason.clone()),
            },
        }
    }
}

impl<P> PaymentEvents<P> {
    /// The event that tells the others how the payment went.
    fn announce(&self, payment: NewPayment) -> OutboxMessage {
        let time = Some(oms_api::time::to_timestamp(Utc::now()));
        let amount = Some(money::from_minor_units(
            &payment.currency_code,
            payment.amount_minor,
        ));
        let order_id = payment.order_id.to_string();
        match payment.decline_reason {
            None => {
                tracing::info!(%order_id, payment_id = %payment.payment_id, "payment completed");
                let event = PaymentSucceeded {
                    order_id: order_id.clone(),
                    payment_id: payment.payment_id.to_string(),
                    customer_id: payment.customer_id,
                    amount,
                    complete_time: time,
                };
                OutboxMessage::event(
                    self.payment_succeeded_topic.clone(),
                    self.source,
                    &order_id,
                    &event,
                )
            }
            Some(reason) => {
                tracing::info!(%order_id, %reason, "payment declined");
                let event = PaymentFailed {
                    order_id: order_id.clone(),
                    customer_id: payment.customer_id,
                    amount,
                    reason,
                    fail_time: time,
                };
                OutboxMessage::event(
                    self.payment_failed_topic.clone(),
                    self.source,
                    &order_id,
                    &event,
                )
            }
        }
    }
}

fn validate(request: ProcessPayment) -> Result<PaymentRequest, Rejection> {
    let order_id = Uuid::parse_str(&request.order_id)
        .map_err(|_| Rejection(format!("order_id {:?} is not a UUID", request.order_id)))?;
    let amount = money::parse_amount(request.amount).map_err(|err| Rejection(err.to_string()))?;
    if request.customer_id.is_empty() {
        return Err(Rejection("customer_id is missing".into()));
    }
    Ok(PaymentRequest {
        order_id,
        customer_id: request.customer_id,
        amount_minor: amount.minor_units,
        currency_code: amount.currency_code,
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
    fn valid_payment_request_keeps_its_amount_exactly() {
        let request = ProcessPayment {
            order_id: Uuid::now_v7().to_string(),
            customer_id: "c".into(),
            amount: Some(Money {
                currency_code: "USD".into(),
                units: 3,
                nanos: 10_000_000,
            }),
        };
        let request = validate(request).unwrap();
        assert_eq!(
            (request.amount_minor, request.currency_code.as_str()),
            (301, "USD")
        );
    }
}
