//! A CreateOrder answered with an error is not published afterwards, the
//! answer does not pass the broker's own words on to the client, an order
//! too large for the broker is never sent, and no publish timeout outlasts
//! the server's own.
//!
//! The broker is a private tansu behind a proxy that can swallow traffic
//! without closing connections, as a lost network does: requests then
//! neither fail nor get an answer, and records queue up behind the batches
//! in flight until the network comes back.

use std::process::Stdio;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Request};

mod support;

use gateway::error::PUBLISH_FAILED;
use oms_api::google::r#type::Money;
use oms_api::orders::v1::CreateOrderRequest;
use oms_api::orders::v1::order_service_client::OrderServiceClient;
use oms_common::topics::{ORDER_CREATED, TopicNames};
use oms_testkit::broker::TestBroker;
use oms_testkit::proxy::TestProxy;
use oms_testkit::service::RunningService;
use oms_testkit::system::free_ports;
use oms_testkit::{kafka, unique_topic_prefix};
use support::{gateway_config, start_gateway};

/// Short, so that batches waiting for a free produce slot outlive their
/// callers; before the fix those batches went out when the network came
/// back, once the batches ahead of them had timed out.
const CLIENT_DEADLINE: Duration = Duration::from_millis(300);
const PUBLISH_TIMEOUT: Duration = Duration::from_millis(1_000);
/// More calls per partition than produce requests in flight (4 of them).
const CALLS: usize = 20;

/// An order without a `request_id`: the gateway publishes it without asking
/// the order service first.
fn order_request() -> CreateOrderRequest {
    CreateOrderRequest {
        customer_id: "customer-9".into(),
        product_id: "sku-42".into(),
        quantity: 1,
        amount: Some(Money {
            currency_code: "EUR".into(),
            units: 12,
            nanos: 500_000_000,
        }),
        request_id: String::new(),
    }
}

struct Proxied {
    proxy: TestProxy,
    _broker: TestBroker,
    gateway: RunningService,
    client: OrderServiceClient<Channel>,
    prefix: String,
}

/// A private broker reachable only through a proxy, and a gateway that
/// reaches it through the proxy, with a short publish timeout.
async fn gateway_behind_a_proxy() -> Proxied {
    let prefix = unique_topic_prefix();
    let addrs = free_ports(2);
    let (broker_addr, proxy_addr) = (addrs[0], addrs[1]);
    let proxy = TestProxy::start(proxy_addr, broker_addr).await;
    let broker = TestBroker::start_advertising(&prefix, broker_addr, proxy.addr).await;
    let mut config = gateway_config(&prefix, None);
    config.kafka.brokers = vec![proxy.addr.to_string()];
    config.publish_timeout = PUBLISH_TIMEOUT;
    let gateway = start_gateway(config).await;
    let client = OrderServiceClient::new(oms_testkit::grpc::channel(gateway.addr).await);
    Proxied {
        proxy,
        _broker: broker,
        gateway,
        client,
        prefix,
    }
}

impl Proxied {
    /// The keys (order ids) of every `order-created` record, read through
    /// the proxy.
    async fn published_order_ids(&self) -> Vec<String> {
        let mut config = kafka::test_config(&self.prefix);
        config.brokers = vec![self.proxy.addr.to_string()];
        let client = oms_common::kafka::connect(&config, "publish-deadline-test")
            .await
            .expect("broker behind the proxy");
        let topic = TopicNames::new(self.prefix.clone()).name(ORDER_CREATED);
        kafka::read_topic(&client, &topic)
            .await
            .into_iter()
            .map(|record| String::from_utf8(record.record.key.expect("key")).expect("utf-8 key"))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_whose_callers_gave_up_are_not_published_when_the_broker_comes_back() {
    let proxied = gateway_behind_a_proxy().await;
    let accepted = proxied
        .client
        .clone()
        .create_order(order_request())
        .await
        .expect("the broker is reachable")
        .into_inner()
        .order_id;

    proxied.proxy.blackhole();
    // A little apart, so that each partition's first four records take all
    // its produce slots and the others wait for one.
    let mut calls = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let mut client = proxied.client.clone();
        calls.push(tokio::spawn(async move {
            let mut request = Request::new(order_request());
            request.set_timeout(CLIENT_DEADLINE);
            client.create_order(request).await
        }));
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    for call in calls {
        let status = call
            .await
            .expect("call task")
            .expect_err("the broker is unreachable");
        // tonic reports a passed deadline as CANCELLED, on either side.
        assert!(
            matches!(
                status.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
            ),
            "{status:?}"
        );
    }
    // Every caller's deadline has passed on the gateway too, and well before
    // the publish timeout of the first batches sent into the blackhole.
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxied.proxy.restore();
    // Before the fix, the blackholed batches were retried over the new
    // connections, and the records queued behind them went once those
    // timed out, a publish timeout after they were sent.
    tokio::time::sleep(PUBLISH_TIMEOUT * 2).await;

    assert_eq!(
        proxied.published_order_ids().await,
        vec![accepted],
        "only the order answered OK is on the topic"
    );
    proxied.gateway.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn unavailable_tells_the_client_what_to_do_and_not_what_the_broker_said() {
    let proxied = gateway_behind_a_proxy().await;
    proxied.proxy.blackhole();

    let status = proxied
        .client
        .clone()
        .create_order(order_request())
        .await
        .expect_err("the broker is unreachable");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), PUBLISH_FAILED, "{status:?}");
    proxied.proxy.restore();
    proxied.gateway.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_over_the_brokers_message_limit_is_refused_and_never_sent() {
    let prefix = unique_topic_prefix();
    let mut config = gateway_config(&prefix, None);
    // Below any order's record: every order is too large.
    config.kafka.max_message_bytes = 256;
    let gateway = start_gateway(config).await;
    let mut client = OrderServiceClient::new(oms_testkit::grpc::channel(gateway.addr).await);

    let status = client
        .create_order(order_request())
        .await
        .expect_err("too large for the broker");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    let topic = TopicNames::new(prefix).name(ORDER_CREATED);
    let published = kafka::read_topic(&*kafka::client().await, &topic).await;
    assert!(
        published.is_empty(),
        "{} records published",
        published.len()
    );
    gateway.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_publish_timeout_longer_than_the_servers_own_is_refused_at_start_up() {
    let too_long = oms_common::grpc::SERVER_TIMEOUT + Duration::from_millis(1);
    let gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env(
            "GATEWAY_PUBLISH_TIMEOUT_MS",
            too_long.as_millis().to_string(),
        )
        .env("GATEWAY_GRPC_ADDR", "127.0.0.1:0")
        .env("AUTH_MODE", "disabled")
        .env("RATE_LIMIT_WRITES_PER_SECOND", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the gateway");
    // Before the fix the gateway accepted it and ran: the timeout kills it.
    let output = tokio::time::timeout(Duration::from_secs(10), gateway.wait_with_output())
        .await
        .expect("the gateway exits at start-up")
        .expect("gateway output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("GATEWAY_PUBLISH_TIMEOUT_MS"), "{stderr}");
}
