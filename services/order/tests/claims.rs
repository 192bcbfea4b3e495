//! Key claims are on CreateOrder's path, so they must not wait behind
//! reads: with every read connection taken, a claim still goes through.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::Request;
use uuid::Uuid;

use oms_api::order_keys::keyed_order_id;
use oms_api::orders::internal::v1::order_query_service_server::OrderQueryService;
use oms_api::orders::internal::v1::{ClaimOutcome, ClaimRequestKeyRequest};
use oms_common::auth::Caller;
use oms_common::db;
use oms_testkit::TestDatabase;
use order_service::SCHEMA;
use order_service::query::OrderQueries;
use order_service::startup::MIGRATIONS;
use order_service::watch::OrderChanges;

#[tokio::test(flavor = "multi_thread")]
async fn a_claim_goes_through_while_every_read_connection_is_taken() {
    let db = TestDatabase::create().await;
    db::prepare(&db.url, SCHEMA, MIGRATIONS)
        .await
        .expect("migrate");
    let mut config = db.config();
    config.read_pool_size = 1;
    let reads = db::read_pool(&config, SCHEMA, "claims-test");
    let queries = OrderQueries {
        pool: reads.clone(),
        claims: db::pool(&config, SCHEMA, "claims-test"),
        changes: OrderChanges::new(reads.clone()),
        shutdown: CancellationToken::new(),
    };
    // The one read connection is busy for the whole claim.
    let _busy = reads.get().await.expect("read connection");

    let mut request = Request::new(ClaimRequestKeyRequest {
        order_id: keyed_order_id("carol", "key-1").to_string(),
        fingerprint: Uuid::now_v7().to_string(),
        customer_id: "carol".into(),
        request_id: "key-1".into(),
    });
    request.extensions_mut().insert(Caller::unchecked());
    let claimed = tokio::time::timeout(
        Duration::from_secs(10),
        OrderQueryService::claim_request_key(&queries, request),
    )
    .await
    .expect("the claim did not wait for the reads")
    .expect("claimed while the reads are busy")
    .into_inner();
    assert_eq!(claimed.outcome(), ClaimOutcome::Claimed);
}
