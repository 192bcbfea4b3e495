//! Payment failure and compensation across the real processes: a declined
//! payment cancels the order with its reason, records one declined payment
//! and tells the customer; an approved order beside it is paid.

use std::time::Duration;

use diesel::sql_types::{BigInt, Text};
use diesel_async::RunQueryDsl;

use oms_api::google::r#type::Money;
use oms_api::orders::v1::order_service_client::OrderServiceClient;
use oms_api::orders::v1::{CreateOrderRequest, GetOrderRequest, Order, OrderStatus};
use oms_testkit::system::System;
use oms_testkit::{TestDatabase, eventually, kafka, unique_topic_prefix};
use tonic::transport::Channel;

fn request(customer: &str, units: i64) -> CreateOrderRequest {
    CreateOrderRequest {
        customer_id: customer.into(),
        product_id: "sku-9".into(),
        quantity: 1,
        amount: Some(Money {
            currency_code: "EUR".into(),
            units,
            nanos: 0,
        }),
        request_id: String::new(),
    }
}

/// Waits until the order reaches `status` and returns it as GetOrder shows it.
async fn settled(
    client: &OrderServiceClient<Channel>,
    order: &Order,
    status: OrderStatus,
) -> Order {
    let get = || {
        let mut client = client.clone();
        let order_id = order.order_id.clone();
        async move {
            client
                .get_order(GetOrderRequest { order_id })
                .await
                .map(|r| r.into_inner())
        }
    };
    eventually(
        &format!("order {} to be {status:?}", order.order_id),
        Duration::from_secs(30),
        || async { matches!(get().await, Ok(found) if found.status == status as i32) },
    )
    .await;
    get().await.expect("get order")
}

#[derive(diesel::QueryableByName, Debug, PartialEq)]
struct Row {
    #[diesel(sql_type = Text)]
    value: String,
    #[diesel(sql_type = BigInt)]
    count: i64,
}

#[tokio::test(flavor = "multi_thread")]
async fn declined_orders_end_cancelled_with_their_reason_and_approved_ones_paid() {
    let db = TestDatabase::create().await;
    let extra = [
        ("PAYMENT_DECLINE_ABOVE", "500.00".to_owned()),
        ("PAYMENT_DECLINE_CUSTOMERS", "mallory, trudy".to_owned()),
    ];
    let system = System::start(
        &db,
        &kafka::brokers().join(","),
        &unique_topic_prefix(),
        &extra,
    )
    .await;
    let mut client = system.gateway().await;
    let blocked = client
        .create_order(request("mallory", 10))
        .await
        .expect("create")
        .into_inner();
    let too_big = client
        .create_order(request("alice", 501))
        .await
        .expect("create")
        .into_inner();
    let fine = client
        .create_order(request("alice", 500))
        .await
        .expect("create")
        .into_inner();

    let blocked = settled(&client, &blocked, OrderStatus::Cancelled).await;
    let too_big = settled(&client, &too_big, OrderStatus::Cancelled).await;
    let fine = settled(&client, &fine, OrderStatus::Paid).await;
    assert_eq!(blocked.failure_reason, "customer mallory may not pay");
    assert_eq!(
        too_big.failure_reason,
        "amount 501.00 EUR exceeds the limit of 500.00 EUR"
    );
    assert!(fine.failure_reason.is_empty() && !fine.payment_id.is_empty());

    // Notifications trail the orders' final state.
    let count_by = |sql: &'static str| {
        let db = &db;
        async move {
            diesel::sql_query(sql)
                .load::<Row>(&mut db.connect("public").await)
                .await
                .expect("query")
        }
    };
    let kinds = "SELECT kind AS value, count(*) AS count FROM notification_service.notifications GROUP BY kind ORDER BY kind";
    eventually("six notifications", Duration::from_secs(30), || async {
        count_by(kinds).await.iter().map(|r| r.count).sum::<i64>() == 6
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let expected = |pairs: &[(&str, i64)]| {
        pairs
            .iter()
            .map(|(v, c)| Row {
                value: (*v).into(),
                count: *c,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        count_by(kinds).await,
        expected(&[
            ("ORDER_RECEIVED", 3),
            ("PAYMENT_FAILED", 2),
            ("PAYMENT_SUCCEEDED", 1)
        ])
    );
    let payments = "SELECT status AS value, count(*) AS count FROM payment_service.payments GROUP BY status ORDER BY status";
    assert_eq!(
        count_by(payments).await,
        expected(&[("COMPLETED", 1), ("DECLINED", 2)])
    );
    let orders = "SELECT status AS value, count(*) AS count FROM order_service.orders GROUP BY status ORDER BY status";
    assert_eq!(
        count_by(orders).await,
        expected(&[("CANCELLED", 2), ("PAID", 1)])
    );
    system.shut_down();
}
