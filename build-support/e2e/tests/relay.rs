//! The outbox relay against the real broker and database: produce requests
//! stay within the broker's limit, a row that can never fit is parked while
//! the rows around it are published, and a row the broker acknowledged is
//! published once even while another topic's rows keep failing beside it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

use oms_common::config::DEFAULT_MAX_MESSAGE_BYTES;
use oms_common::db::{self, DbPool};
use oms_common::kafka::Producer;
use oms_common::membership::{Membership, MembershipConfig};
use oms_common::outbox::{self, OutboxMessage, Relay, RelayStats};
use oms_common::schema::{outbox as outbox_table, outbox_parked};
use oms_testkit::{TestDatabase, eventually, kafka as test_kafka, unique_topic_prefix};

/// A schema with the platform tables only: the relay needs nothing else.
const SCHEMA: &str = "relay_test";
const WAIT: Duration = Duration::from_secs(15);

/// An outbox in a fresh database, a producer on the test broker, and the
/// counters of the relay started on them.
struct Harness {
    db: TestDatabase,
    pool: DbPool,
    producer: Arc<Producer>,
    stats: Arc<RelayStats>,
    prefix: String,
}

impl Harness {
    async fn new() -> Self {
        let db = TestDatabase::create().await;
        // The platform set stands in for a service's own migrations too;
        // applying it a second time finds nothing pending.
        db::prepare(&db.url, SCHEMA, db::PLATFORM_MIGRATIONS)
            .await
            .expect("migrate the platform tables");
        Self {
            pool: db::pool(&db.config(), SCHEMA, "relay-test"),
            db,
            producer: Arc::new(Producer::new(test_kafka::client().await)),
            stats: Arc::new(RelayStats::default()),
            prefix: unique_topic_prefix(),
        }
    }

    /// A topic of this test, created on the broker.
    async fn topic(&self, name: &str) -> String {
        let topic = format!("{}{name}", self.prefix);
        test_kafka::create_topics(self.producer.client(), std::slice::from_ref(&topic)).await;
        topic
    }

    async fn write(&self, messages: &[OutboxMessage]) {
        let mut conn = self.db.connect(SCHEMA).await;
        outbox::enqueue(&mut conn, messages)
            .await
            .expect("write outbox rows");
    }

    /// Starts the relay; it stops when the guard is dropped. Nobody wakes
    /// it: rows written before it starts make its first round.
    async fn start_relay(&self, max_message_bytes: usize) -> DropGuard {
        let stop = CancellationToken::new();
        let membership = Arc::new(Membership::new(
            MembershipConfig::with_instance_id("relay-test"),
            self.pool.clone(),
        ));
        membership
            .round(&[], &Default::default())
            .await
            .expect("join");
        tokio::spawn(Arc::clone(&membership).stay_member(stop.clone()));
        let relay = Relay {
            pool: self.pool.clone(),
            producer: Arc::clone(&self.producer),
            max_message_bytes,
            stats: Arc::clone(&self.stats),
            membership,
        };
        tokio::spawn(relay.run(Arc::new(Notify::new()), stop.clone()));
        stop.drop_guard()
    }

    /// The (id, topic) of each row still in the outbox, oldest first.
    async fn outbox(&self) -> Vec<(i64, String)> {
        outbox_table::table
            .select((outbox_table::id, outbox_table::topic))
            .order(outbox_table::id)
            .load(&mut self.db.connect(SCHEMA).await)
            .await
            .expect("read the outbox")
    }

    async fn wait_until_outbox_holds(&self, rows: usize) {
        eventually(&format!("{rows} rows left in the outbox"), WAIT, || async {
            self.outbox().await.len() == rows
        })
        .await;
    }

    /// The sequence numbers on `topic` per key, in the order a consumer of
    /// each partition reads them.
    async fn published(&self, topic: &str) -> BTreeMap<String, Vec<String>> {
        let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for found in test_kafka::read_topic(self.producer.client(), topic).await {
            let key = found.record.key.unwrap_or_default();
            let value = found.record.value.unwrap_or_default();
            by_key
                .entry(String::from_utf8_lossy(&key).into_owned())
                .or_default()
                .push(String::from_utf8_lossy(&value[..value.len().min(8)]).into_owned());
        }
        by_key
    }
}

fn message(topic: &str, key: &str, payload: Vec<u8>) -> OutboxMessage {
    OutboxMessage {
        topic: topic.to_owned(),
        key: key.as_bytes().to_vec(),
        payload,
        headers: BTreeMap::from([("ce_id".to_owned(), b"relay-test".to_vec())]),
    }
}

/// A payload that starts with its sequence number, padded to `bytes`.
fn numbered(seq: usize, bytes: usize) -> Vec<u8> {
    let mut payload = format!("{seq:08}").into_bytes();
    payload.resize(bytes.max(payload.len()), b'.');
    payload
}

