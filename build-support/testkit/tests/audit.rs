//! The audit's `duplicated` can fail: it counts what really was published
//! twice on the broker, which no table shows, since every consumer ignores
//! the second copy.

use std::collections::BTreeMap;

use uuid::Uuid;

use oms_common::topics::{
    ORDER_CREATED, PAYMENT_SUCCEEDED, PROCESS_PAYMENT, TopicNames, dead_letter_topic,
};
use oms_testkit::audit::{Topics, duplicated};
use oms_testkit::events::{self, record};
use oms_testkit::{kafka, unique_topic_prefix};

#[tokio::test(flavor = "multi_thread")]
async fn an_event_published_twice_for_an_order_counts_as_one_duplicate() {
    let prefix = unique_topic_prefix();
    let names = TopicNames::new(prefix.as_str());
    let (requested, paid) = (names.name(PROCESS_PAYMENT), names.name(PAYMENT_SUCCEEDED));
    let client = kafka::client().await;
    kafka::create_topics(&client, &[requested.clone(), paid.clone()]).await;
    let topics = Topics::on_test_broker(&prefix).await;

    let order_id = Uuid::now_v7().to_string();
    let other_id = Uuid::now_v7().to_string();
    let succeeded = record(
        &order_id,
        &events::payment_succeeded(&order_id, "payment-1", "carol"),
    );
    // One event of each type per order is the normal flow.
    kafka::publish(
        &client,
        &requested,
        &record(&order_id, &events::process_payment(&order_id, "carol")),
    )
    .await;
    kafka::publish(&client, &paid, &succeeded).await;
    kafka::publish(
        &client,
        &paid,
        &record(
            &other_id,
            &events::payment_succeeded(&other_id, "payment-2", "carol"),
        ),
    )
    .await;
    assert_eq!(duplicated(&topics).await, 0, "every event once");

    // What a relay that republished its outbox row would leave.
    kafka::publish(&client, &paid, &succeeded).await;
    assert_eq!(duplicated(&topics).await, 1, "one event twice");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_dead_lettered_more_often_than_its_topic_has_consumers_counts_as_a_duplicate() {
    let prefix = unique_topic_prefix();
    let names = TopicNames::new(prefix.as_str());
    let (created, requested) = (names.name(ORDER_CREATED), names.name(PROCESS_PAYMENT));
    let (created_dlq, requested_dlq) = (dead_letter_topic(&created), dead_letter_topic(&requested));
    let client = kafka::client().await;
    kafka::create_topics(&client, &[created_dlq.clone(), requested_dlq.clone()]).await;
    let topics = Topics::on_test_broker(&prefix).await;
    let dead_letter = |dlq: &str, source: &str, offset: i64| {
        let headers: BTreeMap<String, Vec<u8>> = [
            ("dlq_reason", "poison".to_owned()),
            ("dlq_source_topic", source.to_owned()),
            ("dlq_source_partition", "1".to_owned()),
            ("dlq_source_offset", offset.to_string()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.into_bytes()))
        .collect();
        let client = &client;
        let dlq = dlq.to_owned();
        async move { kafka::produce_raw(client, &dlq, 0, b"key", b"bad".to_vec(), headers).await }
    };

    // The order and the notification services both consume order-created,
    // and each dead-letters a poison record once.
    dead_letter(&created_dlq, &created, 3).await;
    dead_letter(&created_dlq, &created, 3).await;
    dead_letter(&requested_dlq, &requested, 3).await;
    assert_eq!(duplicated(&topics).await, 0, "once per consumer");

    dead_letter(&created_dlq, &created, 3).await;
    dead_letter(&requested_dlq, &requested, 3).await;
    assert_eq!(
        duplicated(&topics).await,
        2,
        "a third copy from order-created, a second from process-payment"
    );
}
