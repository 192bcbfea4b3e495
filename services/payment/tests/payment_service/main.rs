//! The payment service against a real broker and database.

mod helpers;
mod settlement;

use prost::Message;
use uuid::Uuid;

use oms_api::orders::events::v1::{PaymentFailed, PaymentSucceeded};
use oms_api::payments::v1::PaymentStatus;
use oms_api::{Event, EventEnvelope};
use oms_common::topics::{
    PAYMENT_FAILED, PAYMENT_SUCCEEDED, PROCESS_PAYMENT, TopicNames, dead_letter_topic,
};
use oms_testkit::events::{self, committed_records, forget_offsets, record};
use oms_testkit::{TestDatabase, eventually, kafka, unique_topic_prefix};
use payment_service::SCHEMA;

use helpers::{DECLINED_CUSTOMER, WAIT, get_payment, payments_of, publish, settled, start_service};

#[tokio::test(flavor = "multi_thread")]
async fn process_payment_records_one_payment_and_announces_it() {
    let db = TestDatabase::create().await;
    let prefix = unique_topic_prefix();
    let topics = TopicNames::new(prefix.clone());
    let service = start_service(&db, &prefix).await;
    let order_id = Uuid::now_v7();
    publish(
        &topics,
        PROCESS_PAYMENT,
        &record(
            &order_id.to_string(),
            &events::process_payment(&order_id.to_string(), "dan"),
        ),
    )
    .await;

    settled(&db, order_id).await;
    let (payment_id, amount_minor, currency, status) = payments_of(&db, order_id).await.remove(0);
    assert_eq!(
        (amount_minor, currency.as_str(), status.as_str()),
        (4250, "EUR", "COMPLETED")
    );

    let client = kafka::client().await;
    let topic = topics.name(PAYMENT_SUCCEEDED);
    eventually("payment-succeeded", WAIT, || async {
        !kafka::read_topic(&client, &topic).await.is_empty()
    })
    .await;
    let published = kafka::read_topic(&client, &topic).await;
    assert_eq!(published.len(), 1);
    let envelope = EventEnvelope::from_headers(&published[0].record.headers).expect("envelope");
    assert_eq!(envelope.event_type, PaymentSucceeded::TYPE);
    let event = PaymentSucceeded::decode(published[0].record.value.as_deref().unwrap_or_default())
        .expect("payload");
    assert_eq!(event.order_id, order_id.to_string());
    assert_eq!(event.payment_id, payment_id.to_string());
    assert_eq!(event.customer_id, "dan");
    assert_eq!(event.amount, Some(events::euros(42, 50)));
    service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn redelivered_payment_requests_charge_once() {
    let db = TestDatabase::create().await;
    let prefix = unique_topic_prefix();
    let topics = TopicNames::new(prefix.clone());
    let service = start_service(&db, &prefix).await;
    let order_id = Uuid::now_v7();
    let request = record(
        &order_id.to_string(),
        &events::process_payment(&order_id.to_string(), "erin"),
    );
    publish(&topics, PROCESS_PAYMENT, &request).await;
    publish(&topics, PROCESS_PAYMENT, &request).await;
    let committed = || async {
        committed_records(&mut db.connect(SCHEMA).await, &topics.name(PROCESS_PAYMENT)).await
    };
    eventually("both requests committed", WAIT, || async {
        committed().await == 2
    })
    .await;

    service.stop().await.expect("clean shutdown");
    forget_offsets(&mut db.connect(SCHEMA).await).await;
    let service = start_service(&db, &prefix).await;
    eventually("both requests committed again", WAIT, || async {
        committed().await == 2
    })
    .await;

    assert_eq!(
        payments_of(&db, order_id).await.len(),
        1,
        "one payment per order"
    );
    settled(&db, order_id).await;
    events::wait_until_outbox_drained(&db, SCHEMA).await;
    let client = kafka::client().await;
    assert_eq!(
        kafka::read_topic(&client, &topics.name(PAYMENT_SUCCEEDED))
            .await
            .len(),
        1,
        "announced once"
    );
    service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_payment_request_is_dead_lettered() {
    let db = TestDatabase::create().await;
    let prefix = unique_topic_prefix();
    let topics = TopicNames::new(prefix.clone());
    let service = start_service(&db, &prefix).await;
    let order_id = Uuid::now_v7().to_string();
    let mut no_amount = events::process_payment(&order_id, "frank");
    no_amount.amount = None;
    publish(&topics, PROCESS_PAYMENT, &record(&order_id, &no_amount)).await;

    let client = kafka::client().await;
    let dlq = dead_letter_topic(&topics.name(PROCESS_PAYMENT));
    eventually("the dead letter", WAIT, || async {
        kafka::read_topic(&client, &dlq).await.len() == 1
    })
    .await;
    let dead = kafka::read_topic(&client, &dlq).await.remove(0).record;
    assert_eq!(dead.headers["dlq_reason"], b"amount is missing");
    assert_eq!(dead.headers["dlq_source_offset"], b"0");
    assert!(
        payments_of(&db, Uuid::parse_str(&order_id).unwrap())
            .await
            .is_empty()
    );
    service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_serving_and_reflection_works() {
    let db = TestDatabase::create().await;
    let service = start_service(&db, &unique_topic_prefix()).await;
    oms_testkit::grpc::assert_health_and_reflection(
        service.addr,
        &["payment-service", "payments.v1.PaymentService"],
    )
    .await;
    service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_database_is_created_at_start_up() {
    let db = TestDatabase::not_yet_created();
    let service = start_service(&db, &unique_topic_prefix()).await;
    // Serving means it connected and migrated; the table is there and empty.
    assert!(payments_of(&db, Uuid::now_v7()).await.is_empty());
    service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declined_payment_is_recorded_once_and_announced_as_failed() {
    let db = TestDatabase::create().await;
    let prefix = unique_topic_prefix();
    let topics = TopicNames::new(prefix.clone());
    let service = start_service(&db, &prefix).await;
    let order_id = Uuid::now_v7();
    let request = record(
        &order_id.to_string(),
        &events::process_payment(&order_id.to_string(), DECLINED_CUSTOMER),
    );
    publish(&topics, PROCESS_PAYMENT, &request).await;
    publish(&topics, PROCESS_PAYMENT, &request).await;

    let client = kafka::client().await;
    let failed = topics.name(PAYMENT_FAILED);
    eventually("payment-failed", WAIT, || async {
        !kafka::read_topic(&client, &failed).await.is_empty()
    })
    .await;
    let committed = || async {
        committed_records(&mut db.connect(SCHEMA).await, &topics.name(PROCESS_PAYMENT)).await
    };
    eventually("both requests committed", WAIT, || async {
        committed().await == 2
    })
    .await;
    events::wait_until_outbox_drained(&db, SCHEMA).await;

    let rows = payments_of(&db, order_id).await;
    assert_eq!(rows.len(), 1, "declined once");
    assert_eq!(rows[0].3, "DECLINED");
    let published = kafka::read_topic(&client, &failed).await;
    assert_eq!(published.len(), 1, "announced once");
    let envelope = EventEnvelope::from_headers(&published[0].record.headers).expect("envelope");
    assert_eq!(envelope.event_type, PaymentFailed::TYPE);
    let event = PaymentFailed::decode(published[0].record.value.as_deref().unwrap_or_default())
        .expect("payload");
    assert_eq!(event.reason, "customer mallory may not pay");
    assert!(
        kafka::read_topic(&client, &topics.name(PAYMENT_SUCCEEDED))
            .await
            .is_empty(),
        "never both"
    );
    service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn get_payment_shows_taken_and_declined_payments() {
    let db = TestDatabase::create().await;
    let prefix = unique_topic_prefix();
    let topics = TopicNames::new(prefix.clone());
    let service = start_service(&db, &prefix).await;
    let approved = Uuid::now_v7().to_string();
    let declined = Uuid::now_v7().to_string();
    for (order_id, customer) in [(&approved, "judy"), (&declined, DECLINED_CUSTOMER)] {
        let request = events::process_payment(order_id, customer);
        publish(&topics, PROCESS_PAYMENT, &record(order_id, &request)).await;
    }
    for order_id in [&approved, &declined] {
        settled(&db, Uuid::parse_str(order_id).unwrap()).await;
    }

    let taken = get_payment(&service, &approved).await.expect("approved");
    let rows = payments_of(&db, Uuid::parse_str(&approved).unwrap()).await;
    assert_eq!(taken.payment_id, rows[0].0.to_string());
    assert_eq!(taken.order_id, approved);
    assert_eq!(taken.customer_id, "judy");
    assert_eq!(taken.amount, Some(events::euros(42, 50)));
    assert_eq!(taken.status, PaymentStatus::Completed as i32);
    assert_eq!(taken.decline_reason, "");
    assert!(taken.create_time.is_some());

    let refused = get_payment(&service, &declined).await.expect("declined");
    assert_eq!(refused.status, PaymentStatus::Declined as i32);
    assert_eq!(refused.decline_reason, "customer mallory may not pay");

    let unknown = get_payment(&service, &Uuid::now_v7().to_string()).await;
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);
    let malformed = get_payment(&service, "not-a-uuid").await;
    assert_eq!(malformed.unwrap_err().code(), tonic::Code::InvalidArgument);
    service.stop().await.expect("clean shutdown");
}
