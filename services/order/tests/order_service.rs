//! The order service against a real broker and database.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use tonic::Code;
use uuid::Uuid;

use oms_api::orders::events::v1::{PaymentFailed, ProcessPayment};
use oms_api::orders::v1::OrderStatus;
use oms_api::{Event, EventEnvelope};
use oms_common::topics::{
    ORDER_CREATED, PAYMENT_FAILED, PAYMENT_SUCCEEDED, PROCESS_PAYMENT, dead_letter_topic,
};
use oms_testkit::events::{self, RawRecord, forget_offsets, record};
use oms_testkit::{eventually, kafka};
use order_service::SCHEMA;

mod support;
use support::{TestApp, WAIT, spawn_app, start_service};

#[tokio::test(flavor = "multi_thread")]
async fn order_created_is_recorded_and_payment_is_requested() {
    let app = spawn_app().await;
    let order_id = Uuid::now_v7().to_string();
    app.publish(
        ORDER_CREATED,
        &record(&order_id, &events::order_created(&order_id, "alice")),
    )
    .await;

    let order = app
        .wait_for_status(&order_id, OrderStatus::AwaitingPayment)
        .await;
    assert_eq!(order.customer_id, "alice");
    assert_eq!(order.quantity, 3);
    assert_eq!(order.amount, Some(events::euros(42, 50)));

    let topic = app.topics.name(PROCESS_PAYMENT);
    eventually("process-payment to be published", WAIT, || async {
        !kafka::read_topic(&app.kafka, &topic).await.is_empty()
    })
    .await;
    let published = kafka::read_topic(&app.kafka, &topic).await;
    assert_eq!(published.len(), 1);
    let record = &published[0].record;
    assert_eq!(record.key.as_deref(), Some(order_id.as_bytes()));
    let envelope = EventEnvelope::from_headers(&record.headers).expect("envelope");
    assert_eq!(envelope.event_type, ProcessPayment::TYPE);
    assert_eq!(envelope.subject, order_id);
    let request =
        <ProcessPayment as prost::Message>::decode(record.value.as_deref().unwrap_or_default())
            .expect("payload");
    assert_eq!(request, events::process_payment(&order_id, "alice"));
    app.service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn payment_succeeded_marks_the_order_paid() {
    let app = spawn_app().await;
    let order_id = Uuid::now_v7().to_string();
    let payment_id = Uuid::now_v7().to_string();
    app.publish(
        ORDER_CREATED,
        &record(&order_id, &events::order_created(&order_id, "bob")),
    )
    .await;
    app.wait_for_status(&order_id, OrderStatus::AwaitingPayment)
        .await;
    app.publish(
        PAYMENT_SUCCEEDED,
        &record(
            &order_id,
            &events::payment_succeeded(&order_id, &payment_id, "bob"),
        ),
    )
    .await;

    let order = app.wait_for_status(&order_id, OrderStatus::Paid).await;
    assert_eq!(order.payment_id, payment_id);
    let seconds = |t: Option<prost_types::Timestamp>| t.map(|t| (t.seconds, t.nanos));
    assert!(seconds(order.update_time) > seconds(order.create_time));
    app.service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn redelivered_records_change_nothing() {
    let app = spawn_app().await;
    let order_id = Uuid::now_v7().to_string();
    let payment_id = Uuid::now_v7().to_string();
    let created = record(&order_id, &events::order_created(&order_id, "carol"));
    let paid = record(
        &order_id,
        &events::payment_succeeded(&order_id, &payment_id, "carol"),
    );
    // Duplicates as a retrying producer would send them.
    app.publish(ORDER_CREATED, &created).await;
    app.publish(ORDER_CREATED, &created).await;
    app.wait_for_status(&order_id, OrderStatus::AwaitingPayment)
        .await;
    app.publish(PAYMENT_SUCCEEDED, &paid).await;
    app.publish(PAYMENT_SUCCEEDED, &paid).await;
    app.wait_for_status(&order_id, OrderStatus::Paid).await;
    app.wait_until_committed(ORDER_CREATED, 2).await;
    app.wait_until_committed(PAYMENT_SUCCEEDED, 2).await;

    // Redelivery of everything: forget the offsets and start again.
    let TestApp {
        service,
        db,
        kafka: client,
        topics,
        prefix,
    } = app;
    service.stop().await.expect("clean shutdown");
    forget_offsets(&mut db.connect(SCHEMA).await).await;
    let app = TestApp {
        service: start_service(&db, &prefix).await,
        db,
        kafka: client,
        topics,
        prefix,
    };
    app.wait_until_committed(ORDER_CREATED, 2).await;
    app.wait_until_committed(PAYMENT_SUCCEEDED, 2).await;

    let mut conn = app.db.connect(SCHEMA).await;
    let rows: Vec<(String, i32)> = order_service::schema::orders::table
        .select((
            order_service::schema::orders::status,
            order_service::schema::orders::version,
        ))
        .load(&mut conn)
        .await
        .expect("orders");
    assert_eq!(rows, [("PAID".to_owned(), 2)], "one order, paid once");
    // Everything the committed batches wrote is on the broker once the
    // outbox is empty, so a duplicate request would be visible now.
    events::wait_until_outbox_drained(&app.db, SCHEMA).await;
    let requests = kafka::read_topic(&app.kafka, &app.topics.name(PROCESS_PAYMENT)).await;
    assert_eq!(requests.len(), 1, "payment requested exactly once");
    app.service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_records_go_to_the_dead_letter_topic_and_consumption_continues() {
    let app = spawn_app().await;
    let garbage = RawRecord {
        key: b"k".to_vec(),
        value: b"\xff\x00 not protobuf".to_vec(),
        headers: Default::default(),
    };
    let mut unknown_type = record(
        "x",
        &events::order_created(&Uuid::now_v7().to_string(), "eve"),
    );
    unknown_type
        .headers
        .insert("ce_type".into(), b"com.example.Unknown".to_vec());
    let invalid = record("y", &events::order_created("not-a-uuid", "eve"));
    let order_id = Uuid::now_v7().to_string();
    let valid = record(&order_id, &events::order_created(&order_id, "eve"));
    for poison in [&garbage, &unknown_type, &invalid] {
        // All on the valid record's partition, so it must get past them.
        let mut poison = poison.clone();
        poison.key = valid.key.clone();
        app.publish(ORDER_CREATED, &poison).await;
    }
    app.publish(ORDER_CREATED, &valid).await;

    app.wait_for_status(&order_id, OrderStatus::AwaitingPayment)
        .await;
    let dlq = dead_letter_topic(&app.topics.name(ORDER_CREATED));
    eventually("three dead letters", WAIT, || async {
        kafka::read_topic(&app.kafka, &dlq).await.len() == 3
    })
    .await;
    let reasons: Vec<String> = kafka::read_topic(&app.kafka, &dlq)
        .await
        .into_iter()
        .map(|r| String::from_utf8_lossy(&r.record.headers["dlq_reason"]).into_owned())
        .collect();
    assert!(reasons[0].contains("bad envelope"), "{reasons:?}");
    assert!(reasons[1].contains("unknown ce_type"), "{reasons:?}");
    assert!(reasons[2].contains("not a UUID"), "{reasons:?}");
    let first = &kafka::read_topic(&app.kafka, &dlq).await[0].record;
    assert_eq!(
        first.value.as_deref(),
        Some(garbage.value.as_slice()),
        "payload kept as it was"
    );
    assert_eq!(
        first.headers["dlq_source_topic"],
        app.topics.name(ORDER_CREATED).into_bytes()
    );
    app.service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payment_event_that_does_not_decode_is_dead_lettered() {
    let app = spawn_app().await;
    let order_id = Uuid::now_v7().to_string();
    app.publish(
        ORDER_CREATED,
        &record(&order_id, &events::order_created(&order_id, "zoe")),
    )
    .await;
    app.wait_for_status(&order_id, OrderStatus::AwaitingPayment)
        .await;
    let bad_payment_id = record(
        &order_id,
        &events::payment_succeeded(&order_id, "not-a-uuid", "zoe"),
    );
    app.publish(PAYMENT_SUCCEEDED, &bad_payment_id).await;
    let payment_id = Uuid::now_v7().to_string();
    app.publish(
        PAYMENT_SUCCEEDED,
        &record(
            &order_id,
            &events::payment_succeeded(&order_id, &payment_id, "zoe"),
        ),
    )
    .await;

    let order = app.wait_for_status(&order_id, OrderStatus::Paid).await;
    assert_eq!(
        order.payment_id, payment_id,
        "the valid event, not the poison one"
    );
    let dlq = dead_letter_topic(&app.topics.name(PAYMENT_SUCCEEDED));
    eventually("the dead letter", WAIT, || async {
        kafka::read_topic(&app.kafka, &dlq).await.len() == 1
    })
    .await;
    app.service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declined_payment_cancels_the_order_and_late_events_do_not_move_it() {
    let app = spawn_app().await;
    let order_id = Uuid::now_v7().to_string();
    app.publish(
        ORDER_CREATED,
        &record(&order_id, &events::order_created(&order_id, "mallory")),
    )
    .await;
    app.wait_for_status(&order_id, OrderStatus::AwaitingPayment)
        .await;
    let failed = PaymentFailed {
        order_id: order_id.clone(),
        customer_id: "mallory".into(),
        amount: Some(events::euros(42, 50)),
        reason: "customer mallory may not pay".into(),
        fail_time: None,
    };
    app.publish(PAYMENT_FAILED, &record(&order_id, &failed))
        .await;
    let cancelled = app.wait_for_status(&order_id, OrderStatus::Cancelled).await;
    assert_eq!(cancelled.failure_reason, "customer mallory may not pay");
    assert!(cancelled.payment_id.is_empty());

    // A contradictory success, a repeated failure and a replayed creation
    // arrive late: none may move the order out of its terminal state.
    let late_success = events::payment_succeeded(&order_id, &Uuid::now_v7().to_string(), "mallory");
    app.publish(PAYMENT_SUCCEEDED, &record(&order_id, &late_success))
        .await;
    app.publish(PAYMENT_FAILED, &record(&order_id, &failed))
        .await;
    app.publish(
        ORDER_CREATED,
        &record(&order_id, &events::order_created(&order_id, "mallory")),
    )
    .await;
    app.wait_until_committed(PAYMENT_SUCCEEDED, 1).await;
    app.wait_until_committed(PAYMENT_FAILED, 2).await;
    app.wait_until_committed(ORDER_CREATED, 2).await;

    let order = app.get_order(&order_id).await.expect("order");
    assert_eq!(order.status, OrderStatus::Cancelled as i32);
    assert_eq!(order.failure_reason, "customer mallory may not pay");
    let mut conn = app.db.connect(SCHEMA).await;
    let version: i32 = order_service::schema::orders::table
        .select(order_service::schema::orders::version)
        .first(&mut conn)
        .await
        .expect("version");
    assert_eq!(version, 2, "created, then cancelled: nothing else");
    app.service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_position_past_the_end_of_a_recreated_log_resumes_from_its_start() {
    // The state a restarted in-memory broker leaves: our offsets say 5, the
    // log is empty again, and its first new record has offset 0. That record
    // is newer than the last one read at offset 4: the evidence that this is
    // a new log, not one that is behind.
    let TestApp {
        service,
        db,
        kafka: client,
        topics,
        prefix,
    } = spawn_app().await;
    service.stop().await.expect("clean shutdown");
    let mut conn = db.connect(SCHEMA).await;
    for partition in 0..2 {
        diesel::insert_into(oms_common::schema::consumer_offsets::table)
            .values((
                oms_common::schema::consumer_offsets::topic.eq(topics.name(ORDER_CREATED)),
                oms_common::schema::consumer_offsets::partition_id.eq(partition),
                oms_common::schema::consumer_offsets::next_offset.eq(5_i64),
                oms_common::schema::consumer_offsets::last_ce_id.eq("read-before"),
                oms_common::schema::consumer_offsets::last_record_time
                    .eq(chrono::Utc::now() - chrono::Duration::hours(1)),
            ))
            .execute(&mut conn)
            .await
            .expect("stale offset");
    }
    let app = TestApp {
        service: start_service(&db, &prefix).await,
        db,
        kafka: client,
        topics,
        prefix,
    };
    let order_id = Uuid::now_v7().to_string();
    app.publish(
        ORDER_CREATED,
        &record(&order_id, &events::order_created(&order_id, "olga")),
    )
    .await;
    app.wait_for_status(&order_id, OrderStatus::AwaitingPayment)
        .await;
    app.service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_and_malformed_order_ids_get_clear_errors() {
    let app = spawn_app().await;
    let missing = app
        .get_order(&Uuid::now_v7().to_string())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(missing.message().contains("not found"));
    let malformed = app.get_order("12345").await.unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    app.service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_serving_and_reflection_lists_the_services() {
    let app = spawn_app().await;
    oms_testkit::grpc::assert_health_and_reflection(
        app.service.addr,
        &["order-service", "orders.internal.v1.OrderQueryService"],
    )
    .await;
    let addr = app.service.addr;
    app.service.stop().await.expect("clean shutdown");
    assert_eq!(
        oms_testkit::grpc::health(addr, "").await,
        None,
        "server stopped"
    );
}
