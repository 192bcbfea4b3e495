//! A handler that panics does not leave its partition without a consumer: a
//! panic once is retried, a record that always makes it panic is
//! dead-lettered, and the records behind both are applied.

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

/// A handler with bugs: it panics the first time it sees `panic once`, and
/// every time it sees `always panic`.
struct Buggy {
    panicked: AtomicBool,
}

impl EventHandler for Buggy {
    type Event = Vec<u8>;

    fn decode(&self, record: &InboundRecord) -> Result<Vec<u8>, Rejection> {
        Ok(record.payload.clone())
    }

    async fn apply(
        &self,
        _conn: &mut AsyncPgConnection,
        events: Vec<Vec<u8>>,
    ) -> QueryResult<Vec<OutboxMessage>> {
        if events.iter().any(|event| event == b"always panic") {
            panic!("a handler bug it always hits");
        }
        if events.iter().any(|event| event == b"panic once")
            && !self.panicked.swap(true, Ordering::SeqCst)
        {
            panic!("a handler bug it hits once");
        }
        Ok(Vec::new())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_that_panics_does_not_stop_its_partition() {
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
        handler: Buggy {
            panicked: AtomicBool::new(false),
        },
        grpc_services: Vec::new(),
        relay_wakeup: Default::default(),
        workers: Vec::new(),
        metered_pools: Vec::new(),
    };
    let pool = db::pool(&config.database, SCHEMA, &config.membership.instance_id);
    let running = RunningService::start(addr, |shutdown| async move {
        service
            .run(&config, pool, listener, |routes| routes, shutdown)
            .await
    })
    .await;

    let client = kafka::client().await;
    for payload in [&b"panic once"[..], b"always panic", b"fine"] {
        let record = RawRecord {
            key: b"same-partition".to_vec(),
            value: payload.to_vec(),
            headers: Default::default(),
        };
        kafka::publish(&client, &topic, &record).await;
    }
    eventually(
        "every record committed",
        Duration::from_secs(20),
        || async { committed_records(&mut db.connect(SCHEMA).await, &topic).await == 3 },
    )
    .await;
    let dlq = oms_common::topics::dead_letter_topic(&topic);
    eventually("the dead letter", Duration::from_secs(20), || async {
        kafka::read_topic(&client, &dlq).await.len() == 1
    })
    .await;
    let letter = &kafka::read_topic(&client, &dlq).await[0].record;
    assert_eq!(letter.value.as_deref(), Some(&b"always panic"[..]));
    let reason = String::from_utf8_lossy(&letter.headers["dlq_reason"]).into_owned();
    assert!(reason.contains("panicked"), "{reason}");
    running.stop().await.expect("clean shutdown");
}
