//! Every service's `/metrics` while real orders flow: the figures an
//! operator pages on exist, are described and move with the work; a
//! partition's lag rises while its consumer cannot commit and drains once
//! it can; a poison record counts as a dead letter; and every scrape passes
//! `promtool check metrics`.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tokio::sync::oneshot;

use oms_common::topics::{
    ORDER_CREATED, PAYMENT_SUCCEEDED, PROCESS_PAYMENT, TopicNames, dead_letter_topic,
};
use oms_testkit::TestDatabase;
use oms_testkit::kafka;
use oms_testkit::metrics::Scrape;
use oms_testkit::orders::order;
use oms_testkit::system::{GATEWAY, NOTIFICATION, ORDER, PAYMENT, System};

const CREATE_ORDER: &str = "/orders.v1.OrderService/CreateOrder";

/// Families every downstream service serves, and the gateway's own.
const SERVICE_FAMILIES: &[&str] = &[
    "oms_grpc_server_requests_total",
    "oms_grpc_server_request_duration_seconds",
    "oms_grpc_server_in_flight_requests",
    "oms_consumer_records_total",
    "oms_consumer_batches_committed_total",
    "oms_consumer_commit_duration_seconds",
    "oms_consumer_lag_records",
    "oms_consumer_last_commit_age_seconds",
    "oms_consumer_partitions_owned",
    "oms_consumer_partition_lease_epoch",
    "oms_outbox_rows_waiting",
    "oms_outbox_oldest_row_age_seconds",
    "oms_outbox_parked_rows",
    "oms_db_pool_connections",
    "oms_db_pool_checkout_wait_seconds_total",
    "oms_db_pool_checkout_timeouts_total",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
];
const GATEWAY_FAMILIES: &[&str] = &[
    "oms_grpc_server_requests_total",
    "oms_grpc_server_request_duration_seconds",
    "oms_gateway_publish_duration_seconds",
    "oms_gateway_publish_unavailable_total",
    "oms_producer_batch_records",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
];

/// The label set of one topic.
fn topic(name: &str) -> [(&str, &str); 1] {
    [("topic", name)]
}

