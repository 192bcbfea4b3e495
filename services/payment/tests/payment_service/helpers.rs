//! Helpers shared by the payment service's tests: starting the service with
//! a simulator the test keeps a handle on, publishing requests, and reading
//! what the service recorded and published.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use oms_api::payments::v1::payment_service_client::PaymentServiceClient;
use oms_api::payments::v1::{GetPaymentRequest, Payment};
use oms_common::topics::TopicNames;
use oms_testkit::events::RawRecord;
use oms_testkit::service::{RunningService, service_config};
use oms_testkit::{TestDatabase, eventually, kafka};
use payment_service::provider::{Fault, Ledger, SimulatedProvider};
use payment_service::schema::payments;
use payment_service::settlement::ProviderPolicy;
use payment_service::{Application, PaymentConfig, SCHEMA};

pub(crate) const DECLINED_CUSTOMER: &str = "mallory";

pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// A simulator that misbehaves as `fault` says; clones share its ledger.
pub(crate) fn simulator(fault: Fault) -> SimulatedProvider {
    SimulatedProvider {
        decline_above_minor: 1_000_000,
        decline_customers: [DECLINED_CUSTOMER.to_owned()].into(),
        fault,
        ledger: Ledger::default(),
    }
}

/// Gives up on a call after 150 ms, so tests of a silent provider are quick.
pub(crate) fn impatient(max_attempts: i32) -> ProviderPolicy {
    ProviderPolicy {
        timeout: Duration::from_millis(150),
        max_attempts,
    }
}

pub(crate) async fn start_service(db: &TestDatabase, prefix: &str) -> RunningService {
    start_with(
        db,
        prefix,
        simulator(Fault::None),
        ProviderPolicy::default(),
    )
    .await
}

pub(crate) async fn start_with(
    db: &TestDatabase,
    prefix: &str,
    provider: SimulatedProvider,
    provider_policy: ProviderPolicy,
) -> RunningService {
    let config = PaymentConfig {
        service: service_config(db, prefix),
        provider,
        provider_policy,
    };
    let app = Application::build(config).await.expect("build");
    let addr = app.local_addr();
    RunningService::start(addr, |shutdown| app.run_until(shutdown)).await
}

pub(crate) async fn publish(topics: &TopicNames, topic: &str, record: &RawRecord) {
    kafka::publish(&*kafka::client().await, &topics.name(topic), record).await;
}

pub(crate) async fn payments_of(
    db: &TestDatabase,
    order_id: Uuid,
) -> Vec<(Uuid, i64, String, String)> {
    payments::table
        .filter(payments::order_id.eq(order_id))
        .select((
            payments::payment_id,
            payments::amount_minor,
            payments::currency_code,
            payments::status,
        ))
        .load(&mut db.connect(SCHEMA).await)
        .await
        .expect("payments")
}

/// The payment's status, decline reason and provider calls counted.
pub(crate) async fn state_of(
    db: &TestDatabase,
    order_id: Uuid,
) -> Option<(String, Option<String>, i32)> {
    payments::table
        .filter(payments::order_id.eq(order_id))
        .select((
            payments::status,
            payments::decline_reason,
            payments::attempts,
        ))
        .first(&mut db.connect(SCHEMA).await)
        .await
        .optional()
        .expect("payment state")
}

/// Waits until the payment has left PENDING, and returns its state.
pub(crate) async fn settled(db: &TestDatabase, order_id: Uuid) -> (String, Option<String>, i32) {
    eventually("the payment settled", WAIT, || async {
        state_of(db, order_id)
            .await
            .is_some_and(|(status, ..)| status != "PENDING")
    })
    .await;
    state_of(db, order_id).await.expect("payment")
}

pub(crate) async fn get_payment(
    service: &RunningService,
    order_id: &str,
) -> Result<Payment, tonic::Status> {
    let channel = oms_testkit::grpc::channel(service.addr).await;
    PaymentServiceClient::new(channel)
        .get_payment(GetPaymentRequest {
            order_id: order_id.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

pub(crate) async fn published(
    topics: &TopicNames,
    topic: &str,
) -> Vec<rskafka::record::RecordAndOffset> {
    kafka::read_topic(&*kafka::client().await, &topics.name(topic)).await
}
