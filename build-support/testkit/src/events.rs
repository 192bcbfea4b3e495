//! Builders for the events tests publish, and readers for offsets.

use std::collections::BTreeMap;

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use oms_api::google::r#type::Money;
use oms_api::orders::events::v1::{OrderCreated, PaymentSucceeded, ProcessPayment};
use oms_api::{Event, EventEnvelope};
use oms_common::schema::{consumer_offsets, outbox};

/// A record's parts as a producer sends them.
#[derive(Debug, Clone)]
pub struct RawRecord {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: BTreeMap<String, Vec<u8>>,
}

/// Wraps `event` in a fresh envelope, keyed by `order_id`.
pub fn record<E: Event>(order_id: &str, event: &E) -> RawRecord {
    RawRecord {
        key: order_id.as_bytes().to_vec(),
        value: event.encode_to_vec(),
        headers: EventEnvelope::new::<E>("/tests", order_id).to_headers(),
    }
}

pub fn euros(units: i64, cents: i32) -> Money {
    Money {
        currency_code: "EUR".into(),
        units,
        nanos: cents * 10_000_000,
    }
}

pub fn order_created(order_id: &str, customer_id: &str) -> OrderCreated {
    OrderCreated {
        order_id: order_id.to_owned(),
        customer_id: customer_id.to_owned(),
        product_id: "product-1".into(),
        quantity: 3,
        amount: Some(euros(42, 50)),
        request_id: String::new(),
        create_time: Some(prost_types_now()),
    }
}

pub fn process_payment(order_id: &str, customer_id: &str) -> ProcessPayment {
    ProcessPayment {
        order_id: order_id.to_owned(),
        customer_id: customer_id.to_owned(),
        amount: Some(euros(42, 50)),
    }
}

pub fn payment_succeeded(order_id: &str, payment_id: &str, customer_id: &str) -> PaymentSucceeded {
    PaymentSucceeded {
        order_id: order_id.to_owned(),
        payment_id: payment_id.to_owned(),
        customer_id: customer_id.to_owned(),
        amount: Some(euros(42, 50)),
        complete_time: Some(prost_types_now()),
    }
}

fn prost_types_now() -> prost_types::Timestamp {
    oms_api::time::to_timestamp(chrono::Utc::now())
}

/// How many records of `topic` the consumer has committed: the sum of its
/// partitions' next offsets.
pub async fn committed_records(conn: &mut AsyncPgConnection, topic: &str) -> i64 {
    consumer_offsets::table
        .filter(consumer_offsets::topic.eq(topic))
        .select(consumer_offsets::next_offset)
        .load::<i64>(conn)
        .await
        .unwrap_or_default()
        .into_iter()
        .sum()
}

/// Forgets the consumer's offsets, so that it reads everything again: a
/// redelivery of every record it has seen.
pub async fn forget_offsets(conn: &mut AsyncPgConnection) {
    diesel::delete(consumer_offsets::table)
        .execute(conn)
        .await
        .expect("delete offsets");
}

/// Waits until the service's outbox is empty: the relay has published, and
/// the broker acknowledged, every event the committed work wrote.
pub async fn wait_until_outbox_drained(db: &crate::TestDatabase, schema: &str) {
    crate::eventually(
        "the outbox to drain",
        std::time::Duration::from_secs(20),
        || async {
            outbox::table
                .count()
                .get_result::<i64>(&mut db.connect(schema).await)
                .await
                .is_ok_and(|rows| rows == 0)
        },
    )
    .await;
}
