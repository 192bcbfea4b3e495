//! Graceful shutdown of a real process: the first SIGTERM lets in-flight
//! calls finish with their real answer and exits 0; a second signal exits
//! at once. A call is kept in flight by stopping the broker under it.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use tonic::Code;

use oms_api::google::r#type::Money;
use oms_api::orders::v1::CreateOrderRequest;
use oms_api::orders::v1::order_service_client::OrderServiceClient;
use oms_testkit::broker::TestBroker;
use oms_testkit::grpc::{self, ServingStatus};
use oms_testkit::process::ServiceProcess;
use oms_testkit::system::{GATEWAY, free_port};
use oms_testkit::{eventually, unique_topic_prefix};

/// A gateway whose broker has just stopped, and a CreateOrder in flight that
/// will take about `PUBLISH_TIMEOUT` to be answered UNAVAILABLE.
struct Stalled {
    gateway: ServiceProcess,
    call: tokio::task::JoinHandle<Result<(), tonic::Status>>,
    _broker: TestBroker,
}

const PUBLISH_TIMEOUT: Duration = Duration::from_secs(3);

async fn gateway_with_a_call_in_flight() -> Stalled {
    let prefix = unique_topic_prefix();
    let mut broker = TestBroker::start_durable(&prefix).await;
    let addr = free_port();
    let env = [
        ("KAFKA_BROKERS", broker.addr.to_string()),
        ("KAFKA_TOPIC_PREFIX", prefix.clone()),
        ("GATEWAY_GRPC_ADDR", addr.to_string()),
        (
            "GATEWAY_PUBLISH_TIMEOUT_MS",
            PUBLISH_TIMEOUT.as_millis().to_string(),
        ),
        ("SHUTDOWN_GRACE_SECONDS", "20".to_owned()),
    ];
    let gateway = ServiceProcess::spawn(GATEWAY, &env, &prefix);
    eventually("the gateway to serve", Duration::from_secs(30), || async {
        grpc::health(addr, "").await == Some(ServingStatus::Serving)
    })
    .await;
    broker.stop();
    let mut client = OrderServiceClient::new(grpc::channel(addr).await);
    let call = tokio::spawn(async move {
        let request = CreateOrderRequest {
            customer_id: "c".into(),
            product_id: "p".into(),
            quantity: 1,
            amount: Some(Money {
                currency_code: "EUR".into(),
                units: 1,
                nanos: 0,
            }),
            request_id: String::new(),
        };
        client.create_order(request).await.map(|_| ())
    });
    // Let the call reach the gateway before anyone signals.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Stalled {
        gateway,
        call,
        _broker: broker,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_call_in_flight_finish_then_exits_zero() {
    let mut stalled = gateway_with_a_call_in_flight().await;
    stalled.gateway.signal("TERM");

    let answer = stalled.call.await.expect("call task");
    let status = answer.expect_err("no broker, no order");
    // The gateway's own answer, not a connection cut by the shutdown.
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("could not be published"),
        "{status:?}"
    );
    let exit = stalled
        .gateway
        .wait_for_exit(Duration::from_secs(20))
        .expect("exits within the grace period");
    assert!(exit.success(), "exit status {exit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_signal_exits_at_once() {
    let mut stalled = gateway_with_a_call_in_flight().await;
    stalled.gateway.signal("TERM");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = Instant::now();
    stalled.gateway.signal("INT");
    let exit = stalled
        .gateway
        .wait_for_exit(Duration::from_secs(2))
        .expect("exits at once");
    assert!(
        second.elapsed() < PUBLISH_TIMEOUT,
        "did not wait for the call in flight"
    );
    assert_eq!(
        exit.code(),
        Some(130),
        "exit status {exit} (signal {:?})",
        exit.signal()
    );
    stalled.call.abort();
}