fn sequence(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|seq| format!("{seq:08}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_too_large_for_the_broker_is_parked_and_the_rows_around_it_are_published_once() {
    const MAX: usize = 64 * 1024;
    let harness = Harness::new().await;
    let topic = harness.topic("orders").await;
    let big = vec![b'x'; 100 * 1024];
    harness
        .write(&[
            message(&topic, "order-1", numbered(0, 100)),
            message(&topic, "order-1", big.clone()),
            message(&topic, "order-1", numbered(1, 100)),
            message(&topic, "order-1", numbered(2, 100)),
        ])
        .await;
    let big_id = harness.outbox().await[1].0;

    let _relay = harness.start_relay(MAX).await;
    harness.wait_until_outbox_holds(0).await;

    assert_eq!(
        harness.published(&topic).await,
        BTreeMap::from([("order-1".to_owned(), sequence(0..3))])
    );
    let parked: Vec<(i64, String, Vec<u8>, String)> = outbox_parked::table
        .select((
            outbox_parked::id,
            outbox_parked::topic,
            outbox_parked::payload,
            outbox_parked::error,
        ))
        .load(&mut harness.db.connect(SCHEMA).await)
        .await
        .expect("read the parked rows");
    assert_eq!(parked.len(), 1, "parked rows: {}", parked.len());
    let (id, parked_topic, payload, error) = &parked[0];
    assert_eq!((*id, parked_topic), (big_id, &topic));
    assert!(payload == &big, "the parked row keeps its payload");
    assert!(error.contains("does not fit"), "{error}");
    assert_eq!(AtomicU64::load(&harness.stats.parked, Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_acknowledged_beside_a_missing_topic_are_published_once_while_its_rows_wait() {
    let harness = Harness::new().await;
    // Named to sort first: the relay as it was published this topic, then
    // failed on the missing one, deleted nothing and published it all
    // again on every retry.
    let present = harness.topic("a-present").await;
    let missing = format!("{}z-missing", harness.prefix);
    let mut messages = Vec::new();
    for seq in 0..10 {
        let key = format!("order-{seq}");
        messages.push(message(&present, &key, numbered(seq, 100)));
        if seq % 3 == 0 {
            messages.push(message(&missing, &key, numbered(seq, 100)));
        }
    }
    harness.write(&messages).await;

    let _relay = harness.start_relay(DEFAULT_MAX_MESSAGE_BYTES).await;
    harness.wait_until_outbox_holds(4).await;
    // Retries of the missing topic back off from 50 ms: several happen here.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let expected: BTreeMap<String, Vec<String>> = (0..10)
        .map(|seq| (format!("order-{seq}"), sequence(seq..seq + 1)))
        .collect();
    assert_eq!(harness.published(&present).await, expected);
    let waiting: Vec<String> = harness.outbox().await.into_iter().map(|(_, t)| t).collect();
    assert_eq!(waiting, vec![missing; 4]);
    assert_eq!(
        AtomicU64::load(&harness.stats.published, Ordering::Relaxed),
        10
    );
    assert_eq!(AtomicU64::load(&harness.stats.parked, Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_far_larger_than_one_request_are_split_and_published_once_each_in_key_order() {
    const ROWS: usize = 300;
    const KEYS: usize = 6;
    const PAYLOAD: usize = 8 * 1024;
    const MAX: usize = 256 * 1024;
    let harness = Harness::new().await;
    let topic = harness.topic("orders").await;
    let messages: Vec<OutboxMessage> = (0..ROWS)
        .map(|i| {
            message(
                &topic,
                &format!("order-{}", i % KEYS),
                numbered(i / KEYS, PAYLOAD),
            )
        })
        .collect();
    harness.write(&messages).await;

    let _relay = harness.start_relay(MAX).await;
    harness.wait_until_outbox_holds(0).await;

    let expected: BTreeMap<String, Vec<String>> = (0..KEYS)
        .map(|key| (format!("order-{key}"), sequence(0..ROWS / KEYS)))
        .collect();
    assert_eq!(harness.published(&topic).await, expected);
    assert_eq!(
        AtomicU64::load(&harness.stats.published, Ordering::Relaxed),
        ROWS as u64
    );
    // The relay as it was sent the whole round in one request per partition.
    let requests = AtomicU64::load(&harness.stats.requests, Ordering::Relaxed);
    let fewest = (ROWS * PAYLOAD).div_ceil(MAX) as u64;
    assert!(
        requests >= fewest,
        "{requests} requests, expected at least {fewest}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn more_outbox_rows_than_one_statement_can_bind_are_written_at_once() {
    // A fetch of small poison records brings this many dead letters into one
    // transaction: five bind parameters a row is past PostgreSQL's 65,535.
    let harness = Harness::new().await;
    let messages: Vec<OutboxMessage> = (0..14_000)
        .map(|i| OutboxMessage {
            topic: "t.dlq".into(),
            key: format!("k{i}").into_bytes(),
            payload: Vec::new(),
            headers: BTreeMap::from([("dlq_reason".to_owned(), b"bad".to_vec())]),
        })
        .collect();
    harness.write(&messages).await;
    let rows: i64 = outbox_table::table
        .count()
        .get_result(&mut harness.db.connect(SCHEMA).await)
        .await
        .expect("count");
    assert_eq!(rows, 14_000);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_leaves_a_live_instances_rows_and_adopts_those_of_one_that_is_gone() {
    let harness = Harness::new().await;
    let topic = harness.topic("adopted").await;
    harness
        .write(&[
            message(&topic, "order-1", numbered(0, 100)),
            message(&topic, "order-1", numbered(1, 100)),
        ])
        .await;
    let mut conn = harness.db.connect(SCHEMA).await;
    conn.batch_execute(
        "INSERT INTO members (instance_id, expires_at) VALUES ('other', now() + interval '1 hour'); \
         UPDATE outbox SET owner = 'other'",
    )
    .await
    .expect("rows of another live instance");

    let _relay = harness.start_relay(DEFAULT_MAX_MESSAGE_BYTES).await;
    // Several sweeps: the other instance is alive, its rows are its own.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(harness.outbox().await.len(), 2);
    assert!(harness.published(&topic).await.is_empty());

    // It is gone: its rows are adopted and published, in order, once.
    conn.batch_execute("UPDATE members SET expires_at = now() - interval '1 second'")
        .await
        .expect("the other instance expires");
    harness.wait_until_outbox_holds(0).await;
    assert_eq!(
        harness.published(&topic).await,
        BTreeMap::from([("order-1".to_owned(), sequence(0..2))])
    );
}
