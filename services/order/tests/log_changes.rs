//! Logs that change under the consumer: a position past the end of a log
//! that is merely behind is kept, not rewound.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use oms_api::orders::v1::OrderStatus;
use oms_common::schema::consumer_offsets;
use oms_common::topics::ORDER_CREATED;
use oms_testkit::events::{self, record};
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
    let mut ids = Vec::new();
    let mut key = Vec::new();
    for _ in 0..4 {
        let order_id = Uuid::now_v7().to_string();
        ids.push(order_id);
    }
    let first = record(&ids[0], &events::order_created(&ids[0], "erin"));
    key.clone_from(&first.key);
    let partition = oms_common::kafka::partition_for_key(&key, kafka::TEST_PARTITIONS as usize);
    let publish = async |client: &rskafka::client::Client, topic: &str, order_id: &str| {
        let mut next = record(order_id, &events::order_created(order_id, "erin"));
        next.key.clone_from(&key);
        kafka::publish(client, topic, &next).await;
    };
    let topic = topics.name(ORDER_CREATED);
    publish(&client, &topic, &ids[0]).await;
    publish(&client, &topic, &ids[1]).await;
    let mut conn = db.connect(SCHEMA).await;
    diesel::insert_into(consumer_offsets::table)
        .values((
            consumer_offsets::topic.eq(&topic),
            consumer_offsets::partition_id.eq(partition),
            consumer_offsets::next_offset.eq(3_i64),
            consumer_offsets::last_ce_id.eq("read-at-2"),
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
    // log catches up: offset 2 comes back, and offset 3 is new.
    tokio::time::sleep(Duration::from_secs(2)).await;
    publish(&app.kafka, &topic, &ids[2]).await;
    publish(&app.kafka, &topic, &ids[3]).await;
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
