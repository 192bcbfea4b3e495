//! The whole flow with every service as a real process: orders placed
//! through the gateway's gRPC API reach PAID, with exactly one order row, one
//! payment row and two notification rows each, and every service shuts down
//! cleanly on SIGTERM.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;

use oms_api::google::r#type::Money;
use oms_api::orders::v1::order_service_client::OrderServiceClient;
use oms_api::orders::v1::{CreateOrderRequest, GetOrderRequest, OrderStatus};
use oms_testkit::process::ServiceProcess;
use oms_testkit::{TestDatabase, eventually, grpc, kafka, unique_topic_prefix};

const ORDERS: usize = 30;

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

#[derive(QueryableByName, Debug, PartialEq)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

#[derive(QueryableByName)]
struct KindCount {
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = BigInt)]
    count: i64,
}

#[derive(QueryableByName)]
struct Mismatch {
    #[diesel(sql_type = Text)]
    order_id: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_placed_through_the_gateway_reach_paid_exactly_once() {
    let db = TestDatabase::create().await;
    let prefix = unique_topic_prefix();
    let addrs: Vec<SocketAddr> = (0..4).map(|_| free_port()).collect();
    let (gateway_addr, order_addr, payment_addr, notification_addr) =
        (addrs[0], addrs[1], addrs[2], addrs[3]);
    let common = vec![
        ("KAFKA_BROKERS", kafka::brokers().join(",")),
        ("KAFKA_TOPIC_PREFIX", prefix.clone()),
        ("KAFKA_TOPIC_PARTITIONS", "3".to_owned()),
        ("DATABASE_URL", db.url.expose().to_owned()),
        ("GATEWAY_GRPC_ADDR", gateway_addr.to_string()),
        ("ORDER_GRPC_ADDR", order_addr.to_string()),
        ("PAYMENT_GRPC_ADDR", payment_addr.to_string()),
        ("NOTIFICATION_GRPC_ADDR", notification_addr.to_string()),
        ("ORDER_SERVICE_URL", format!("http://{order_addr}")),
    ];
    let services: Vec<(ServiceProcess, SocketAddr)> = [
        ("order-service", order_addr),
        ("payment-service", payment_addr),
        ("notification-service", notification_addr),
        ("gateway", gateway_addr),
    ]
    .into_iter()
    .map(|(name, addr)| (ServiceProcess::spawn(name, &common, &prefix), addr))
    .collect();
    for (process, addr) in &services {
        eventually(
            &format!("{} to serve (log: {})", process.name, process.log.display()),
            Duration::from_secs(60),
            || async { grpc::health(*addr, "").await == Some(grpc::ServingStatus::Serving) },
        )
        .await;
    }

    let client = OrderServiceClient::new(grpc::channel(gateway_addr).await);
    let calls = (0..ORDERS).map(|i| {
        let mut client = client.clone();
        async move {
            let request = CreateOrderRequest {
                customer_id: format!("customer-{}", i % 7),
                product_id: format!("sku-{i}"),
                quantity: 1 + i as i32,
                amount: Some(Money {
                    currency_code: "EUR".into(),
                    units: 10 + i as i64,
                    nanos: 250_000_000,
                }),
                request_id: String::new(),
            };
            client
                .create_order(request)
                .await
                .expect("create order")
                .into_inner()
        }
    });
    let accepted = futures::future::join_all(calls).await;
    assert!(
        accepted
            .iter()
            .all(|order| order.status == OrderStatus::Pending as i32)
    );

    for order in &accepted {
        eventually(&format!("order {} to be paid", order.order_id), Duration::from_secs(60), || {
            let mut client = client.clone();
            let order_id = order.order_id.clone();
            async move {
                matches!(
                    client.get_order(GetOrderRequest { order_id }).await,
                    Ok(found) if found.get_ref().status == OrderStatus::Paid as i32 && !found.get_ref().payment_id.is_empty()
                )
            }
        })
        .await;
    }
    // Notifications trail the payment; wait for them, then give any
    // duplicate a moment to show up before counting.
    let expected_notifications = 2 * ORDERS as i64;
    eventually(
        "two notifications per order",
        Duration::from_secs(30),
        || async {
            diesel::sql_query("SELECT count(*) AS count FROM notifications")
                .get_result::<Count>(&mut db.connect("notification_service").await)
                .await
                .is_ok_and(|c| c.count == expected_notifications)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut conn = db.connect("order_service").await;
    let count = |sql: &'static str| diesel::sql_query(sql);
    let orders: Count = count("SELECT count(*) AS count FROM order_service.orders WHERE status = 'PAID' AND payment_id IS NOT NULL")
        .get_result(&mut conn)
        .await
        .expect("orders");
    assert_eq!(orders.count, ORDERS as i64, "every order paid");
    let all_orders: Count = count("SELECT count(*) AS count FROM order_service.orders")
        .get_result(&mut conn)
        .await
        .expect("orders");
    assert_eq!(all_orders.count, ORDERS as i64, "one row per order");
    let payments: Count =
        count("SELECT count(DISTINCT order_id) AS count FROM payment_service.payments")
            .get_result(&mut conn)
            .await
            .expect("payments");
    let payment_rows: Count = count("SELECT count(*) AS count FROM payment_service.payments")
        .get_result(&mut conn)
        .await
        .expect("payments");
    assert_eq!(
        (payments.count, payment_rows.count),
        (ORDERS as i64, ORDERS as i64),
        "one payment per order"
    );
    let mismatched: Vec<Mismatch> = diesel::sql_query(
        "SELECT o.order_id::text AS order_id FROM order_service.orders o \
         LEFT JOIN payment_service.payments p ON p.order_id = o.order_id \
         WHERE p.payment_id IS DISTINCT FROM o.payment_id OR p.amount_minor IS DISTINCT FROM o.amount_minor",
    )
    .load(&mut conn)
    .await
    .expect("join");
    let mismatched: Vec<&str> = mismatched.iter().map(|m| m.order_id.as_str()).collect();
    assert!(
        mismatched.is_empty(),
        "orders whose payment does not match: {mismatched:?}"
    );
    let per_kind: Vec<(String, i64)> = diesel::sql_query("SELECT kind, count(*) AS count FROM notification_service.notifications GROUP BY kind ORDER BY kind")
            .load::<KindCount>(&mut conn)
            .await
            .expect("notifications")
            .into_iter()
            .map(|k| (k.kind, k.count))
            .collect();
    assert_eq!(
        per_kind,
        [
            ("ORDER_RECEIVED".to_owned(), ORDERS as i64),
            ("PAYMENT_SUCCEEDED".to_owned(), ORDERS as i64)
        ],
        "two notifications per order"
    );

    for (process, _) in services {
        let name = process.name.clone();
        let log = process.log.clone();
        let status = process.terminate();
        assert!(
            status.success(),
            "{name} exited with {status} on SIGTERM (log: {})",
            log.display()
        );
    }
}
