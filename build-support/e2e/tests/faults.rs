//! Fault tests with real processes, a real broker and a real database:
//! crashes, a broker outage and a database outage. After each, every order
//! the gateway accepted must complete exactly once. Run them alone with
//! `just test-faults`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use tonic::Code;
use tonic::transport::Channel;
use uuid::Uuid;

use oms_api::google::r#type::Money;
use oms_api::orders::v1::order_service_client::OrderServiceClient;
use oms_api::orders::v1::{CreateOrderRequest, GetOrderRequest};
use oms_testkit::audit::{Topics, assert_effects_exactly_once};
use oms_testkit::broker::TestBroker;
use oms_testkit::grpc::{self, ServingStatus};
use oms_testkit::load::PacedLoad;
use oms_testkit::system::{GATEWAY, NOTIFICATION, ORDER, PAYMENT, System};
use oms_testkit::{TestDatabase, database, eventually, unique_topic_prefix};

fn order_request(i: usize) -> CreateOrderRequest {
    CreateOrderRequest {
        customer_id: format!("customer-{}", i % 50),
        product_id: format!("sku-{}", i % 13),
        quantity: 1 + (i % 5) as i32,
        amount: Some(Money {
            currency_code: "USD".into(),
            units: 5 + (i % 100) as i64,
            nanos: 990_000_000,
        }),
        request_id: String::new(),
    }
}

async fn create_orders(
    client: &OrderServiceClient<Channel>,
    range: std::ops::Range<usize>,
) -> Vec<Uuid> {
    let calls = range.map(|i| {
        let mut client = client.clone();
        async move {
            client
                .create_order(order_request(i))
                .await
                .expect("create order")
                .into_inner()
                .order_id
        }
    });
    futures::future::join_all(calls)
        .await
        .iter()
        .map(|id| Uuid::parse_str(id).expect("uuid"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_survive_repeated_sigkills_of_every_downstream_service() {
    const ORDERS: usize = 2_000;
    const CLIENTS: usize = 20;
    // Paced so that the load lasts long enough for every service to be
    // killed several times while orders flow.
    const PAUSE_BETWEEN_ORDERS: Duration = Duration::from_millis(60);
    let db = TestDatabase::create().await;
    let mut system = System::start_on_test_broker(&db).await;
    let client = system.gateway().await;

    let load = PacedLoad {
        orders: ORDERS,
        clients: CLIENTS,
        pause: PAUSE_BETWEEN_ORDERS,
        request: order_request,
    }
    .spawn(vec![client]);

    let mut kills: HashMap<&str, usize> = HashMap::new();
    let started = Instant::now();
    while !load.is_finished() || kills.values().min().copied().unwrap_or(0) < 3 {
        for victim in [ORDER, PAYMENT, NOTIFICATION] {
            tokio::time::sleep(Duration::from_millis(350)).await;
            system.crash_and_restart(victim);
            *kills.entry(victim).or_default() += 1;
        }
    }
    let accepted = load.await.expect("load generator");
    let load_time = started.elapsed();
    for name in [ORDER, PAYMENT, NOTIFICATION] {
        system
            .wait_until_serving(name, Duration::from_secs(30))
            .await;
    }
    assert_eq!(accepted.len(), ORDERS);
    println!(
        "accepted {} orders in {load_time:?}; SIGKILLs: {kills:?}",
        accepted.len()
    );
    let topics = Topics::on_test_broker(&system.prefix).await;
    assert_effects_exactly_once(&db, &topics, &accepted, Duration::from_secs(180)).await;
    system.shut_down();
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_outage_gives_unavailable_and_every_accepted_order_completes_after_it() {
    let db = TestDatabase::create().await;
    let prefix = unique_topic_prefix();
    let mut broker = TestBroker::start_durable(&prefix).await;
    let publish_timeout = Duration::from_millis(2_000);
    let extra = [(
        "GATEWAY_PUBLISH_TIMEOUT_MS",
        publish_timeout.as_millis().to_string(),
    )];
    let system = System::start(&db, &broker.addr.to_string(), &prefix, &extra).await;
    let mut client = system.gateway().await;
    let mut accepted = create_orders(&client, 0..20).await;

    broker.stop();
    // Never OK for an order that was not published, never a hang.
    for i in 20..23 {
        let started = Instant::now();
        let status = client
            .create_order(order_request(i))
            .await
            .expect_err("no broker, no order");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            started.elapsed() < publish_timeout + Duration::from_secs(2),
            "answered within its deadline"
        );
    }
    for name in [GATEWAY, ORDER, PAYMENT, NOTIFICATION] {
        let addr = system.addr(name);
        eventually(
            &format!("{name} to report NOT_SERVING"),
            Duration::from_secs(15),
            || async move { grpc::health(addr, "").await == Some(ServingStatus::NotServing) },
        )
        .await;
    }

    broker.resume().await;
    for name in [GATEWAY, ORDER, PAYMENT, NOTIFICATION] {
        system
            .wait_until_serving(name, Duration::from_secs(60))
            .await;
    }
    accepted.extend(create_orders(&client, 100..120).await);
    let topics = Topics::on(&broker.addr.to_string(), &prefix).await;
    assert_effects_exactly_once(&db, &topics, &accepted, Duration::from_secs(120)).await;
    system.shut_down();
}

/// Refuses new connections to the test's database and ends the open ones:
/// a database outage for this test alone (the server is shared).
async fn cut_database(db: &TestDatabase, allow: bool) {
    let mut admin = AsyncPgConnection::establish(database::admin_url().expose())
        .await
        .expect("admin connection");
    let name = db.url.database_name();
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS {allow}"
        ))
        .await
        .expect("alter database");
    if !allow {
        admin
            .batch_execute(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            ))
            .await
            .expect("terminate connections");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn database_outage_pauses_the_flow_and_every_order_completes_after_it() {
    let db = TestDatabase::create().await;
    let system = System::start_on_test_broker(&db).await;
    let mut client = system.gateway().await;
    let mut accepted = create_orders(&client, 0..10).await;

    cut_database(&db, false).await;
    for name in [ORDER, PAYMENT, NOTIFICATION] {
        let addr = system.addr(name);
        eventually(
            &format!("{name} to report NOT_SERVING"),
            Duration::from_secs(20),
            || async move { grpc::health(addr, "").await == Some(ServingStatus::NotServing) },
        )
        .await;
    }
    // The gateway needs only the broker: orders are still accepted, and
    // they wait on the broker for the database to return.
    accepted.extend(create_orders(&client, 10..30).await);
    let status = client
        .get_order(GetOrderRequest {
            order_id: accepted[0].to_string(),
        })
        .await
        .expect_err("reads need the database");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    cut_database(&db, true).await;
    let topics = Topics::on_test_broker(&system.prefix).await;
    assert_effects_exactly_once(&db, &topics, &accepted, Duration::from_secs(120)).await;
    system.shut_down();
}
