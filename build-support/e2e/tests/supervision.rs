//! A background task that panics is started again: one bad moment of a
//! handler does not leave its partition without a consumer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use tokio::net::TcpListener;

use oms_common::consumer::{EventHandler, InboundRecord, Rejection};
use oms_common::db;
use oms_common::outbox::OutboxMessage;
use oms_common::service::EventService;
use oms_testkit::events::{RawRecord, committed_records};
use oms_testkit::service::{RunningService, service_config};
use oms_testkit::{TestDatabase, eventually, kafka, unique_topic_prefix};

const SCHEMA: &str = "supervision_test";

/// A handler with a bug: it panics the first time it sees `panic`.
struct PanicsOnce {
    panicked: AtomicBool,
}

impl EventHandler for PanicsOnce {
    type Event = Vec<u8>;

    fn decode(&self, record: &InboundRecord) -> Result<Vec<u8>, Rejection> {
        Ok(record.payload.clone())
    }

    async fn apply(
        &self,
        _conn: &mut AsyncPgConnection,
        events: Vec<Vec<u8>>,
    ) -> QueryResult<Vec<OutboxMessage>> {
        if events.iter().any(|event| event == b"panic")
            && !self.panicked.swap(true, Ordering::SeqCst)
        {
            panic!("a handler bug");
        }
        Ok(Vec::new())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_consumer_that_panics_is_started_again_and_goes_on() {
    let db = TestDatabase::create().await;
    let prefix = unique_topic_prefix();
    let config = service_config(&db, &prefix);
    let topic = format!("{prefix}panics");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let service = EventService {
        name: "supervision-test",
        schema: SCHEMA,
        migrations: || db::PLATFORM_MIGRATIONS,
        consumes: vec![topic.clone()],
        produces: Vec::new(),
        handler: PanicsOnce {
            panicked: AtomicBool::new(false),
        },
        grpc_services: Vec::new(),
        relay_wakeup: Default::default(),
        workers: Vec::new(),
    };
    let pool = db::pool(&config.database, SCHEMA);
    let running = RunningService::start(addr, |shutdown| async move {
        service
            .run(&config, pool, listener, |routes| routes, shutdown)
            .await
    })
    .await;

    let client = kafka::client().await;
    for payload in [&b"panic"[..], b"fine"] {
        let record = RawRecord {
            key: b"same-partition".to_vec(),
            value: payload.to_vec(),
            headers: Default::default(),
        };
        kafka::publish(&client, &topic, &record).await;
    }
    eventually(
        "both records committed after the restart",
        Duration::from_secs(20),
        || async { committed_records(&mut db.connect(SCHEMA).await, &topic).await == 2 },
    )
    .await;
    running.stop().await.expect("clean shutdown");
}
