//! Logs that change under the consumer: a position past the end of a log
//! that is merely behind is kept, not rewound.

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

#[tokio::test(flavor = "multi_thread")]
async fn a_position_past_the_end_of_a_log_that_is_behind_waits_instead_of_replaying_it() {
    let TestApp {
        service,
        db,
        kafka: client,
        topics,
        prefix,
    } = spawn_app().await;
    service.stop().await.expect("clean shutdown");

    // Two records already read, and a position stored after a third that
    // the log has lost (as when a broker lost its tail): the log is behind.
    let records: Vec<RawRecord> = (0..4)
        .map(|_| {
            let order_id = Uuid::now_v7().to_string();
            record(&order_id, &events::order_created(&order_id, "erin"))
        })
        .collect();
    let key = records[0].key.clone();
    let ids: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.key).into_owned())
        .collect();
    let records: Vec<RawRecord> = records
        .into_iter()
        .map(|mut r| {
            r.key.clone_from(&key);
            r
        })
        .collect();
    let partition = oms_common::kafka::partition_for_key(&key, kafka::TEST_PARTITIONS as usize);
    let topic = topics.name(ORDER_CREATED);
    kafka::publish(&client, &topic, &records[0]).await;
    kafka::publish(&client, &topic, &records[1]).await;
    let read_at_2 = String::from_utf8_lossy(&records[2].headers["ce_id"]).into_owned();
    let mut conn = db.connect(SCHEMA).await;
    diesel::insert_into(consumer_offsets::table)
        .values((
            consumer_offsets::topic.eq(&topic),
            consumer_offsets::partition_id.eq(partition),
            consumer_offsets::next_offset.eq(3_i64),
            consumer_offsets::last_ce_id.eq(read_at_2),
            consumer_offsets::last_record_time.eq(chrono::Utc::now()),
        ))
        .execute(&mut conn)
        .await
        .expect("position");
    let app = TestApp {
        service: start_service(&db, &prefix).await,
        db,
        kafka: client,
        topics,
        prefix,
    };
    // The consumer sees its position past the end for a while, then the
    // log catches up: the record read at offset 2 comes back, and offset 3
    // is new.
    tokio::time::sleep(Duration::from_secs(2)).await;
    kafka::publish(&app.kafka, &topic, &records[2]).await;
    kafka::publish(&app.kafka, &topic, &records[3]).await;
    app.wait_for_status(&ids[3], OrderStatus::AwaitingPayment)
        .await;
    for already_read in &ids[..3] {
        assert!(
            app.get_order(already_read).await.is_err(),
            "order {already_read} was read again: the log was replayed"
        );
    }
    app.service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_recreated_while_the_consumer_waits_is_read_from_its_start() {
    let TestApp {
        service,
        db,
        kafka: client,
        topics,
        prefix,
    } = spawn_app().await;
    service.stop().await.expect("clean shutdown");

    // A position stored in a log that is gone; the new log starts with two
    // records, too close in time to the last one read to prove anything.
    let records: Vec<RawRecord> = (0..4)
        .map(|_| {
            let order_id = Uuid::now_v7().to_string();
            record(&order_id, &events::order_created(&order_id, "finn"))
        })
        .collect();
    let ids: Vec<String> = records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.key).into_owned())
        .collect();
    let key = records[0].key.clone();
    let partition = oms_common::kafka::partition_for_key(&key, kafka::TEST_PARTITIONS as usize);
    let topic = topics.name(ORDER_CREATED);
    let on_partition = |raw: &RawRecord| RawRecord {
        key: key.clone(),
        ..raw.clone()
    };
    kafka::publish(&client, &topic, &on_partition(&records[0])).await;
    kafka::publish(&client, &topic, &on_partition(&records[1])).await;
    let mut conn = db.connect(SCHEMA).await;
    diesel::insert_into(consumer_offsets::table)
        .values((
            consumer_offsets::topic.eq(&topic),
            consumer_offsets::partition_id.eq(partition),
            consumer_offsets::next_offset.eq(3_i64),
            consumer_offsets::last_ce_id.eq("read-in-the-old-log"),
            consumer_offsets::last_record_time.eq(chrono::Utc::now()),
        ))
        .execute(&mut conn)
        .await
        .expect("position");
    let app = TestApp {
        service: start_service(&db, &prefix).await,
        db,
        kafka: client,
        topics,
        prefix,
    };
    // The new log grows past the stored position; the record before it is
    // not the one read last, so the consumer reads the new log from its
    // start.
    tokio::time::sleep(Duration::from_secs(2)).await;
    kafka::publish(&app.kafka, &topic, &on_partition(&records[2])).await;
    kafka::publish(&app.kafka, &topic, &on_partition(&records[3])).await;
    for order_id in &ids {
        app.wait_for_status(order_id, OrderStatus::AwaitingPayment)
            .await;
    }
    app.service.stop().await.expect("clean shutdown");
}
