//! The notification service against a real broker and database.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use notification_service::schema::notifications;
use notification_service::{Application, SCHEMA};
use oms_common::topics::{ORDER_CREATED, PAYMENT_SUCCEEDED, TopicNames};
use oms_testkit::events::{self, RawRecord, committed_records, forget_offsets, record};
use oms_testkit::service::{RunningService, service_config};
use oms_testkit::{TestDatabase, eventually, kafka, unique_topic_prefix};

const WAIT: Duration = Duration::from_secs(20);

async fn start_service(db: &TestDatabase, prefix: &str) -> RunningService {
    let app = Application::build(service_config(db, prefix))
        .await
        .expect("build");
    let addr = app.local_addr();
    RunningService::start(addr, |shutdown| app.run_until(shutdown)).await
}

async fn publish(topics: &TopicNames, topic: &str, record: &RawRecord) {
    kafka::publish(&*kafka::client().await, &topics.name(topic), record).await;
}

async fn notifications_of(db: &TestDatabase, order_id: Uuid) -> Vec<(String, String, String)> {
    notifications::table
        .filter(notifications::order_id.eq(order_id))
        .order(notifications::notification_id)
        .select((
            notifications::kind,
            notifications::customer_id,
            notifications::message,
        ))
        .load(&mut db.connect(SCHEMA).await)
        .await
        .expect("notifications")
}

#[tokio::test(flavor = "multi_thread")]
async fn each_step_is_recorded_once_even_when_redelivered() {
    let db = TestDatabase::create().await;
    let prefix = unique_topic_prefix();
    let topics = TopicNames::new(prefix.clone());
    let service = start_service(&db, &prefix).await;
    let order_id = Uuid::now_v7();
    let id = order_id.to_string();
    let created = record(&id, &events::order_created(&id, "gina"));
    let paid = record(
        &id,
        &events::payment_succeeded(&id, &Uuid::now_v7().to_string(), "gina"),
    );
    for (topic, record) in [
        (ORDER_CREATED, &created),
        (ORDER_CREATED, &created),
        (PAYMENT_SUCCEEDED, &paid),
        (PAYMENT_SUCCEEDED, &paid),
    ] {
        publish(&topics, topic, record).await;
    }
    let committed = || async {
        let mut conn = db.connect(SCHEMA).await;
        committed_records(&mut conn, &topics.name(ORDER_CREATED)).await
            + committed_records(&mut conn, &topics.name(PAYMENT_SUCCEEDED)).await
    };
    eventually("all four records committed", WAIT, || async {
        committed().await == 4
    })
    .await;

    service.stop().await.expect("clean shutdown");
    forget_offsets(&mut db.connect(SCHEMA).await).await;
    let service = start_service(&db, &prefix).await;
    eventually("all four records committed again", WAIT, || async {
        committed().await == 4
    })
    .await;

    let rows = notifications_of(&db, order_id).await;
    let kinds: Vec<&str> = rows.iter().map(|(kind, _, _)| kind.as_str()).collect();
    assert_eq!(kinds, ["ORDER_RECEIVED", "PAYMENT_SUCCEEDED"]);
    assert!(rows.iter().all(|(_, customer, _)| customer == "gina"));
    assert!(rows[1].2.contains("42.50 EUR"), "message: {}", rows[1].2);
    service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_serving_and_reflection_works() {
    let db = TestDatabase::create().await;
    let service = start_service(&db, &unique_topic_prefix()).await;
    oms_testkit::grpc::assert_health_and_reflection(service.addr, &["notification-service"]).await;
    service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_on_either_topic_is_dead_lettered_and_valid_events_still_count() {
    let db = TestDatabase::create().await;
    let prefix = unique_topic_prefix();
    let topics = TopicNames::new(prefix.clone());
    let service = start_service(&db, &prefix).await;
    let order_id = Uuid::now_v7();
    let id = order_id.to_string();
    let garbage = RawRecord {
        key: id.as_bytes().to_vec(),
        value: vec![0xff; 7],
        headers: Default::default(),
    };
    let mut unknown_type = record(&id, &events::order_created(&id, "hana"));
    unknown_type
        .headers
        .insert("ce_type".into(), b"orders.events.v1.OrderShipped".to_vec());
    let mut no_amount = events::payment_succeeded(&id, &Uuid::now_v7().to_string(), "hana");
    no_amount.amount = None;
    // Poison first, then the valid events behind it on the same partitions.
    publish(&topics, ORDER_CREATED, &garbage).await;
    publish(&topics, PAYMENT_SUCCEEDED, &unknown_type).await;
    publish(&topics, PAYMENT_SUCCEEDED, &record(&id, &no_amount)).await;
    publish(
        &topics,
        ORDER_CREATED,
        &record(&id, &events::order_created(&id, "hana")),
    )
    .await;
    publish(
        &topics,
        PAYMENT_SUCCEEDED,
        &record(
            &id,
            &events::payment_succeeded(&id, &Uuid::now_v7().to_string(), "hana"),
        ),
    )
    .await;

    eventually("both notifications", WAIT, || async {
        notifications_of(&db, order_id).await.len() == 2
    })
    .await;
    let client = kafka::client().await;
    let created_dlq = oms_common::topics::dead_letter_topic(&topics.name(ORDER_CREATED));
    let paid_dlq = oms_common::topics::dead_letter_topic(&topics.name(PAYMENT_SUCCEEDED));
    eventually("three dead letters", WAIT, || async {
        kafka::read_topic(&client, &created_dlq).await.len() == 1
            && kafka::read_topic(&client, &paid_dlq).await.len() == 2
    })
    .await;
    let reasons: Vec<String> = kafka::read_topic(&client, &paid_dlq)
        .await
        .into_iter()
        .map(|r| String::from_utf8_lossy(&r.record.headers["dlq_reason"]).into_owned())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("unknown ce_type")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("amount is missing")),
        "{reasons:?}"
    );
    service.stop().await.expect("clean shutdown");
}
