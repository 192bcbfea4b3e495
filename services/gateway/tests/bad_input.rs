//! A table of invalid requests sent over real gRPC: each gets
//! INVALID_ARGUMENT naming exactly the right field, nothing reaches Kafka,
//! and the gateway stays healthy.

mod support;

use tonic::Code;
use tonic_types::StatusExt;

use oms_api::google::r#type::Money;
use oms_api::orders::v1::CreateOrderRequest;
use oms_api::orders::v1::order_service_client::OrderServiceClient;
use oms_common::topics::{ORDER_CREATED, TopicNames};
use oms_testkit::{kafka, unique_topic_prefix};
use support::{gateway_config, start_gateway};

fn valid() -> CreateOrderRequest {
    CreateOrderRequest {
        customer_id: "customer-1".into(),
        product_id: "sku-1".into(),
        quantity: 1,
        amount: Some(Money {
            currency_code: "EUR".into(),
            units: 10,
            nanos: 0,
        }),
        request_id: String::new(),
    }
}

fn money(currency: &str, units: i64, nanos: i32) -> Option<Money> {
    Some(Money {
        currency_code: currency.into(),
        units,
        nanos,
    })
}

/// (what, request, the one field that must be reported)
fn cases() -> Vec<(&'static str, CreateOrderRequest, &'static str)> {
    let with = |change: &dyn Fn(&mut CreateOrderRequest)| {
        let mut request = valid();
        change(&mut request);
        request
    };
    vec![
        (
            "empty customer",
            with(&|r| r.customer_id.clear()),
            "customer_id",
        ),
        (
            "129 ASCII characters",
            with(&|r| r.customer_id = "c".repeat(129)),
            "customer_id",
        ),
        (
            "129 two-byte characters",
            with(&|r| r.customer_id = "é".repeat(129)),
            "customer_id",
        ),
        (
            "129 emoji",
            with(&|r| r.customer_id = "🛒".repeat(129)),
            "customer_id",
        ),
        (
            "60 KB customer",
            with(&|r| r.customer_id = "x".repeat(60_000)),
            "customer_id",
        ),
        (
            "blank customer",
            with(&|r| r.customer_id = "   ".into()),
            "customer_id",
        ),
        (
            "tab-only customer",
            with(&|r| r.customer_id = "\t".into()),
            "customer_id",
        ),
        (
            "NUL in customer",
            with(&|r| r.customer_id = "a\u{0}b".into()),
            "customer_id",
        ),
        (
            "newline in customer",
            with(&|r| r.customer_id = "line\nbreak".into()),
            "customer_id",
        ),
        (
            "DEL in customer",
            with(&|r| r.customer_id = "a\u{7f}".into()),
            "customer_id",
        ),
        (
            "empty product",
            with(&|r| r.product_id.clear()),
            "product_id",
        ),
        (
            "129-character product",
            with(&|r| r.product_id = "p".repeat(129)),
            "product_id",
        ),
        (
            "ANSI escape in product",
            with(&|r| r.product_id = "\u{1b}[31mred".into()),
            "product_id",
        ),
        (
            "blank product",
            with(&|r| r.product_id = " ".into()),
            "product_id",
        ),
        ("zero quantity", with(&|r| r.quantity = 0), "quantity"),
        ("negative quantity", with(&|r| r.quantity = -1), "quantity"),
        (
            "quantity over 10,000",
            with(&|r| r.quantity = 10_001),
            "quantity",
        ),
        (
            "minimum int32 quantity",
            with(&|r| r.quantity = i32::MIN),
            "quantity",
        ),
        (
            "maximum int32 quantity",
            with(&|r| r.quantity = i32::MAX),
            "quantity",
        ),
        ("missing amount", with(&|r| r.amount = None), "amount"),
        (
            "empty currency",
            with(&|r| r.amount = money("", 1, 0)),
            "amount.currency_code",
        ),
        (
            "two-letter currency",
            with(&|r| r.amount = money("US", 1, 0)),
            "amount.currency_code",
        ),
        (
            "four-letter currency",
            with(&|r| r.amount = money("USDX", 1, 0)),
            "amount.currency_code",
        ),
        (
            "lower-case currency",
            with(&|r| r.amount = money("usd", 1, 0)),
            "amount.currency_code",
        ),
        (
            "non-ASCII currency",
            with(&|r| r.amount = money("ÜSD", 1, 0)),
            "amount.currency_code",
        ),
        (
            "symbol in currency",
            with(&|r| r.amount = money("U$D", 1, 0)),
            "amount.currency_code",
        ),
        (
            "zero amount",
            with(&|r| r.amount = money("EUR", 0, 0)),
            "amount",
        ),
        (
            "negative units",
            with(&|r| r.amount = money("EUR", -5, 0)),
            "amount",
        ),
        (
            "negative nanos only",
            with(&|r| r.amount = money("EUR", 0, -10_000_000)),
            "amount",
        ),
        (
            "units positive, nanos negative",
            with(&|r| r.amount = money("EUR", 1, -10_000_000)),
            "amount.nanos",
        ),
        (
            "units negative, nanos positive",
            with(&|r| r.amount = money("EUR", -1, 10_000_000)),
            "amount.nanos",
        ),
        (
            "nanos of a whole unit",
            with(&|r| r.amount = money("EUR", 1, 1_000_000_000)),
            "amount.nanos",
        ),
        (
            "nanos below minus one unit",
            with(&|r| r.amount = money("EUR", 0, -1_000_000_000)),
            "amount.nanos",
        ),
        (
            "one nano",
            with(&|r| r.amount = money("EUR", 1, 1)),
            "amount.nanos",
        ),
        (
            "half a cent",
            with(&|r| r.amount = money("EUR", 1, 5_000_000)),
            "amount.nanos",
        ),
        (
            "maximum int64 units",
            with(&|r| r.amount = money("EUR", i64::MAX, 0)),
            "amount.units",
        ),
        (
            "just over the amount limit",
            with(&|r| r.amount = money("EUR", 1_000_000_000_001, 0)),
            "amount.units",
        ),
        (
            "129-character request id",
            with(&|r| r.request_id = "r".repeat(129)),
            "request_id",
        ),
        (
            "NUL request id",
            with(&|r| r.request_id = "\u{0}".into()),
            "request_id",
        ),
        (
            "blank request id",
            with(&|r| r.request_id = "  ".into()),
            "request_id",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn each_invalid_request_names_its_field_and_the_gateway_stays_healthy() {
    let prefix = unique_topic_prefix();
    let gateway = start_gateway(gateway_config(&prefix, None)).await;
    let addr = gateway.addr;
    let mut client = OrderServiceClient::new(oms_testkit::grpc::channel(addr).await);

    let cases = cases();
    assert!(cases.len() >= 30);
    for (what, request, field) in cases {
        let status = client.create_order(request).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        let violations = status
            .get_details_bad_request()
            .expect("BadRequest detail")
            .field_violations;
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, [field], "{what}");
    }

    // A request over the size limit is refused before it is decoded.
    let mut huge = valid();
    huge.product_id = "p".repeat(100_000);
    let status = client.create_order(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    // Still healthy, still working, and nothing invalid was published.
    assert_eq!(
        oms_testkit::grpc::health(addr, "").await,
        Some(oms_testkit::grpc::ServingStatus::Serving)
    );
    client
        .create_order(valid())
        .await
        .expect("a valid order after all that");
    let records = kafka::read_topic(
        &*kafka::client().await,
        &TopicNames::new(prefix).name(ORDER_CREATED),
    )
    .await;
    assert_eq!(records.len(), 1, "only the valid order reached Kafka");
    gateway.stop().await.expect("clean shutdown");
}
