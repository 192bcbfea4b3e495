//! Starting a gateway (and an order service behind it) for the gateway's
//! integration tests. Not every test file uses every helper.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use gateway::watch_limits::WatchLimitConfig;
use gateway::{Application, GatewayConfig};
use oms_api::orders::v1::order_service_client::OrderServiceClient;
use oms_common::grpc::ServingConfig;
use oms_common::topics::TopicNames;
use oms_testkit::service::{RunningService, service_config};
use oms_testkit::{TestDatabase, kafka, unique_topic_prefix};
use order_service::schema::orders;

/// A gateway config on port 0 with the test's topic prefix; without an order
/// service it points at a port where nothing listens.
pub fn gateway_config(prefix: &str, order_service: Option<SocketAddr>) -> GatewayConfig {
    let order_service = order_service.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9)));
    GatewayConfig {
        grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        order_service_url: format!("http://{order_service}"),
        kafka: kafka::test_config(prefix),
        shutdown_grace: Duration::from_secs(5),
        publish_timeout: Duration::from_secs(5),
        produce_linger: Duration::from_millis(1),
        serving: ServingConfig::for_tests(),
        order_service_tls: None,
        watch_limits: WatchLimitConfig::default(),
    }
}

/// Starts the gateway in-process and waits until it serves.
pub async fn start_gateway(config: GatewayConfig) -> RunningService {
    let app = Application::build(config).await.expect("build");
    let addr = app.local_addr();
    RunningService::start(addr, |shutdown| app.run_until(shutdown)).await
}

pub struct Harness {
    pub db: TestDatabase,
    pub order_service: RunningService,
    pub gateway: RunningService,
    pub topics: TopicNames,
}

/// An order service (with its own database) and a gateway reading through it.
pub async fn start() -> Harness {
    let db = TestDatabase::create().await;
    let prefix = unique_topic_prefix();
    let app = order_service::Application::build(service_config(&db, &prefix))
        .await
        .expect("build");
    let order_addr = app.local_addr();
    let order_service = RunningService::start(order_addr, |shutdown| app.run_until(shutdown)).await;
    let gateway = start_gateway(gateway_config(&prefix, Some(order_addr))).await;
    Harness {
        db,
        order_service,
        gateway,
        topics: TopicNames::new(prefix),
    }
}

impl Harness {
    pub async fn client(&self) -> OrderServiceClient<tonic::transport::Channel> {
        OrderServiceClient::new(oms_testkit::grpc::channel(self.gateway.addr).await)
    }

    pub async fn recorded_orders(&self, customer: &str) -> i64 {
        orders::table
            .filter(orders::customer_id.eq(customer))
            .count()
            .get_result(&mut self.db.connect(order_service::SCHEMA).await)
            .await
            .expect("count")
    }

    pub async fn stop(self) {
        self.gateway.stop().await.expect("clean shutdown");
        self.order_service.stop().await.expect("clean shutdown");
    }
}
