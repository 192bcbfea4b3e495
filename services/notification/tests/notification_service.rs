//! The notification service against a real broker and database.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use notification_service::schema::notifications;
use notification_service::{Application, SCHEMA};
use oms_api::notifications::v1::notification_service_client::NotificationServiceClient;
use oms_api::notifications::v1::{
    ListNotificationsRequest, ListNotificationsResponse, NotificationKind,
};
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
    // The two topics are consumed in parallel: either may be recorded first.
    let mut kinds: Vec<&str> = rows.iter().map(|(kind, _, _)| kind.as_str()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["ORDER_RECEIVED", "PAYMENT_SUCCEEDED"]);
    assert!(rows.iter().all(|(_, customer, _)| customer == "gina"));
    let paid = rows
        .iter()
        .find(|(kind, _, _)| kind == "PAYMENT_SUCCEEDED")
        .expect("paid notification");
    assert!(paid.2.contains("42.50 EUR"), "message: {}", paid.2);
    service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_serving_and_reflection_works() {
    let db = TestDatabase::create().await;
    let service = start_service(&db, &unique_topic_prefix()).await;
    oms_testkit::grpc::assert_health_and_reflection(
        service.addr,
        &[
            "notification-service",
            "notifications.v1.NotificationService",
        ],
    )
    .await;
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

async fn list(
    service: &RunningService,
    request: ListNotificationsRequest,
) -> Result<ListNotificationsResponse, tonic::Status> {
    let channel = oms_testkit::grpc::channel(service.addr).await;
    NotificationServiceClient::new(channel)
        .list_notifications(request)
        .await
        .map(tonic::Response::into_inner)
}

/// Publishes order-created and payment-succeeded for a new order of
/// `customer` and returns the order id.
async fn place_paid_order(topics: &TopicNames, customer: &str) -> String {
    let id = Uuid::now_v7().to_string();
    let created = record(&id, &events::order_created(&id, customer));
    let paid = events::payment_succeeded(&id, &Uuid::now_v7().to_string(), customer);
    publish(topics, ORDER_CREATED, &created).await;
    publish(topics, PAYMENT_SUCCEEDED, &record(&id, &paid)).await;
    id
}

#[tokio::test(flavor = "multi_thread")]
async fn list_notifications_by_order_shows_its_timeline() {
    let db = TestDatabase::create().await;
    let prefix = unique_topic_prefix();
    let topics = TopicNames::new(prefix.clone());
    let service = start_service(&db, &prefix).await;
    let order_id = place_paid_order(&topics, "kim").await;
    let by_order = || ListNotificationsRequest {
        order_id: order_id.clone(),
        ..Default::default()
    };
    eventually("both notifications listed", WAIT, || async {
        list(&service, by_order())
            .await
            .is_ok_and(|page| page.notifications.len() == 2)
    })
    .await;

    let page = list(&service, by_order()).await.expect("list");
    assert_eq!(page.next_page_token, "");
    let kinds: Vec<i32> = page.notifications.iter().map(|n| n.kind).collect();
    // Recorded from two topics in parallel, so either may come first.
    assert!(kinds.contains(&(NotificationKind::OrderReceived as i32)));
    assert!(kinds.contains(&(NotificationKind::PaymentSucceeded as i32)));
    for notification in &page.notifications {
        assert_eq!(notification.order_id, order_id);
        assert_eq!(notification.customer_id, "kim");
        assert!(notification.message.contains(&order_id));
        assert!(notification.create_time.is_some());
        assert!(notification.notification_id.parse::<i64>().is_ok());
    }
    service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn list_notifications_pages_through_a_customer_exactly_once_while_more_arrive() {
    let db = TestDatabase::create().await;
    let prefix = unique_topic_prefix();
    let topics = TopicNames::new(prefix.clone());
    let service = start_service(&db, &prefix).await;
    let mut orders = Vec::new();
    for _ in 0..7 {
        orders.push(place_paid_order(&topics, "lena").await);
    }
    place_paid_order(&topics, "someone-else").await;
    let first_page = |page_token: String| ListNotificationsRequest {
        customer_id: "lena".into(),
        page_size: 4,
        page_token,
        ..Default::default()
    };
    eventually("lena's 14 notifications", WAIT, || async {
        let count = notifications::table
            .filter(notifications::customer_id.eq("lena"))
            .count()
            .get_result::<i64>(&mut db.connect(SCHEMA).await)
            .await
            .expect("count");
        count == 14
    })
    .await;

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = list(&service, first_page(token)).await.expect("page");
        assert!(page.notifications.len() <= 4);
        seen.extend(page.notifications);
        pages += 1;
        // New notifications arrive between pages; they sort after the
        // position and must not disturb it.
        if pages == 1 {
            orders.push(place_paid_order(&topics, "lena").await);
        }
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert!(pages >= 4, "{pages} pages");
    let ids: Vec<i64> = seen
        .iter()
        .map(|n| n.notification_id.parse().expect("numeric id"))
        .collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "no notification twice: {ids:?}");
    assert!(seen.iter().all(|n| n.customer_id == "lena"));
    for order_id in &orders[..7] {
        let listed = seen.iter().filter(|n| &n.order_id == order_id).count();
        assert_eq!(listed, 2, "both notifications of {order_id}");
    }
    let times: Vec<_> = seen
        .iter()
        .map(|n| n.create_time.expect("time"))
        .map(|t| (t.seconds, t.nanos))
        .collect();
    assert!(times.is_sorted(), "oldest first");
    service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn list_notifications_refuses_bad_requests() {
    let db = TestDatabase::create().await;
    let service = start_service(&db, &unique_topic_prefix()).await;
    for (request, what) in [
        (ListNotificationsRequest::default(), "no filter"),
        (
            ListNotificationsRequest {
                order_id: "nope".into(),
                ..Default::default()
            },
            "order_id",
        ),
        (
            ListNotificationsRequest {
                customer_id: "c".into(),
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        (
            ListNotificationsRequest {
                customer_id: "c".into(),
                page_token: "forged".into(),
                ..Default::default()
            },
            "page_token",
        ),
    ] {
        let status = list(&service, request).await.expect_err(what);
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{what}");
    }
    service.stop().await.expect("clean shutdown");
}
