//! Health follows progress: a partition with records waiting and no commit
//! for the stall time turns the service NOT_SERVING, and it serves again
//! once the partition moves.

use std::time::Duration;

use diesel_async::SimpleAsyncConnection;
use oms_testkit::grpc::ServingStatus;
use uuid::Uuid;

use oms_api::orders::v1::OrderStatus;
use oms_common::topics::{ORDER_CREATED, TopicNames};
use oms_testkit::events::{self, record};
use oms_testkit::service::{RunningService, service_config};
use oms_testkit::{TestDatabase, eventually, grpc, kafka, unique_topic_prefix};
use order_service::{Application, SCHEMA};

/// An order service that reports a stall after 2 s, serving.
async fn start_with_a_short_stall_time() -> (TestDatabase, String, RunningService) {
    let db = TestDatabase::create().await;
    let prefix = unique_topic_prefix();
    let mut config = service_config(&db, &prefix);
    config.kafka.stall_after = Duration::from_secs(2);
    let app = Application::build(config).await.expect("build");
    let addr = app.local_addr();
    let service = RunningService::start(addr, |shutdown| app.run_until(shutdown)).await;
    (db, prefix, service)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_that_cannot_commit_turns_health_not_serving_until_it_moves() {
    let (db, prefix, service) = start_with_a_short_stall_time().await;
    let addr = service.addr;

    // Commits wait on this lock, so records wait on the partition; the
    // database and the broker themselves still answer.
    let mut blocker = db.connect(SCHEMA).await;
    blocker
        .batch_execute("BEGIN; LOCK TABLE consumer_offsets IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let order_id = Uuid::now_v7().to_string();
    let client = kafka::client().await;
    let topics = TopicNames::new(prefix.clone());
    kafka::publish(
        &client,
        &topics.name(ORDER_CREATED),
        &record(&order_id, &events::order_created(&order_id, "stan")),
    )
    .await;
    eventually(
        "health to report the stall",
        Duration::from_secs(15),
        || async { grpc::health(addr, "").await == Some(ServingStatus::NotServing) },
    )
    .await;

    blocker.batch_execute("ROLLBACK").await.expect("unlock");
    grpc::wait_until_serving(addr, "", Duration::from_secs(15)).await;
    assert_eq!(
        recorded_status(addr, &order_id).await,
        OrderStatus::AwaitingPayment as i32
    );
    drop(blocker);
    service.stop().await.expect("clean shutdown");
}

/// The order's status once it is recorded.
async fn recorded_status(addr: std::net::SocketAddr, order_id: &str) -> i32 {
    use oms_api::orders::internal::v1::GetOrderRequest;
    use oms_api::orders::internal::v1::order_query_service_client::OrderQueryServiceClient;
    let mut client = OrderQueryServiceClient::new(grpc::channel(addr).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let request = GetOrderRequest {
            order_id: order_id.to_owned(),
        };
        if let Ok(response) = client.get_order(request).await {
            return response.into_inner().order.map_or(0, |order| order.status);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "order {order_id} never recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outbox_that_does_not_drain_turns_health_not_serving() {
    let (db, prefix, service) = start_with_a_short_stall_time().await;
    let addr = service.addr;

    // An event for a topic nobody created: the relay retries it, and it
    // waits in the outbox.
    let mut conn = db.connect(SCHEMA).await;
    oms_common::outbox::enqueue(
        &mut conn,
        &[oms_common::outbox::OutboxMessage {
            topic: format!("{prefix}never-created"),
            key: b"k".to_vec(),
            payload: Vec::new(),
            headers: Default::default(),
        }],
    )
    .await
    .expect("outbox row");
    eventually(
        "health to report the outbox",
        Duration::from_secs(15),
        || async { grpc::health(addr, "").await == Some(ServingStatus::NotServing) },
    )
    .await;
    conn.batch_execute("DELETE FROM outbox")
        .await
        .expect("clear");
    grpc::wait_until_serving(addr, "", Duration::from_secs(15)).await;
    service.stop().await.expect("clean shutdown");
}
