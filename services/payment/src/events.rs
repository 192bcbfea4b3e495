//! What the payment service does with `process-payment`: record the
//! payment as PENDING, once per order, in the batch's transaction. Nothing
//! is asked of the provider and nothing is announced here; the settlement
//! worker (`settlement`), woken after each commit, does both outside any
//! transaction. So a retried batch asks no one, and a redelivered request
//! finds the order's payment recorded and changes nothing.

use std::sync::Arc;

use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use tokio::sync::Notify;
use uuid::Uuid;

use oms_api::Event;
use oms_api::money;
use oms_api::orders::events::v1::ProcessPayment;
use oms_api::validation;
use oms_common::consumer::{EventHandler, InboundRecord, Rejection};
use oms_common::outbox::OutboxMessage;
use oms_common::telemetry::causes;

use crate::repository::{self, NewPayment, STATUS_PENDING};

/// A payment request that passed validation.
#[derive(Debug, Clone)]
pub struct PaymentRequest {
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount_minor: i64,
    pub currency_code: String,
}

pub struct PaymentEvents {
    /// Wakes the settlement worker once a batch's payments are committed.
    pub settlement_wakeup: Arc<Notify>,
}

impl EventHandler for PaymentEvents {
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
        let new_payments: Vec<NewPayment> = requests.into_iter().map(pending).collect();
        let recorded = repository::insert_new(conn, &new_payments).await?;
        if recorded < new_payments.len() {
            tracing::debug!(
                duplicates = new_payments.len() - recorded,
                "process-payment for orders with a payment ignored"
            );
        }
        Ok(Vec::new())
    }

    fn committed(&self) {
        self.settlement_wakeup.notify_one();
    }
}

/// The payment to record for a request; its id is chosen here, once, since
/// a later request for the same order inserts nothing.
fn pending(request: PaymentRequest) -> NewPayment {
    NewPayment {
        payment_id: Uuid::now_v7(),
        order_id: request.order_id,
        customer_id: request.customer_id,
        amount_minor: request.amount_minor,
        currency_code: request.currency_code,
        status: STATUS_PENDING,
        trace_parent: causes::traceparent_of(request.order_id.to_string().as_bytes()),
    }
}

fn validate(request: ProcessPayment) -> Result<PaymentRequest, Rejection> {
    let order_id = Uuid::parse_str(&request.order_id)
        .map_err(|_| Rejection(format!("order_id {:?} is not a UUID", request.order_id)))?;
    let mut violations = Vec::new();
    validation::check_text(
        &mut violations,
        "customer_id",
        &request.customer_id,
        validation::MAX_ID_CHARS,
        true,
    );
    if let Some(amount) = &request.amount {
        validation::check_amount(&mut violations, amount);
    }
    Rejection::unless_valid(&violations)?;
    let amount = money::parse_amount(request.amount).map_err(|err| Rejection(err.to_string()))?;
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
    fn payment_request_the_database_would_refuse_is_poison() {
        let request = |customer_id: String| ProcessPayment {
            order_id: Uuid::now_v7().to_string(),
            customer_id,
            amount: Some(Money {
                currency_code: "EUR".into(),
                units: 1,
                nanos: 0,
            }),
        };
        assert!(validate(request("c".repeat(3_000))).is_err());
        assert!(validate(request("nul\0".into())).is_err());
        assert!(validate(request(String::new())).is_err());
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
