//! Settlement: the provider is asked outside the consumer's transaction,
//! once per order, under the order id as its idempotency key, and a
//! provider that is slow or silent still leaves every order settled once.

use std::time::Duration;

use prost::Message;
use uuid::Uuid;

use oms_api::orders::events::v1::PaymentFailed;
use oms_api::payments::v1::PaymentStatus;
use oms_common::topics::{PAYMENT_FAILED, PAYMENT_SUCCEEDED, PROCESS_PAYMENT, TopicNames};
use oms_testkit::events::{self, committed_records, forget_offsets, record};
use oms_testkit::{TestDatabase, eventually, unique_topic_prefix};
use payment_service::SCHEMA;
use payment_service::provider::{Decision, Fault, SimulatedProvider};
use payment_service::settlement::{ProviderPolicy, UNANSWERED_REASON};

use crate::helpers::{
    WAIT, get_payment, impatient, publish, published, settled, simulator, start_with, state_of,
};

#[tokio::test(flavor = "multi_thread")]
async fn the_provider_is_asked_once_per_order_even_when_redelivered() {
    let db = TestDatabase::create().await;
    let prefix = unique_topic_prefix();
    let topics = TopicNames::new(prefix.clone());
    let provider = simulator(Fault::None);
    let ledger = provider.ledger.clone();
    let service = start_with(&db, &prefix, provider.clone(), ProviderPolicy::default()).await;
    let order_id = Uuid::now_v7();
    let request = record(
        &order_id.to_string(),
        &events::process_payment(&order_id.to_string(), "grace"),
    );
    for _ in 0..3 {
        publish(&topics, PROCESS_PAYMENT, &request).await;
    }
    let committed = || async {
        committed_records(&mut db.connect(SCHEMA).await, &topics.name(PROCESS_PAYMENT)).await
    };
    eventually("the three requests committed", WAIT, || async {
        committed().await == 3
    })
    .await;
    settled(&db, order_id).await;

    service.stop().await.expect("clean shutdown");
    forget_offsets(&mut db.connect(SCHEMA).await).await;
    let service = start_with(&db, &prefix, provider, ProviderPolicy::default()).await;
    eventually("the three requests committed again", WAIT, || async {
        committed().await == 3
    })
    .await;
    events::wait_until_outbox_drained(&db, SCHEMA).await;

    assert_eq!(
        ledger.calls(order_id),
        1,
        "six deliveries, one provider call"
    );
    assert_eq!(ledger.decision(order_id), Some(Decision::Approved));
    assert_eq!(published(&topics, PAYMENT_SUCCEEDED).await.len(), 1);
    service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_that_times_out_settles_the_order_once() {
    let db = TestDatabase::create().await;
    let prefix = unique_topic_prefix();
    let topics = TopicNames::new(prefix.clone());
    // Each key's first call charges and its answer is lost.
    let provider = simulator(Fault::Timeout(1));
    let ledger = provider.ledger.clone();
    let service = start_with(&db, &prefix, provider, impatient(5)).await;
    let order_id = Uuid::now_v7();
    let request = events::process_payment(&order_id.to_string(), "heidi");
    publish(
        &topics,
        PROCESS_PAYMENT,
        &record(&order_id.to_string(), &request),
    )
    .await;

    let (status, reason, calls) = settled(&db, order_id).await;
    assert_eq!((status.as_str(), reason, calls), ("COMPLETED", None, 2));
    events::wait_until_outbox_drained(&db, SCHEMA).await;
    assert_eq!(ledger.calls(order_id), 2, "asked again after the timeout");
    assert_eq!(
        ledger.charges(order_id),
        1,
        "the repeated key is not a second charge"
    );
    assert_eq!(published(&topics, PAYMENT_SUCCEEDED).await.len(), 1);
    assert!(published(&topics, PAYMENT_FAILED).await.is_empty());
    service.stop().await.expect("clean shutdown");
}

/// A provider call that fails the same way every time (`fault`): the
/// payment is declined after `max_unanswered` calls, once, with
/// `UNANSWERED_REASON`, and the order service hears of it once.
async fn declines_once_after_unanswered_calls(fault: Fault, max_unanswered: i32, customer: &str) {
    let db = TestDatabase::create().await;
    let prefix = unique_topic_prefix();
    let topics = TopicNames::new(prefix.clone());
    let provider = simulator(fault);
    let ledger = provider.ledger.clone();
    let service = start_with(&db, &prefix, provider, impatient(max_unanswered)).await;
    let order_id = Uuid::now_v7();
    let request = events::process_payment(&order_id.to_string(), customer);
    publish(
        &topics,
        PROCESS_PAYMENT,
        &record(&order_id.to_string(), &request),
    )
    .await;

    let (status, reason, calls) = settled(&db, order_id).await;
    assert_eq!(
        (status.as_str(), reason.as_deref(), calls),
        ("DECLINED", Some(UNANSWERED_REASON), max_unanswered)
    );
    events::wait_until_outbox_drained(&db, SCHEMA).await;
    assert_eq!(
        ledger.calls(order_id),
        max_unanswered as u32,
        "asked at most max_unanswered times"
    );
    let failed = published(&topics, PAYMENT_FAILED).await;
    assert_eq!(failed.len(), 1, "the order service cancels the order on it");
    let event = PaymentFailed::decode(failed[0].record.value.as_deref().unwrap_or_default())
        .expect("payload");
    assert_eq!(event.reason, UNANSWERED_REASON);
    assert!(published(&topics, PAYMENT_SUCCEEDED).await.is_empty());
    service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_that_never_answers_declines_the_order_once() {
    declines_once_after_unanswered_calls(Fault::Timeout(100), 3, "ivan").await;
}

/// Each panic counts as an unanswered call.
#[tokio::test(flavor = "multi_thread")]
async fn a_provider_call_that_always_panics_declines_the_order_once() {
    declines_once_after_unanswered_calls(Fault::Panic(100), 2, "oscar").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payment_pending_at_shutdown_is_settled_once_after_restarts() {
    // More lives cut short than the provider may leave unanswered: our own
    // stops say nothing about the provider, so they never decline.
    const MAX_UNANSWERED: i32 = 2;
    const STOPS: u32 = 3;
    let db = TestDatabase::create().await;
    let prefix = unique_topic_prefix();
    let topics = TopicNames::new(prefix.clone());
    let silent = simulator(Fault::Timeout(STOPS));
    let ledger = silent.ledger.clone();
    let patient = ProviderPolicy {
        timeout: Duration::from_secs(60),
        max_attempts: MAX_UNANSWERED,
    };
    // The same ledger, answering: no record is delivered again, so only the
    // worker's sweep can find the payment after the last restart.
    let answering = SimulatedProvider {
        fault: Fault::None,
        ..silent.clone()
    };
    let mut service = start_with(&db, &prefix, silent.clone(), patient).await;
    let order_uuid = Uuid::now_v7();
    let order_id = order_uuid.to_string();
    let request = events::process_payment(&order_id, "judy");
    publish(&topics, PROCESS_PAYMENT, &record(&order_id, &request)).await;

    for stop in 1..=STOPS {
        eventually("the provider asked", WAIT, || async {
            ledger.calls(order_uuid) == stop
        })
        .await;
        let pending = get_payment(&service, &order_id).await.expect("pending");
        assert_eq!(pending.status, PaymentStatus::Pending as i32);
        assert_eq!(pending.decline_reason, "");
        // Shutdown abandons the call in flight; the payment stays PENDING.
        service.stop().await.expect("clean shutdown");
        assert_eq!(
            state_of(&db, order_uuid).await.map(|(status, ..)| status),
            Some("PENDING".to_owned())
        );
        let provider = if stop < STOPS { &silent } else { &answering };
        service = start_with(&db, &prefix, provider.clone(), patient).await;
    }
    let (status, reason, calls) = settled(&db, order_uuid).await;
    assert_eq!((status.as_str(), reason, calls), ("COMPLETED", None, 4));
    events::wait_until_outbox_drained(&db, SCHEMA).await;
    assert_eq!(
        (ledger.calls(order_uuid), ledger.charges(order_uuid)),
        (STOPS + 1, 1),
        "asked again under the same key, charged once"
    );
    assert_eq!(published(&topics, PAYMENT_SUCCEEDED).await.len(), 1);
    service.stop().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_ask_the_provider_once_per_order() {
    const ORDERS: usize = 24;
    let db = TestDatabase::create().await;
    let prefix = unique_topic_prefix();
    let topics = TopicNames::new(prefix.clone());
    // Calls outlast the workers' 500 ms sweeps: an instance that settled
    // every pending payment it saw would ask about the other's calls in
    // flight.
    let provider = simulator(Fault::Slow(Duration::from_millis(1_500)));
    let ledger = provider.ledger.clone();
    let first = start_with(&db, &prefix, provider.clone(), ProviderPolicy::default()).await;
    let second = start_with(&db, &prefix, provider, ProviderPolicy::default()).await;
    let orders: Vec<Uuid> = (0..ORDERS).map(|_| Uuid::now_v7()).collect();
    for order_id in &orders {
        let request = record(
            &order_id.to_string(),
            &events::process_payment(&order_id.to_string(), "grace"),
        );
        publish(&topics, PROCESS_PAYMENT, &request).await;
    }
    for order_id in &orders {
        settled(&db, *order_id).await;
    }
    let calls: Vec<u32> = orders.iter().map(|id| ledger.calls(*id)).collect();
    assert_eq!(calls, vec![1; ORDERS], "one provider call per order");
    assert_eq!(published(&topics, PAYMENT_SUCCEEDED).await.len(), ORDERS);
    first.stop().await.expect("clean shutdown");
    second.stop().await.expect("clean shutdown");
}
