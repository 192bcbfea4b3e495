//! The whole flow with every service as a real process: orders placed
//! through the gateway's gRPC API reach PAID, with exactly one order row, one
//! payment row and two notification rows each, every event published once,
//! GetOrder shows them paid, and every service shuts down cleanly on SIGTERM.

use std::time::Duration;

use uuid::Uuid;

use oms_api::google::r#type::Money;
use oms_api::orders::v1::{CreateOrderRequest, GetOrderRequest, OrderStatus};
use oms_testkit::TestDatabase;
use oms_testkit::audit::{Topics, assert_completed_exactly_once};
use oms_testkit::system::System;

const ORDERS: usize = 30;

#[tokio::test(flavor = "multi_thread")]
async fn orders_placed_through_the_gateway_reach_paid_exactly_once() {
    let db = TestDatabase::create().await;
    let system = System::start_on_test_broker(&db).await;
    let client = system.gateway().await;

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
    let ids: Vec<Uuid> = accepted
        .iter()
        .map(|o| Uuid::parse_str(&o.order_id).expect("uuid"))
        .collect();

    let topics = Topics::on_test_broker(&system.prefix).await;
    assert_completed_exactly_once(&db, &topics, &ids, Duration::from_secs(60)).await;
    let mut client = client.clone();
    for order in &accepted {
        let found = client
            .get_order(GetOrderRequest {
                order_id: order.order_id.clone(),
            })
            .await
            .expect("get order")
            .into_inner();
        assert_eq!(found.status, OrderStatus::Paid as i32);
        assert!(!found.payment_id.is_empty());
        assert_eq!(found.amount, order.amount);
    }
    system.shut_down();
}
