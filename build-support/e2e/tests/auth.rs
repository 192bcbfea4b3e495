//! Who may do what, through gRPC against the four processes running with
//! `AUTH_MODE=jwt`: a table of authentication and authorization cases, each
//! with the status code it must get. Customer A's view of customer B's
//! records must be indistinguishable from records that do not exist.

use std::time::Duration;

use base64::Engine;
use serde_json::json;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;
use uuid::Uuid;

use oms_api::notifications::v1::ListNotificationsRequest;
use oms_api::notifications::v1::notification_service_client::NotificationServiceClient;
use oms_api::order_keys::keyed_order_id;
use oms_api::orders::internal::v1::ClaimRequestKeyRequest;
use oms_api::orders::internal::v1::GetOrderRequest as InternalGetOrderRequest;
use oms_api::orders::internal::v1::order_query_service_client::OrderQueryServiceClient;
use oms_api::orders::v1::order_service_client::OrderServiceClient;
use oms_api::orders::v1::{
    GetOrderRequest, ListOrdersRequest, Order, OrderStatus, WatchOrderRequest,
};
use oms_api::payments::v1::GetPaymentRequest;
use oms_api::payments::v1::payment_service_client::PaymentServiceClient;
use oms_devkeys::{RawEncodingKey, SigningKey, TokenAlgorithm, TokenHeader};
use oms_testkit::auth::{TestKeys, bearer, with_authorization};
use oms_testkit::orders::order;
use oms_testkit::system::{GATEWAY, NOTIFICATION, ORDER, PAYMENT, System};
use oms_testkit::{TestDatabase, eventually, grpc, kafka, unique_topic_prefix};

/// The cases of the table: forged tokens, scopes, ownership, limits, probes.
const CASES: usize = 49;

const CUSTOMER: &str = "orders:read orders:write";
const ADMIN: &str = "orders:read orders:write orders:admin";

