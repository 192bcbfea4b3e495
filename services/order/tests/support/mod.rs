//! The order service under test: one instance on its own database and
//! topic prefix, with helpers to publish records and read orders back.

#![allow(dead_code)] // each test file uses its own share of the helpers

use std::sync::Arc;
use std::time::Duration;

use rskafka::client::Client;

use oms_api::orders::internal::v1::GetOrderRequest;
use oms_api::orders::internal::v1::order_query_service_client::OrderQueryServiceClient;
use oms_api::orders::v1::{Order, OrderStatus};
use oms_common::topics::TopicNames;
use oms_testkit::events::{RawRecord, committed_records};
use oms_testkit::service::{RunningService, service_config};
use oms_testkit::{TestDatabase, eventually, kafka, unique_topic_prefix};
use order_service::{Application, SCHEMA};

pub const WAIT: Duration = Duration::from_secs(20);

pub struct TestApp {
    pub service: RunningService,
    pub db: TestDatabase,
    pub kafka: Arc<Client>,
    pub topics: TopicNames,
    pub prefix: String,
}

pub async fn spawn_app() -> TestApp {
    let db = TestDatabase::create().await;
    let prefix = unique_topic_prefix();
    let service = start_service(&db, &prefix).await;
    TestApp {
        service,
        db,
        kafka: kafka::client().await,
        topics: TopicNames::new(prefix.clone()),
        prefix,
    }
}

pub async fn start_service(db: &TestDatabase, prefix: &str) -> RunningService {
    let app = Application::build(service_config(db, prefix))
        .await
        .expect("build");
    let addr = app.local_addr();
    RunningService::start(addr, |shutdown| app.run_until(shutdown)).await
}

impl TestApp {
    pub async fn publish(&self, topic: &str, record: &RawRecord) {
        kafka::publish(&self.kafka, &self.topics.name(topic), record).await;
    }

    pub async fn get_order(&self, order_id: &str) -> Result<Order, tonic::Status> {
        let channel = oms_testkit::grpc::channel(self.service.addr).await;
        let response = OrderQueryServiceClient::new(channel)
            .get_order(GetOrderRequest {
                order_id: order_id.to_owned(),
            })
            .await?;
        Ok(response.into_inner().order.expect("order"))
    }

    pub async fn wait_for_status(&self, order_id: &str, status: OrderStatus) -> Order {
        eventually(
            &format!("order {order_id} to be {status:?}"),
            WAIT,
            || async {
                matches!(self.get_order(order_id).await, Ok(order) if order.status == status as i32)
            },
        )
        .await;
        self.get_order(order_id).await.expect("order")
    }

    pub async fn wait_until_committed(&self, topic: &str, records: i64) {
        let topic = self.topics.name(topic);
        eventually(
            &format!("{records} records of {topic} committed"),
            WAIT,
            || async {
                committed_records(&mut self.db.connect(SCHEMA).await, &topic).await == records
            },
        )
        .await;
    }
}