/// Scrapes `name` until `ready` holds, or panics with the last scrape.
async fn scrape_until(
    system: &System,
    name: &str,
    what: &str,
    ready: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let scrape = Scrape::from(system.metrics_addr(name)).await;
        if ready(&scrape) {
            return scrape;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: {what} within 60 s; last scrape:\n{}",
            scrape.text
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Holds an exclusive lock on `table` in `conn`'s schema from when the
/// returned future resolves until the sender is dropped or used.
async fn lock_table(
    mut conn: AsyncPgConnection,
    table: &'static str,
) -> (oneshot::Sender<()>, impl Future<Output = ()>) {
    let (release, released) = oneshot::channel::<()>();
    let (locked, is_locked) = oneshot::channel();
    let holder = tokio::spawn(async move {
        diesel::sql_query("BEGIN")
            .execute(&mut conn)
            .await
            .expect("begin");
        diesel::sql_query(format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            .execute(&mut conn)
            .await
            .expect("lock");
        let _ = locked.send(());
        let _ = released.await;
        diesel::sql_query("COMMIT")
            .execute(&mut conn)
            .await
            .expect("commit");
    });
    is_locked.await.expect("locked");
    (release, async move { holder.await.expect("lock holder") })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_service_reports_its_calls_flow_lag_and_dead_letters() {
    let db = TestDatabase::create().await;
    let system = System::start_on_test_broker(&db).await;
    let topics = TopicNames::new(system.prefix.clone());
    let mut client = system.gateway().await;
    const FIRST: usize = 8;
    for i in 0..FIRST {
        client
            .create_order(order(&format!("customer-{i}"), ""))
            .await
            .expect("create order");
    }

    // The order service counts each order once it is paid.
    let paid = [("status", "PAID")];
    let order_metrics = scrape_until(&system, ORDER, "every order paid", |s| {
        s.total("oms_orders_finished_total", &paid) == FIRST as f64
            && s.total("oms_consumer_lag_records", &[]) == 0.0
            && s.total("oms_outbox_rows_waiting", &[]) == 0.0
    })
    .await;
    let order_created = topics.name(ORDER_CREATED);
    assert_eq!(
        order_metrics.total("oms_consumer_records_total", &topic(&order_created)),
        FIRST as f64
    );
    assert_eq!(
        order_metrics.total("oms_order_flow_duration_seconds_count", &paid),
        FIRST as f64
    );
    assert!(
        order_metrics.total(
            "oms_consumer_batches_committed_total",
            &topic(&order_created)
        ) >= 1.0
    );
    assert!(order_metrics.total("oms_outbox_rows_published_total", &[]) >= FIRST as f64);
    assert_eq!(
        order_metrics.total("oms_consumer_partitions_owned", &topic(&order_created)),
        3.0,
        "one instance owns every partition"
    );
    assert!(
        order_metrics
            .sum("oms_db_pool_connections", &[("pool", "main")])
            .is_some()
    );
    assert!(
        order_metrics
            .sum("oms_db_pool_connections", &[("pool", "watches")])
            .is_some()
    );

    let gateway = Scrape::from(system.metrics_addr(GATEWAY)).await;
    let create_ok = [("method", CREATE_ORDER), ("code", "OK")];
    assert_eq!(
        gateway.total("oms_grpc_server_requests_total", &create_ok),
        FIRST as f64
    );
    assert_eq!(
        gateway.total(
            "oms_grpc_server_in_flight_requests",
            &[("method", CREATE_ORDER)]
        ),
        0.0
    );
    assert_eq!(
        gateway.total(
            "oms_gateway_publish_duration_seconds_count",
            &[("outcome", "acknowledged")]
        ),
        FIRST as f64
    );
    assert_eq!(
        gateway.total("oms_producer_batch_records_sum", &[]),
        FIRST as f64
    );
    // A refused call is counted as an error with its code.
    let bad = client
        .create_order(order("", ""))
        .await
        .expect_err("no customer");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let gateway = Scrape::from(system.metrics_addr(GATEWAY)).await;
    assert_eq!(
        gateway.total(
            "oms_grpc_server_errors_total",
            &[("method", CREATE_ORDER), ("code", "INVALID_ARGUMENT")]
        ),
        1.0
    );

    // Lag: while the payment service cannot store its position, the
    // records it fetched wait, and its lag shows them; then it drains.
    let process_payment = topics.name(PROCESS_PAYMENT);
    let (release, released) =
        lock_table(db.connect("payment_service").await, "consumer_offsets").await;
    const MORE: usize = 4;
    for i in 0..MORE {
        client
            .create_order(order(&format!("late-{i}"), ""))
            .await
            .expect("create order");
    }
    scrape_until(&system, PAYMENT, "lag while commits are blocked", |s| {
        s.total("oms_consumer_lag_records", &topic(&process_payment)) >= 1.0
    })
    .await;
    release.send(()).expect("release the lock");
    released.await;
    let payment_metrics = scrape_until(&system, PAYMENT, "the lag drained", |s| {
        s.total("oms_consumer_lag_records", &topic(&process_payment)) == 0.0
            && s.total("oms_consumer_records_total", &topic(&process_payment))
                == (FIRST + MORE) as f64
    })
    .await;
    assert!(
        payment_metrics.total(
            "oms_consumer_partition_lease_epoch",
            &topic(&process_payment)
        ) >= 1.0
    );

    // A poison record: counted on the order service's dead-letter counter.
    let kafka = kafka::client().await;
    kafka::produce_raw(
        &kafka,
        &order_created,
        0,
        b"poison",
        b"not an event".to_vec(),
        BTreeMap::new(),
    )
    .await;
    let dead_letters = dead_letter_topic(&order_created);
    let order_metrics = scrape_until(&system, ORDER, "the dead letter counted", |s| {
        s.total("oms_dead_letters_total", &topic(&dead_letters)) == 1.0
            && s.total("oms_orders_finished_total", &paid) == (FIRST + MORE) as f64
    })
    .await;

    // The notification service heard every order created and paid.
    let notification = scrape_until(&system, NOTIFICATION, "every event consumed", |s| {
        s.total(
            "oms_consumer_records_total",
            &topic(&topics.name(PAYMENT_SUCCEEDED)),
        ) == (FIRST + MORE) as f64
    })
    .await;

    let payment_metrics = Scrape::from(system.metrics_addr(PAYMENT)).await;
    let gateway = Scrape::from(system.metrics_addr(GATEWAY)).await;
    for (name, scrape, families) in [
        (GATEWAY, &gateway, GATEWAY_FAMILIES),
        (ORDER, &order_metrics, SERVICE_FAMILIES),
        (PAYMENT, &payment_metrics, SERVICE_FAMILIES),
        (NOTIFICATION, &notification, SERVICE_FAMILIES),
    ] {
        for family in families {
            assert!(
                scrape.has_help(family),
                "{name} lacks {family}:\n{}",
                scrape.text
            );
        }
        if let Err(problems) = scrape.promtool_check() {
            panic!("promtool finds problems in {name}'s metrics:\n{problems}");
        }
    }
    assert!(order_metrics.has_help("oms_orders_finished_total"));
    assert!(order_metrics.has_help("oms_dead_letters_total"));

    // Every metric the dashboard and the alerts use is one we serve.
    let served: BTreeSet<&str> = [&gateway, &order_metrics, &payment_metrics, &notification]
        .into_iter()
        .flat_map(Scrape::families)
        .collect();
    for file in [
        "deploy/grafana/dashboards/order-system.json",
        "deploy/prometheus/alerts.yml",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(file);
        let text = std::fs::read_to_string(&path).expect("read the file");
        for name in metric_names_in(&text) {
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix).filter(|f| served.contains(f)))
                .unwrap_or(name);
            assert!(
                served.contains(family),
                "{file} uses {name}, which no service serves"
            );
        }
    }
    system.shut_down();
}

#[test]
fn the_prometheus_configurations_and_alert_rules_pass_promtool() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus");
    for config in ["prometheus.yml", "local.yml"] {
        let output = std::process::Command::new("promtool")
            .args(["check", "config"])
            .arg(dir.join(config))
            .output()
            .expect("run promtool (Debian's `prometheus` package)");
        assert!(
            output.status.success(),
            "{config}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The metric names in a dashboard or rule file: words starting `oms_` or
/// `process_`.
fn metric_names_in(text: &str) -> BTreeSet<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("oms_") || word.starts_with("process_"))
        .collect()
}
