//! Logs that change under the consumer: a position past the end of a log
//! that is merely behind is kept, not rewound; a log recreated meanwhile is
//! read from its start.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use oms_api::orders::v1::OrderStatus;
use oms_common::schema::consumer_offsets;
use oms_common::topics::ORDER_CREATED;
use oms_testkit::events::{self, RawRecord, record};
use oms_testkit::kafka;
use order_service::SCHEMA;

mod support;
use support::{TestApp, spawn_app, start_service};

/// Four orders' records, all on one partition, and their order ids.
struct OnePartition {
    records: Vec<RawRecord>,
    ids: Vec<String>,
    partition: i32,
}

fn four_orders(customer: &str) -> OnePartition {
    let mut records: Vec<RawRecord> = (0..4)
        .map(|_| {
            let order_id = Uuid::now_v7().to_string();
            record(&order_id, &events::order_created(&order_id, customer))
        })
        .collect();
    let ids = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.key).into_owned())
        .collect();
    let key = records[0].key.clone();
    for raw in &mut records {
        raw.key.clone_from(&key);
    }
    OnePartition {
        partition: oms_common::kafka::partition_for_key(&key, kafka::TEST_PARTITIONS as usize),
        records,
        ids,
    }
}

/// Starts an order service whose stored position on the partition is 3,
/// stored after a record with `last_ce_id`, while the log holds only the
/// first two records, and lets it look for a while; the caller publishes
/// the rest to the returned topic.
async fn with_position_past_the_end(orders: &OnePartition, last_ce_id: &str) -> (TestApp, String) {
    let TestApp {
        service,
        db,
        kafka: client,
        topics,
        prefix,
    } = spawn_app().await;
    service.stop().await.expect("clean shutdown");
    let topic = topics.name(ORDER_CREATED);
    for raw in &orders.records[..2] {
        kafka::publish(&client, &topic, raw).await;
    }
    diesel::insert_into(consumer_offsets::table)
        .values((
            consumer_offsets::topic.eq(&topic),
            consumer_offsets::partition_id.eq(orders.partition),
            consumer_offsets::next_offset.eq(3_i64),
            consumer_offsets::last_ce_id.eq(last_ce_id),
            // Too recent for the records' times to prove anything.
            consumer_offsets::last_record_time.eq(chrono::Utc::now()),
        ))
        .execute(&mut db.connect(SCHEMA).await)
        .await
        .expect("position");
    let app = TestApp {
        service: start_service(&db, &prefix).await,
        db,
        kafka: client,
        topics,
        prefix,
    };
    // The consumer sees its position past the end for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    (app, topic)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_position_past_the_end_of_a_log_that_is_behind_waits_instead_of_replaying_it() {
    // Two records already read, and a position stored after a third that
    // the log has lost (as when a broker lost its tail).
    let orders = four_orders("erin");
    let read_at_2 = String::from_utf8_lossy(&orders.records[2].headers["ce_id"]).into_owned();
    let (app, topic) = with_position_past_the_end(&orders, &read_at_2).await;
    // The log catches up: the record read at offset 2 comes back, and
    // offset 3 is new.
    kafka::publish(&app.kafka, &topic, &orders.records[2]).await;
    kafka::publish(&app.kafka, &topic, &orders.records[3]).await;
    app.wait_for_status(&orders.ids[3], OrderStatus::AwaitingPayment)
        .await;
    for already_read in &orders.ids[..3] {
        assert!(
            app.get_order(already_read).await.is_err(),
            "order {already_read} was read again: the log was replayed"
        );
    }
    app.service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_recreated_while_the_consumer_waits_is_read_from_its_start() {
    // A position stored in a log that is gone; the new log grows past it,
    // and the record before it is not the one read last.
    let orders = four_orders("finn");
    let (app, topic) = with_position_past_the_end(&orders, "read-in-the-old-log").await;
    kafka::publish(&app.kafka, &topic, &orders.records[2]).await;
    kafka::publish(&app.kafka, &topic, &orders.records[3]).await;
    for order_id in &orders.ids {
        app.wait_for_status(order_id, OrderStatus::AwaitingPayment)
            .await;
    }
    app.service.stop().await.expect("clean shutdown");
}
