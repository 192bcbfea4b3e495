//! Idempotent CreateOrder: the same customer_id + request_id always names
//! the same order, exactly one order exists downstream, and a key is never
//! used for two different contents, however close together they come.

use std::collections::HashSet;
use std::time::Duration;

mod support;

use tonic::Code;

use oms_api::google::r#type::Money;
use oms_api::orders::v1::order_service_client::OrderServiceClient;
use oms_api::orders::v1::{CreateOrderRequest, GetOrderRequest, OrderStatus};
use oms_common::topics::{ORDER_CREATED, TopicNames};
use oms_testkit::events::committed_records;
use oms_testkit::orders::order;
use oms_testkit::{eventually, kafka, unique_topic_prefix};
use support::{gateway_config, start, start_gateway};

/// The testkit's order, for `units` EUR.
fn request(customer: &str, request_id: &str, units: i64) -> CreateOrderRequest {
    let mut request = order(customer, request_id);
    request.amount = Some(Money {
        currency_code: "EUR".into(),
        units,
        nanos: 0,
    });
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_request_sent_ten_times_concurrently_yields_one_order() {
    let harness = start().await;
    let client = harness.client().await;
    let calls = (0..10).map(|_| {
        let mut client = client.clone();
        async move {
            client
                .create_order(request("ivy", "checkout-1", 30))
                .await
                .expect("create")
                .into_inner()
        }
    });
    let ids: HashSet<String> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|o| o.order_id)
        .collect();
    assert_eq!(ids.len(), 1, "one order id for one request: {ids:?}");

    eventually(
        "the order to be recorded",
        Duration::from_secs(20),
        || async { harness.recorded_orders("ivy").await == 1 },
    )
    .await;
    // Every record the calls published (a retry that found the order
    // recorded publishes none) must be consumed before counting again.
    let topic = harness.topics.name(ORDER_CREATED);
    let published = kafka::read_topic(&*kafka::client().await, &topic)
        .await
        .len() as i64;
    assert!(published >= 1);
    eventually(
        "every published record consumed",
        Duration::from_secs(20),
        || async {
            committed_records(&mut harness.db.connect(order_service::SCHEMA).await, &topic).await
                == published
        },
    )
    .await;
    assert_eq!(
        harness.recorded_orders("ivy").await,
        1,
        "exactly one order downstream"
    );
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_of_a_recorded_order_returns_it_as_it_is_now() {
    let harness = start().await;
    let mut client = harness.client().await;
    let first = client
        .create_order(request("jack", "checkout-2", 12))
        .await
        .expect("create")
        .into_inner();
    eventually("the order to be recorded", Duration::from_secs(20), || {
        let mut client = client.clone();
        let order_id = first.order_id.clone();
        async move { client.get_order(GetOrderRequest { order_id }).await.is_ok() }
    })
    .await;

    let retry = client
        .create_order(request("jack", "checkout-2", 12))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(retry.order_id, first.order_id);
    assert_eq!(
        retry.status,
        OrderStatus::AwaitingPayment as i32,
        "the recorded state, not PENDING"
    );
    assert_eq!(harness.recorded_orders("jack").await, 1);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_id_reused_for_a_different_order_is_refused() {
    let harness = start().await;
    let mut client = harness.client().await;
    let first = client
        .create_order(request("kim", "checkout-3", 12))
        .await
        .expect("create")
        .into_inner();
    eventually(
        "the order to be recorded",
        Duration::from_secs(20),
        || async { harness.recorded_orders("kim").await == 1 },
    )
    .await;

    let status = client
        .create_order(request("kim", "checkout-3", 99))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("checkout-3"));
    // Another customer may use the same key for an order of their own.
    let other = client
        .create_order(request("lee", "checkout-3", 99))
        .await
        .expect("create")
        .into_inner();
    assert_ne!(other.order_id, first.order_id);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_without_a_request_id_each_create_an_order() {
    let harness = start().await;
    let mut client = harness.client().await;
    let a = client
        .create_order(request("max", "", 5))
        .await
        .expect("create")
        .into_inner();
    let b = client
        .create_order(request("max", "", 5))
        .await
        .expect("create")
        .into_inner();
    assert_ne!(a.order_id, b.order_id);
    eventually("both orders recorded", Duration::from_secs(20), || async {
        harness.recorded_orders("max").await == 2
    })
    .await;
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicting_requests_with_one_key_sent_together_never_both_succeed() {
    let harness = start().await;
    let client = harness.client().await;
    let mut accepted = Vec::new();
    for round in 0..50 {
        let key = format!("race-{round}");
        let call = |quantity: i32| {
            let mut client = client.clone();
            let conflicting = CreateOrderRequest {
                quantity,
                ..request("nora", &key, 10)
            };
            async move { client.create_order(conflicting).await }
        };
        let (order, refused) = match tokio::join!(call(1), call(2)) {
            (Ok(order), Err(refused)) | (Err(refused), Ok(order)) => (order.into_inner(), refused),
            outcomes => panic!("round {round}: exactly one call must succeed: {outcomes:?}"),
        };
        assert_eq!(
            refused.code(),
            Code::AlreadyExists,
            "round {round}: {refused:?}"
        );
        accepted.push(order);
    }

    eventually(
        "every accepted order to be recorded",
        Duration::from_secs(20),
        || async { harness.recorded_orders("nora").await == 50 },
    )
    .await;
    let mut client = client;
    for order in accepted {
        let recorded = client
            .get_order(GetOrderRequest {
                order_id: order.order_id.clone(),
            })
            .await
            .expect("get")
            .into_inner();
        assert_eq!(
            recorded.quantity, order.quantity,
            "the recorded order is the one its caller was told of: {}",
            order.order_id
        );
    }
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_keyed_request_is_refused_unavailable_while_its_key_cannot_be_claimed() {
    let prefix = unique_topic_prefix();
    // No order service: nothing listens where the gateway looks for it.
    let gateway = start_gateway(gateway_config(&prefix, None)).await;
    let mut client = OrderServiceClient::new(oms_testkit::grpc::channel(gateway.addr).await);
    let status = client
        .create_order(request("olga", "checkout-4", 7))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // A request without a key needs no claim.
    let unkeyed = client
        .create_order(request("olga", "", 7))
        .await
        .expect("create")
        .into_inner();

    let records = kafka::read_topic(
        &*kafka::client().await,
        &TopicNames::new(prefix).name(ORDER_CREATED),
    )
    .await;
    assert_eq!(records.len(), 1, "only the unkeyed order is published");
    assert_eq!(
        records[0].record.key.as_deref(),
        Some(unkeyed.order_id.as_bytes())
    );
    gateway.stop().await.expect("clean shutdown");
}
