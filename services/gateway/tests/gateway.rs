//! The gateway's public API against a real broker (and, for reads, a real
//! order service and database).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prost::Message;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;
use uuid::Uuid;

mod support;

use gateway::Application;
use oms_api::google::r#type::Money;
use oms_api::orders::events::v1::OrderCreated;
use oms_api::orders::v1::order_service_client::OrderServiceClient;
use oms_api::orders::v1::{CreateOrderRequest, GetOrderRequest, OrderStatus};
use oms_api::{Event, EventEnvelope};
use oms_common::topics::{ORDER_CREATED, TopicNames};
use oms_testkit::service::{RunningService, service_config};
use oms_testkit::{TestDatabase, eventually, kafka, unique_topic_prefix};
use support::{gateway_config, start_gateway};

async fn client(addr: SocketAddr) -> OrderServiceClient<Channel> {
    OrderServiceClient::new(oms_testkit::grpc::channel(addr).await)
}

fn valid_request() -> CreateOrderRequest {
    CreateOrderRequest {
        customer_id: "customer-7".into(),
        product_id: "sku-42".into(),
        quantity: 2,
        amount: Some(Money {
            currency_code: "USD".into(),
            units: 99,
            nanos: 990_000_000,
        }),
        request_id: "req-1".into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn create_order_answers_pending_once_the_event_is_on_the_broker() {
    // A keyed order: its key is claimed with the order service first.
    let harness = support::start().await;
    let order = client(harness.gateway.addr)
        .await
        .create_order(valid_request())
        .await
        .expect("create")
        .into_inner();
    assert_eq!(order.status, OrderStatus::Pending as i32);
    let order_id = Uuid::parse_str(&order.order_id).expect("order id is a UUID");
    assert_eq!(order.customer_id, "customer-7");
    assert!(order.create_time.is_some());

    // The call has returned, so the record must already be on the broker.
    let records =
        kafka::read_topic(&*kafka::client().await, &harness.topics.name(ORDER_CREATED)).await;
    assert_eq!(records.len(), 1);
    let record = &records[0].record;
    assert_eq!(record.key.as_deref(), Some(order.order_id.as_bytes()));
    let envelope = EventEnvelope::from_headers(&record.headers).expect("CloudEvents headers");
    assert_eq!(envelope.event_type, OrderCreated::TYPE);
    assert_eq!(envelope.source, "/gateway");
    assert_eq!(envelope.subject, order_id.to_string());
    let event = OrderCreated::decode(record.value.as_deref().unwrap_or_default()).expect("payload");
    assert_eq!(event.order_id, order.order_id);
    assert_eq!(event.request_id, "req-1");
    assert_eq!(event.amount, valid_request().amount);
    assert_eq!(event.quantity, 2);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_request_gets_every_field_violation_and_publishes_nothing() {
    let prefix = unique_topic_prefix();
    let gateway = start_gateway(gateway_config(&prefix, None)).await;
    let bad = CreateOrderRequest {
        customer_id: String::new(),
        product_id: "p".repeat(200),
        quantity: 0,
        amount: Some(Money {
            currency_code: "usd".into(),
            units: 1,
            nanos: 1,
        }),
        request_id: "r".repeat(129),
    };
    let status = client(gateway.addr)
        .await
        .create_order(bad)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let bad_request = status
        .get_details_bad_request()
        .expect("google.rpc.BadRequest detail");
    let fields: Vec<&str> = bad_request
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "customer_id",
            "product_id",
            "request_id",
            "quantity",
            "amount.currency_code",
            "amount.nanos"
        ]
    );
    assert!(
        status
            .message()
            .contains("quantity must be between 1 and 10000"),
        "{}",
        status.message()
    );

    let records = kafka::read_topic(
        &*kafka::client().await,
        &TopicNames::new(prefix).name(ORDER_CREATED),
    )
    .await;
    assert!(records.is_empty(), "bad input never reaches Kafka");
    gateway.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_orders_get_distinct_ids() {
    let prefix = unique_topic_prefix();
    let gateway = start_gateway(gateway_config(&prefix, None)).await;
    let client = client(gateway.addr).await;
    let calls = (0..200).map(|_| {
        let mut client = client.clone();
        async move {
            client
                .create_order(CreateOrderRequest {
                    request_id: String::new(),
                    ..valid_request()
                })
                .await
                .expect("create")
                .into_inner()
                .order_id
        }
    });
    let ids: HashSet<String> = futures::future::join_all(calls).await.into_iter().collect();
    assert_eq!(ids.len(), 200, "every order id is unique");
    let records = kafka::read_topic(
        &*kafka::client().await,
        &TopicNames::new(prefix).name(ORDER_CREATED),
    )
    .await;
    assert_eq!(records.len(), 200);
    gateway.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_broker_create_order_is_unavailable_and_health_not_serving() {
    let mut config = gateway_config(&unique_topic_prefix(), None);
    // Nothing listens on the discard port.
    config.kafka.brokers = vec!["127.0.0.1:9".into()];
    let app = Application::build(config).await.expect("build");
    let addr = app.local_addr();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(app.run_until(shutdown.clone()));

    eventually("the server to answer", Duration::from_secs(10), || async {
        oms_testkit::grpc::health(addr, "").await.is_some()
    })
    .await;
    use tonic_health::pb::health_check_response::ServingStatus;
    assert_eq!(
        oms_testkit::grpc::health(addr, "").await,
        Some(ServingStatus::NotServing)
    );
    assert_eq!(
        oms_testkit::grpc::health(addr, "orders.v1.OrderService").await,
        Some(ServingStatus::NotServing)
    );

    let started = Instant::now();
    // Without a request_id, so it is the broker that is missing, not the
    // order service that claims keys.
    let status = client(addr)
        .await
        .create_order(CreateOrderRequest {
            request_id: String::new(),
            ..valid_request()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "answered within its publish timeout"
    );

    shutdown.cancel();
    handle.await.expect("task").expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn get_order_reads_through_the_order_service() {
    let db = TestDatabase::create().await;
    let prefix = unique_topic_prefix();
    let order_app = order_service::Application::build(service_config(&db, &prefix))
        .await
        .expect("build");
    let order_addr = order_app.local_addr();
    let order_service =
        RunningService::start(order_addr, |shutdown| order_app.run_until(shutdown)).await;
    let gateway = start_gateway(gateway_config(&prefix, Some(order_addr))).await;
    let mut client = client(gateway.addr).await;

    let unknown = Uuid::now_v7().to_string();
    let status = client
        .get_order(GetOrderRequest {
            order_id: unknown.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains(&unknown));
    let status = client
        .get_order(GetOrderRequest {
            order_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let created = client
        .create_order(valid_request())
        .await
        .expect("create")
        .into_inner();
    eventually(
        "the order service to record the order",
        Duration::from_secs(20),
        || {
            let mut client = client.clone();
            let order_id = created.order_id.clone();
            async move { client.get_order(GetOrderRequest { order_id }).await.is_ok() }
        },
    )
    .await;
    let order = client
        .get_order(GetOrderRequest {
            order_id: created.order_id.clone(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(order.status, OrderStatus::AwaitingPayment as i32);
    assert_eq!(order.amount, created.amount);
    assert_eq!(
        order.create_time,
        created.create_time.map(|t| prost_types::Timestamp {
            nanos: t.nanos / 1000 * 1000,
            ..t
        })
    );

    gateway.stop().await.expect("clean shutdown");
    order_service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_serving_and_reflection_lists_the_order_api() {
    let gateway = start_gateway(gateway_config(&unique_topic_prefix(), None)).await;
    oms_testkit::grpc::assert_health_and_reflection(
        gateway.addr,
        &["gateway", "orders.v1.OrderService"],
    )
    .await;
    gateway.stop().await.expect("clean shutdown");
}
