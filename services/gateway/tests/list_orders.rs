//! ListOrders through the gateway and the order service: newest first,
//! filtered by customer, and stable pages while new orders arrive.

use std::collections::HashSet;
use std::time::Duration;

mod support;

use tonic::Code;
use tonic_types::StatusExt;

use oms_api::google::r#type::Money;
use oms_api::orders::v1::{CreateOrderRequest, ListOrdersRequest};
use oms_testkit::eventually;
use support::start;

fn order(customer: &str, i: i64) -> CreateOrderRequest {
    CreateOrderRequest {
        customer_id: customer.into(),
        product_id: format!("sku-{i}"),
        quantity: 1,
        amount: Some(Money {
            currency_code: "EUR".into(),
            units: 1 + i,
            nanos: 0,
        }),
        request_id: String::new(),
    }
}

fn list(customer: &str, page_size: i32, page_token: &str) -> ListOrdersRequest {
    ListOrdersRequest {
        customer_id: customer.into(),
        page_size,
        page_token: page_token.into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pages_return_every_order_once_while_new_orders_arrive() {
    let harness = start().await;
    let mut client = harness.client().await;
    let mut placed = Vec::new();
    for i in 0..25 {
        placed.push(
            client
                .create_order(order("pat", i))
                .await
                .expect("create")
                .into_inner()
                .order_id,
        );
    }
    client
        .create_order(order("someone-else", 0))
        .await
        .expect("create");
    eventually("25 orders recorded", Duration::from_secs(20), || async {
        harness.recorded_orders("pat").await == 25
    })
    .await;

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list_orders(list("pat", 10, &token))
            .await
            .expect("list")
            .into_inner();
        pages += 1;
        seen.extend(page.orders.iter().map(|o| o.order_id.clone()));
        assert!(
            page.orders.iter().all(|o| o.customer_id == "pat"),
            "filtered by customer"
        );
        // New orders arrive between pages; they are newer than the position.
        client
            .create_order(order("pat", 100 + pages))
            .await
            .expect("create");
        eventually(
            "the new order recorded",
            Duration::from_secs(20),
            || async { harness.recorded_orders("pat").await == 25 + pages },
        )
        .await;
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, 3, "25 orders in pages of 10");
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no order twice");
    assert_eq!(
        unique,
        placed.iter().collect::<HashSet<_>>(),
        "exactly the orders placed before paging"
    );
    // Newest first: the gateway's ids are time-ordered UUIDv7.
    let mut newest_first = seen.clone();
    newest_first.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(seen, newest_first);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_list_requests_name_their_field() {
    let harness = start().await;
    let mut client = harness.client().await;
    for (request, field) in [
        (list("", 10, "not-a-token"), "page_token"),
        (list("", 10, &"ab".repeat(24)), "page_token"),
        (list("", -1, ""), "page_size"),
        (list(&"c".repeat(129), 10, ""), "customer_id"),
    ] {
        let status = client.list_orders(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let fields: Vec<String> = status
            .get_details_bad_request()
            .expect("BadRequest")
            .field_violations
            .into_iter()
            .map(|v| v.field)
            .collect();
        assert_eq!(fields, [field]);
    }
    // Oversized pages are clamped, not refused; an empty list is one page.
    let page = client
        .list_orders(list("nobody", 100_000, ""))
        .await
        .expect("list")
        .into_inner();
    assert!(page.orders.is_empty() && page.next_page_token.is_empty());
    harness.stop().await;
}