/// The code a call ended with: `Ok` for success.
fn code_of<T>(result: &Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// Collects each case's outcome, so one run reports the whole table.
#[derive(Default)]
struct Table {
    rows: Vec<(String, Code, Code)>,
}

impl Table {
    fn check(&mut self, case: &str, got: Code, expected: Code) {
        self.rows.push((case.to_owned(), got, expected));
    }

    fn assert_all_pass(&self) {
        let mut report = String::new();
        for (case, got, expected) in &self.rows {
            let mark = if got == expected { "ok  " } else { "FAIL" };
            report.push_str(&format!(
                "{mark} {case}: got {got:?}, expected {expected:?}\n"
            ));
        }
        println!("{report}");
        // Every case the test names, so none can go missing unseen.
        assert_eq!(self.rows.len(), CASES, "cases in the table");
        assert!(
            self.rows.iter().all(|(_, got, expected)| got == expected),
            "some cases failed:\n{report}"
        );
    }
}

/// A token signed by `key` with `claims` changed from a valid customer
/// token's.
fn token_with(
    key: &SigningKey,
    subject: &str,
    change: impl FnOnce(&mut serde_json::Value),
) -> String {
    let mut claims = oms_devkeys::claims(subject, CUSTOMER, 600);
    change(&mut claims);
    key.sign(TokenHeader::new(TokenAlgorithm::ES256), &claims)
        .expect("sign")
}

fn base64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Tokens that must all be refused with UNAUTHENTICATED and nothing more
/// than "invalid token".
fn forged_tokens(keys: &TestKeys) -> Vec<(&'static str, String)> {
    let key = &keys.key;
    let now = oms_devkeys::unix_now();
    let claims = oms_devkeys::claims("alice", CUSTOMER, 600);
    let unsigned = format!(
        "{}.{}.",
        base64url(
            json!({"alg": "none", "typ": "JWT", "kid": key.kid})
                .to_string()
                .as_bytes()
        ),
        base64url(claims.to_string().as_bytes())
    );
    // HS256 keyed with the public key set: the classic confusion attack.
    let mut hs256 = TokenHeader::new(TokenAlgorithm::HS256);
    hs256.kid = Some(key.kid.clone());
    let confused = oms_devkeys::encode(
        &hs256,
        &claims,
        &RawEncodingKey::from_secret(key.jwks.as_bytes()),
    )
    .expect("sign");
    // Another key, under an id the services do not know, and under ours.
    let stranger = SigningKey::generate("stranger").expect("key");
    let impostor = SigningKey::generate(&key.kid).expect("key");
    vec![
        ("garbage", "not-a-jwt".to_owned()),
        (
            "expired beyond the leeway",
            token_with(key, "alice", |c| c["exp"] = json!(now - 60)),
        ),
        (
            "not yet valid",
            token_with(key, "alice", |c| c["nbf"] = json!(now + 60)),
        ),
        (
            "wrong issuer",
            token_with(key, "alice", |c| c["iss"] = json!("someone-else")),
        ),
        (
            "wrong audience",
            token_with(key, "alice", |c| c["aud"] = json!("another-api")),
        ),
        (
            "no subject",
            token_with(key, "alice", |c| {
                c.as_object_mut().expect("object").remove("sub");
            }),
        ),
        (
            "no expiry",
            token_with(key, "alice", |c| {
                c.as_object_mut().expect("object").remove("exp");
            }),
        ),
        ("alg none", unsigned),
        ("HS256 keyed with the public key", confused),
        (
            "unknown kid",
            stranger.token("alice", CUSTOMER, 600).expect("sign"),
        ),
        (
            "another key under our kid",
            impostor.token("alice", CUSTOMER, 600).expect("sign"),
        ),
    ]
}

async fn wait_until_paid(gateway: &OrderServiceClient<Channel>, admin: &str, order_id: &str) {
    eventually("order paid", Duration::from_secs(60), || {
        let mut gateway = gateway.clone();
        let request = bearer(
            GetOrderRequest {
                order_id: order_id.to_owned(),
            },
            admin,
        );
        async move {
            gateway
                .get_order(request)
                .await
                .is_ok_and(|o| o.into_inner().status == OrderStatus::Paid as i32)
        }
    })
    .await;
}

async fn create(
    gateway: &OrderServiceClient<Channel>,
    token: &str,
    customer: &str,
    request_id: &str,
) -> Result<Order, tonic::Status> {
    gateway
        .clone()
        .create_order(bearer(order(customer, request_id), token))
        .await
        .map(|response| response.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_valid_token_with_the_right_scope_reaches_only_its_own_records() {
    let db = TestDatabase::create().await;
    let keys = TestKeys::create();
    let brokers = kafka::brokers().join(",");
    let system = System::start(&db, &brokers, &unique_topic_prefix(), &keys.env()).await;
    let gateway = system.gateway().await;
    let alice = keys.token("alice", CUSTOMER);
    let bob = keys.token("bob", CUSTOMER);
    let admin = keys.token("ops", ADMIN);
    let mut table = Table::default();

    // Each customer's order, placed with its own token.
    let alices = create(&gateway, &alice, "alice", "alice-1")
        .await
        .expect("alice's order");
    let bobs = create(&gateway, &bob, "bob", "shared-key")
        .await
        .expect("bob's order");
    wait_until_paid(&gateway, &admin, &alices.order_id).await;
    wait_until_paid(&gateway, &admin, &bobs.order_id).await;
    let get = |order_id: &str| GetOrderRequest {
        order_id: order_id.to_owned(),
    };

    // Authentication: every forged token is refused, saying only "invalid token".
    let missing = gateway.clone().get_order(get(&alices.order_id)).await;
    table.check("no token", code_of(&missing), Code::Unauthenticated);
    let basic = gateway
        .clone()
        .get_order(with_authorization(
            get(&alices.order_id),
            "Basic YWxpY2U6eA==",
        ))
        .await;
    table.check("not a bearer token", code_of(&basic), Code::Unauthenticated);
    for (case, token) in forged_tokens(&keys) {
        let refused = gateway
            .clone()
            .get_order(bearer(get(&alices.order_id), &token))
            .await;
        table.check(case, code_of(&refused), Code::Unauthenticated);
        if let Err(status) = refused {
            assert_eq!(status.message(), "invalid token", "{case} said too much");
        }
    }
    let within_leeway = token_with(&keys.key, "alice", |c| {
        c["exp"] = json!(oms_devkeys::unix_now() - 1)
    });
    let lenient = gateway
        .clone()
        .get_order(bearer(get(&alices.order_id), &within_leeway))
        .await;
    table.check("expired within the leeway", code_of(&lenient), Code::Ok);

    // Scopes.
    let read_only = keys.token("alice", "orders:read");
    let write_only = keys.token("alice", "orders:write");
    let created = create(&gateway, &read_only, "alice", "").await;
    table.check(
        "create with orders:read only",
        code_of(&created),
        Code::PermissionDenied,
    );
    let read = gateway
        .clone()
        .get_order(bearer(get(&alices.order_id), &write_only))
        .await;
    table.check(
        "read with orders:write only",
        code_of(&read),
        Code::PermissionDenied,
    );
    let admin_only = keys.token("ops", "orders:admin");
    let read = gateway
        .clone()
        .get_order(bearer(get(&bobs.order_id), &admin_only))
        .await;
    table.check(
        "read with orders:admin only",
        code_of(&read),
        Code::PermissionDenied,
    );

    // Ownership: A and B.
    let created = create(&gateway, &alice, "bob", "").await;
    table.check(
        "alice creates for bob",
        code_of(&created),
        Code::PermissionDenied,
    );
    let own = gateway
        .clone()
        .get_order(bearer(get(&alices.order_id), &alice))
        .await;
    table.check("alice reads her order", code_of(&own), Code::Ok);
    let theirs = gateway
        .clone()
        .get_order(bearer(get(&bobs.order_id), &alice))
        .await;
    table.check("alice reads bob's order", code_of(&theirs), Code::NotFound);
    let nobodys = Uuid::now_v7().to_string();
    let missing = gateway
        .clone()
        .get_order(bearer(get(&nobodys), &alice))
        .await;
    table.check(
        "alice reads an order that does not exist",
        code_of(&missing),
        Code::NotFound,
    );
    if let (Err(theirs), Err(missing)) = (&theirs, &missing) {
        assert_eq!(
            theirs.message().replace(&bobs.order_id, "ID"),
            missing.message().replace(&nobodys, "ID"),
            "another's order must read exactly as a missing one"
        );
    }

    let list = |customer: &str| ListOrdersRequest {
        customer_id: customer.to_owned(),
        page_size: 100,
        page_token: String::new(),
    };
    let listed = gateway.clone().list_orders(bearer(list(""), &alice)).await;
    let customers: Vec<String> = listed
        .as_ref()
        .map(|r| {
            r.get_ref()
                .orders
                .iter()
                .map(|o| o.customer_id.clone())
                .collect()
        })
        .unwrap_or_default();
    table.check(
        "alice lists (her own by default)",
        code_of(&listed),
        Code::Ok,
    );
    assert_eq!(customers, vec!["alice".to_owned()], "alice's list");
    let listed = gateway
        .clone()
        .list_orders(bearer(list("bob"), &alice))
        .await;
    table.check(
        "alice lists bob's orders",
        code_of(&listed),
        Code::PermissionDenied,
    );
    let listed = gateway.clone().list_orders(bearer(list(""), &admin)).await;
    let count = listed.as_ref().map_or(0, |r| r.get_ref().orders.len());
    table.check("admin lists everyone's", code_of(&listed), Code::Ok);
    assert_eq!(count, 2, "admin sees both orders");
    let theirs = gateway
        .clone()
        .get_order(bearer(get(&bobs.order_id), &admin))
        .await;
    table.check("admin reads bob's order", code_of(&theirs), Code::Ok);

    // A watch of another's order behaves as a watch of one never recorded.
    let watch = |order_id: &str| {
        let mut request = bearer(
            WatchOrderRequest {
                order_id: order_id.to_owned(),
            },
            &alice,
        );
        request.set_timeout(Duration::from_millis(1500));
        request
    };
    let mut client = gateway.clone();
    let theirs = match client.watch_order(watch(&bobs.order_id)).await {
        Ok(stream) => stream.into_inner().message().await.map(|_| ()),
        Err(status) => Err(status),
    };
    let mut client = gateway.clone();
    let missing = match client.watch_order(watch(&nobodys)).await {
        Ok(stream) => stream.into_inner().message().await.map(|_| ()),
        Err(status) => Err(status),
    };
    table.check(
        "alice watches an order that does not exist",
        code_of(&missing),
        Code::DeadlineExceeded,
    );
    table.check(
        "alice watches bob's order",
        code_of(&theirs),
        code_of(&missing),
    );
    let mut client = gateway.clone();
    let own = client
        .watch_order(bearer(
            WatchOrderRequest {
                order_id: alices.order_id.clone(),
            },
            &alice,
        ))
        .await;
    let first = match own {
        Ok(stream) => stream
            .into_inner()
            .message()
            .await
            .map(|o| o.map(|o| o.status)),
        Err(status) => Err(status),
    };
    table.check("alice watches her order", code_of(&first), Code::Ok);

    // A retry with bob's key names alice's own order, never bob's.
    let retried = create(&gateway, &alice, "alice", "shared-key").await;
    table.check(
        "alice retries with bob's request_id",
        code_of(&retried),
        Code::Ok,
    );
    if let Ok(order) = &retried {
        assert_ne!(order.order_id, bobs.order_id, "bob's order leaked");
        assert_eq!(order.customer_id, "alice");
    }

    // Payments and notifications.
    let payments = PaymentServiceClient::new(grpc::channel(system.addr(PAYMENT)).await);
    let payment = |order_id: &str, token: &str| {
        bearer(
            GetPaymentRequest {
                order_id: order_id.to_owned(),
            },
            token,
        )
    };
    let own = payments
        .clone()
        .get_payment(payment(&alices.order_id, &alice))
        .await;
    table.check("alice reads her payment", code_of(&own), Code::Ok);
    let theirs = payments
        .clone()
        .get_payment(payment(&bobs.order_id, &alice))
        .await;
    table.check(
        "alice reads bob's payment",
        code_of(&theirs),
        Code::NotFound,
    );
    let unauthenticated = payments
        .clone()
        .get_payment(GetPaymentRequest {
            order_id: alices.order_id.clone(),
        })
        .await;
    table.check(
        "payment without a token",
        code_of(&unauthenticated),
        Code::Unauthenticated,
    );

    let notifications =
        NotificationServiceClient::new(grpc::channel(system.addr(NOTIFICATION)).await);
    let by = |order_id: &str, customer: &str, token: &str| {
        bearer(
            ListNotificationsRequest {
                order_id: order_id.to_owned(),
                customer_id: customer.to_owned(),
                page_size: 100,
                page_token: String::new(),
            },
            token,
        )
    };
    // Bob's notifications exist (seen by an admin) before alice looks.
    eventually("bob's notifications", Duration::from_secs(30), || {
        let (mut notifications, request) = (notifications.clone(), by("", "bob", &admin));
        async move {
            notifications
                .list_notifications(request)
                .await
                .is_ok_and(|r| r.into_inner().notifications.len() >= 2)
        }
    })
    .await;
    let theirs = notifications
        .clone()
        .list_notifications(by(&bobs.order_id, "", &alice))
        .await;
    let leaked = theirs
        .as_ref()
        .map_or(0, |r| r.get_ref().notifications.len());
    table.check(
        "alice lists bob's order's notifications",
        code_of(&theirs),
        Code::Ok,
    );
    assert_eq!(leaked, 0, "bob's notifications leaked to alice");
    let theirs = notifications
        .clone()
        .list_notifications(by("", "bob", &alice))
        .await;
    table.check(
        "alice lists bob's notifications",
        code_of(&theirs),
        Code::PermissionDenied,
    );
    let own = notifications
        .clone()
        .list_notifications(by("", "", &alice))
        .await;
    let own_customers: Vec<String> = own
        .as_ref()
        .map(|r| {
            r.get_ref()
                .notifications
                .iter()
                .map(|n| n.customer_id.clone())
                .collect()
        })
        .unwrap_or_default();
    table.check("alice lists her notifications", code_of(&own), Code::Ok);
    assert!(
        !own_customers.is_empty() && own_customers.iter().all(|c| c == "alice"),
        "alice's notifications: {own_customers:?}"
    );

    // The order service checks the caller itself, whoever calls it.
    let internal = OrderQueryServiceClient::new(grpc::channel(system.addr(ORDER)).await);
    let internal_get = |order_id: &str| InternalGetOrderRequest {
        order_id: order_id.to_owned(),
    };
    let direct = internal
        .clone()
        .get_order(internal_get(&bobs.order_id))
        .await;
    table.check(
        "internal read without a token",
        code_of(&direct),
        Code::Unauthenticated,
    );
    let direct = internal
        .clone()
        .get_order(bearer(internal_get(&bobs.order_id), &alice))
        .await;
    table.check(
        "internal read of bob's order as alice",
        code_of(&direct),
        Code::NotFound,
    );

    // Keys are claimed by their customer, so nobody calling the internal
    // API directly claims, probes or reads another customer's key.
    let claim = |customer: &str, request_id: &str, order_id: &str| ClaimRequestKeyRequest {
        order_id: order_id.to_owned(),
        fingerprint: Uuid::now_v7().to_string(),
        customer_id: customer.to_owned(),
        request_id: request_id.to_owned(),
    };
    let bobs_key = keyed_order_id("bob", "shared-key").to_string();
    assert_eq!(bobs_key, bobs.order_id);
    let claimed = internal
        .clone()
        .claim_request_key(bearer(claim("bob", "shared-key", &bobs_key), &alice))
        .await;
    table.check(
        "internal claim of bob's key as alice",
        code_of(&claimed),
        Code::PermissionDenied,
    );
    let claimed = internal
        .clone()
        .claim_request_key(bearer(claim("alice", "shared-key", &bobs_key), &alice))
        .await;
    table.check(
        "internal claim of bob's order id under alice's name",
        code_of(&claimed),
        Code::InvalidArgument,
    );
    let claimed = internal
        .clone()
        .claim_request_key(bearer(claim("", "", &bobs_key), &alice))
        .await;
    table.check(
        "internal claim by order id alone",
        code_of(&claimed),
        Code::InvalidArgument,
    );

    // The request limits hold for an authenticated caller too.
    let listed = gateway
        .clone()
        .list_orders(bearer(
            ListOrdersRequest {
                page_size: -1,
                ..list("")
            },
            &alice,
        ))
        .await;
    table.check(
        "a negative page size",
        code_of(&listed),
        Code::InvalidArgument,
    );
    let mut huge = order("alice", "");
    huge.product_id = "p".repeat(100_000);
    let created = gateway.clone().create_order(bearer(huge, &alice)).await;
    table.check(
        "a message over the size limit",
        code_of(&created),
        Code::OutOfRange,
    );
    let mut padded = bearer(get(&alices.order_id), &alice);
    let padding: tonic::metadata::MetadataValue<_> = "x".repeat(32 * 1024).parse().expect("ascii");
    padded.metadata_mut().insert("x-padding", padding);
    let read = gateway.clone().get_order(padded).await;
    // HTTP 431 (headers too large), before any handler runs.
    table.check("metadata over the limit", code_of(&read), Code::Unknown);
    if let Err(status) = &read {
        assert!(status.message().contains("431"), "{status:?}");
    }
    let after = gateway
        .clone()
        .get_order(bearer(get(&alices.order_id), &alice))
        .await;
    table.check("a call after the oversized one", code_of(&after), Code::Ok);

    // Probes and discovery stay open.
    for name in [GATEWAY, ORDER, PAYMENT, NOTIFICATION] {
        let health = grpc::health(system.addr(name), name).await;
        let code = if health == Some(grpc::ServingStatus::Serving) {
            Code::Ok
        } else {
            Code::Unauthenticated
        };
        table.check(&format!("{name} health without a token"), code, Code::Ok);
    }
    let listed = grpc::reflection_v1_services(system.addr(GATEWAY)).await;
    let code = if listed.iter().any(|s| s == "orders.v1.OrderService") {
        Code::Ok
    } else {
        Code::Unauthenticated
    };
    table.check("reflection without a token", code, Code::Ok);

    table.assert_all_pass();
    system.shut_down();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_caller_over_its_rate_limit_is_told_when_to_retry_while_others_go_on() {
    let db = TestDatabase::create().await;
    let keys = TestKeys::create();
    let brokers = kafka::brokers().join(",");
    let mut env = keys.env();
    env.push(("RATE_LIMIT_READS_PER_SECOND", "5".to_owned()));
    env.push(("RATE_LIMIT_FAILED_AUTH_PER_SECOND", "2".to_owned()));
    let system = System::start(&db, &brokers, &unique_topic_prefix(), &env).await;
    let gateway = system.gateway().await;
    let alice = keys.token("alice", CUSTOMER);
    let bob = keys.token("bob", CUSTOMER);
    let list = |token: &str| {
        bearer(
            ListOrdersRequest {
                customer_id: String::new(),
                page_size: 10,
                page_token: String::new(),
            },
            token,
        )
    };

    // Alice bursts four times her limit at once.
    let started = std::time::Instant::now();
    let burst = (0..20).map(|_| {
        let mut gateway = gateway.clone();
        let request = list(&alice);
        async move { gateway.list_orders(request).await }
    });
    let answers = futures::future::join_all(burst).await;
    let burst_took = started.elapsed();
    let mut retry_after = None;
    let mut alice_ok = 0;
    for answer in &answers {
        match answer {
            Ok(_) => alice_ok += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                retry_after = status
                    .get_details_retry_info()
                    .and_then(|info| info.retry_delay);
            }
        }
    }
    // A second's worth at once (5), plus what refilled while the burst ran.
    let refilled = (burst_took.as_secs_f64() * 5.0).ceil() as usize;
    assert!(
        (5..=5 + refilled).contains(&alice_ok),
        "alice was allowed {alice_ok} of 20 calls in {burst_took:?}"
    );
    let retry_after = retry_after.expect("RESOURCE_EXHAUSTED with a RetryInfo delay");
    assert!(
        retry_after > Duration::ZERO && retry_after <= Duration::from_millis(200),
        "retry after {retry_after:?}"
    );
    // Bob's budget is his own: all of his calls go through.
    for call in 0..5 {
        let answer = gateway.clone().list_orders(list(&bob)).await;
        assert!(answer.is_ok(), "bob's call {call}: {answer:?}");
    }

    // After the delay alice may call again.
    tokio::time::sleep(retry_after).await;
    assert!(gateway.clone().list_orders(list(&alice)).await.is_ok());

    // An address sending bad tokens is refused, after its budget, before
    // any signature is checked: even a good token from it waits.
    let started = std::time::Instant::now();
    let mut refused = Vec::new();
    let mut blocked_until = None;
    for _ in 0..15 {
        let answer = gateway.clone().list_orders(list("garbage")).await;
        refused.push(code_of(&answer));
        if let Err(status) = &answer
            && let Some(delay) = status.get_details_retry_info().and_then(|i| i.retry_delay)
        {
            blocked_until = Some(std::time::Instant::now() + delay);
        }
    }
    let unauthenticated = refused
        .iter()
        .filter(|c| **c == Code::Unauthenticated)
        .count();
    let refilled = (started.elapsed().as_secs_f64() * 2.0).ceil() as usize;
    assert!(
        (2..=2 + refilled).contains(&unauthenticated),
        "{unauthenticated} of 15 bad tokens were checked: {refused:?}"
    );
    assert!(refused.contains(&Code::ResourceExhausted), "{refused:?}");
    let blocked_until = blocked_until.expect("a RetryInfo delay");
    let asked_at = std::time::Instant::now();
    let blocked = gateway.clone().list_orders(list(&bob)).await;
    if asked_at < blocked_until {
        assert_eq!(
            code_of(&blocked),
            Code::ResourceExhausted,
            "bob from a blocked address"
        );
    }
    system.shut_down();
}

/// Opens a watch of an order that is never recorded: it stays open until
/// its deadline.
async fn open_watch(
    gateway: &OrderServiceClient<Channel>,
    token: &str,
) -> Result<tonic::Streaming<Order>, tonic::Status> {
    let request = bearer(
        WatchOrderRequest {
            order_id: Uuid::now_v7().to_string(),
        },
        token,
    );
    gateway
        .clone()
        .watch_order(request)
        .await
        .map(|response| response.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn watches_are_bounded_per_caller_in_all_and_in_age() {
    let db = TestDatabase::create().await;
    let keys = TestKeys::create();
    let brokers = kafka::brokers().join(",");
    let mut env = keys.env();
    env.extend([
        ("GATEWAY_WATCHES_PER_CALLER", "2".to_owned()),
        ("GATEWAY_MAX_WATCHES", "3".to_owned()),
        ("GATEWAY_WATCH_MAX_AGE_SECONDS", "5".to_owned()),
    ]);
    let system = System::start(&db, &brokers, &unique_topic_prefix(), &env).await;
    let gateway = system.gateway().await;
    let (alice, bob, carol) = (
        keys.token("alice", CUSTOMER),
        keys.token("bob", CUSTOMER),
        keys.token("carol", CUSTOMER),
    );

    let opened_at = std::time::Instant::now();
    let first = open_watch(&gateway, &alice)
        .await
        .expect("alice's first watch");
    let _second = open_watch(&gateway, &alice)
        .await
        .expect("alice's second watch");
    let third = open_watch(&gateway, &alice).await;
    assert_eq!(
        code_of(&third),
        Code::ResourceExhausted,
        "alice's third watch"
    );
    let _bobs = open_watch(&gateway, &bob).await.expect("bob's watch");
    let carols = open_watch(&gateway, &carol).await;
    assert_eq!(
        code_of(&carols),
        Code::ResourceExhausted,
        "over the gateway's cap"
    );

    // A closed watch gives its place back at once, long before the others
    // reach their maximum age.
    drop(first);
    let mut reopened = None;
    while opened_at.elapsed() < Duration::from_secs(3) && reopened.is_none() {
        reopened = open_watch(&gateway, &alice).await.ok();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut reopened = reopened.expect("alice's place was not given back");
    let reopened_at = std::time::Instant::now();
    // It ends at its maximum age although the call set no deadline.
    let ended = reopened.message().await;
    assert_eq!(code_of(&ended), Code::DeadlineExceeded);
    let lived = reopened_at.elapsed();
    assert!(
        lived > Duration::from_secs(4) && lived < Duration::from_secs(8),
        "the watch lived {lived:?}"
    );
    system.shut_down();
}
