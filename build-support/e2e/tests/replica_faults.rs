//! The replicated crash test: three instances each of the order, payment
//! and notification services and two gateways, with instances SIGKILLed,
//! SIGTERMed, started again and paused past their lease while orders flow.
//! Afterwards every accepted order is paid exactly once, with one payment
//! and two notifications. Run it alone with `just test-faults`.

use std::time::{Duration, Instant};

use oms_api::google::r#type::Money;
use oms_api::orders::v1::CreateOrderRequest;
use oms_testkit::TestDatabase;
use oms_testkit::audit::{Topics, assert_effects_exactly_once};
use oms_testkit::cluster::Cluster;
use oms_testkit::load::PacedLoad;
use oms_testkit::system::{NOTIFICATION, ORDER, PAYMENT};

const LEASE_MS: u64 = 3_000;

#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill,
    Terminate,
    /// SIGSTOP past the lease, then SIGCONT.
    Pause,
}

/// Every kind of fault on every service, spread over the instances.
const SCHEDULE: [(&str, usize, Fault); 9] = [
    (ORDER, 0, Fault::Kill),
    (PAYMENT, 1, Fault::Terminate),
    (NOTIFICATION, 2, Fault::Pause),
    (ORDER, 1, Fault::Terminate),
    (PAYMENT, 0, Fault::Pause),
    (NOTIFICATION, 0, Fault::Kill),
    (ORDER, 2, Fault::Pause),
    (PAYMENT, 2, Fault::Kill),
    (NOTIFICATION, 1, Fault::Terminate),
];

fn order_request(i: usize) -> CreateOrderRequest {
    CreateOrderRequest {
        customer_id: format!("customer-{}", i % 40),
        product_id: format!("sku-{}", i % 11),
        quantity: 1 + (i % 3) as i32,
        amount: Some(Money {
            currency_code: "EUR".into(),
            units: 3 + (i % 50) as i64,
            nanos: 500_000_000,
        }),
        request_id: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_order_completes_once_while_replicas_crash_stop_and_pause() {
    const ORDERS: usize = 3_000;
    const CLIENTS: usize = 30;
    const PAUSE_BETWEEN_ORDERS: Duration = Duration::from_millis(250);
    let db = TestDatabase::create().await;
    let extra = [
        ("LEASE_DURATION_MS", LEASE_MS.to_string()),
        ("LEASE_RENEW_INTERVAL_MS", "500".to_string()),
    ];
    let mut cluster = Cluster::start(&db, 3, 2, &extra).await;
    let gateways = [cluster.gateway(0).await, cluster.gateway(1).await];

    let load = PacedLoad {
        orders: ORDERS,
        clients: CLIENTS,
        pause: PAUSE_BETWEEN_ORDERS,
        request: order_request,
    }
    .spawn(gateways.to_vec());

    let started = Instant::now();
    let mut done = Vec::new();
    for (service, index, fault) in SCHEDULE {
        tokio::time::sleep(Duration::from_millis(700)).await;
        match fault {
            Fault::Kill => {
                cluster.kill(service, index);
                tokio::time::sleep(Duration::from_millis(500)).await;
                cluster.start_again(service, index).await;
            }
            Fault::Terminate => {
                cluster.terminate(service, index);
                cluster.start_again(service, index).await;
            }
            Fault::Pause => {
                cluster.signal(service, index, "STOP");
                tokio::time::sleep(Duration::from_millis(LEASE_MS + 1_500)).await;
                cluster.signal(service, index, "CONT");
            }
        }
        done.push(format!(
            "{fault:?} {service} #{index} at {:?}",
            started.elapsed()
        ));
    }
    let faults_over = started.elapsed();
    let accepted = load.await.expect("load generator");
    assert_eq!(accepted.len(), ORDERS);
    println!(
        "accepted {} orders in {:?}; faults done in {faults_over:?}: {done:#?}",
        accepted.len(),
        started.elapsed()
    );
    let topics = Topics::on_test_broker(&cluster.prefix).await;
    assert_effects_exactly_once(&db, &topics, &accepted, Duration::from_secs(180)).await;
    cluster.shut_down();
}
