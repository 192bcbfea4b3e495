//! Counting what the system recorded and published, to prove that every
//! accepted order completed exactly once: one paid order, one matching
//! payment and one notification of each kind, each event published once,
//! and nothing else.
//!
//! Unique constraints keep the tables from ever showing a second payment or
//! notification, so the rows cannot reveal work done twice. What can really
//! happen twice is visible on the broker: an event published again, a record
//! dead-lettered again. `duplicated` reads the flow's topics back and counts
//! those.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use diesel::sql_types::{Array, BigInt, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rskafka::client::Client;
use rskafka::client::partition::UnknownTopicHandling;
use rskafka::record::Record;
use uuid::Uuid;

use oms_common::config::KafkaConfig;
use oms_common::topics::{
    DEAD_LETTER_SUFFIX, ORDER_CREATED, PAYMENT_FAILED, PAYMENT_SUCCEEDED, PROCESS_PAYMENT,
    TopicNames, dead_letter_topic,
};

use crate::TestDatabase;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    pub orders: i64,
    pub paid_orders: i64,
    pub payments: i64,
    pub order_received_notifications: i64,
    pub payment_succeeded_notifications: i64,
    /// Paid orders whose payment row is missing or differs (id or amount).
    pub mismatched_payments: i64,
    /// Events published more than once (per type and order) and records
    /// dead-lettered more often than their topic has consumers, read from
    /// the broker; -1 when the topics could not be read.
    pub duplicated: i64,
    /// Accepted orders that are not paid (yet).
    pub unpaid_accepted: Vec<String>,
}

impl Audit {
    /// What a run that accepted `n` orders must end with.
    pub fn exactly_once(n: usize) -> Self {
        let n = n as i64;
        Self {
            orders: n,
            paid_orders: n,
            payments: n,
            order_received_notifications: n,
            payment_succeeded_notifications: n,
            mismatched_payments: 0,
            duplicated: 0,
            unpaid_accepted: Vec::new(),
        }
    }
}

/// Where a system under test publishes: a broker and a topic prefix.
#[derive(Clone)]
pub struct Topics {
    client: Arc<Client>,
    prefix: String,
}

impl Topics {
    /// The topics under `prefix` on the shared test broker.
    pub async fn on_test_broker(prefix: &str) -> Self {
        Self {
            client: crate::kafka::client().await,
            prefix: prefix.to_owned(),
        }
    }

    /// The topics under `prefix` on the brokers `brokers` (`host:port`,
    /// comma-separated), such as a test's own broker.
    pub async fn on(brokers: &str, prefix: &str) -> Self {
        let config = KafkaConfig {
            brokers: brokers.split(',').map(str::to_owned).collect(),
            ..crate::kafka::test_config(prefix)
        };
        let client = oms_common::kafka::connect(&config, "oms-testkit-audit")
            .await
            .unwrap_or_else(|err| panic!("no Kafka broker at {brokers} ({err})"));
        Self {
            client,
            prefix: prefix.to_owned(),
        }
    }
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

#[derive(diesel::QueryableByName)]
struct Id {
    #[diesel(sql_type = Text)]
    id: String,
}

/// The count `sql` returns, or -1 (which no expected audit holds) when the
/// query fails; the error goes to the test's output, shown if it fails.
async fn count(conn: &mut AsyncPgConnection, sql: &'static str) -> i64 {
    match diesel::sql_query(sql).get_result::<Count>(conn).await {
        Ok(row) => row.count,
        Err(err) => {
            eprintln!("audit query failed: {err}: {sql}");
            -1
        }
    }
}

/// Counts what the services recorded in `db` for the `accepted` order ids,
/// and what they published on `topics`.
pub async fn audit(db: &TestDatabase, topics: &Topics, accepted: &[Uuid]) -> Audit {
    let mut conn = db.connect("public").await;
    let unpaid_accepted = diesel::sql_query(
        "SELECT a.id::text AS id FROM unnest($1) AS a(id) \
         WHERE NOT EXISTS (SELECT 1 FROM order_service.orders o WHERE o.order_id = a.id AND o.status = 'PAID')",
    )
    .bind::<Array<SqlUuid>, _>(accepted)
    .load::<Id>(&mut conn)
    .await
    .map(|ids| ids.into_iter().map(|i| i.id).collect())
    .unwrap_or_else(|_| vec!["<query failed>".into()]);
    Audit {
        orders: count(&mut conn, "SELECT count(*) AS count FROM order_service.orders").await,
        paid_orders: count(
            &mut conn,
            "SELECT count(*) AS count FROM order_service.orders WHERE status = 'PAID' AND payment_id IS NOT NULL",
        )
        .await,
        payments: count(&mut conn, "SELECT count(*) AS count FROM payment_service.payments").await,
        order_received_notifications: count(
            &mut conn,
            "SELECT count(*) AS count FROM notification_service.notifications WHERE kind = 'ORDER_RECEIVED'",
        )
        .await,
        payment_succeeded_notifications: count(
            &mut conn,
            "SELECT count(*) AS count FROM notification_service.notifications WHERE kind = 'PAYMENT_SUCCEEDED'",
        )
        .await,
        mismatched_payments: count(
            &mut conn,
            "SELECT count(*) AS count FROM order_service.orders o \
             LEFT JOIN payment_service.payments p ON p.order_id = o.order_id \
             WHERE o.status = 'PAID' AND (p.payment_id IS DISTINCT FROM o.payment_id \
                OR p.amount_minor IS DISTINCT FROM o.amount_minor)",
        )
        .await,
        duplicated: duplicated(topics).await,
        unpaid_accepted,
    }
}

/// What was published more than it may be: an event per (`ce_type`, order)
/// more than once, a dead letter per source record more often than its
/// topic has consumers. Provider calls per order belong here too, once the
/// payment service records them: a second call for an order is a duplicate
/// like these. -1 when the topics cannot be read.
pub async fn duplicated(topics: &Topics) -> i64 {
    match read_published(topics).await {
        Ok(published) => over_allowance(&topics.prefix, published) as i64,
        Err(err) => {
            eprintln!("audit could not read the topics: {err:#}");
            -1
        }
    }
}

/// What one record on the flow's topics publishes, as it is counted.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Published {
    /// An event about an order, due once per type and order.
    Event {
        event_type: String,
        order_id: String,
    },
    /// The dead letter of the record at `offset`, due once per service
    /// consuming the record's topic.
    DeadLetter {
        topic: String,
        partition: String,
        offset: String,
    },
}

impl Published {
    /// Records without the headers our producers write are not counted.
    fn of(record: &Record, on_dead_letter_topic: bool) -> Option<Self> {
        let header = |name: &str| {
            record
                .headers
                .get(name)
                .map(|value| String::from_utf8_lossy(value).into_owned())
        };
        Some(if on_dead_letter_topic {
            Self::DeadLetter {
                topic: header("dlq_source_topic")?,
                partition: header("dlq_source_partition")?,
                offset: header("dlq_source_offset")?,
            }
        } else {
            Self::Event {
                event_type: header("ce_type")?,
                order_id: header("ce_subject")?,
            }
        })
    }

    fn allowed_copies(&self, prefix: &str) -> usize {
        match self {
            Self::Event { .. } => 1,
            // The order and the notification services both consume these
            // topics and dead-letter poison records each on their own, onto
            // the same dead-letter topic and without naming themselves.
            Self::DeadLetter { topic, .. } => match topic.strip_prefix(prefix) {
                Some(ORDER_CREATED | PAYMENT_SUCCEEDED | PAYMENT_FAILED) => 2,
                _ => 1,
            },
        }
    }
}

/// How many distinct things were published more often than allowed.
fn over_allowance(prefix: &str, published: Vec<Published>) -> usize {
    let mut copies: HashMap<Published, usize> = HashMap::new();
    for item in published {
        *copies.entry(item).or_default() += 1;
    }
    copies
        .iter()
        .filter(|(item, count)| **count > item.allowed_copies(prefix))
        .count()
}

/// A fetch may return this much; a test's topics fit in one or two.
const FETCH_MAX_BYTES: i32 = 16 * 1024 * 1024;

/// Empty fetches below the high watermark before a partition counts as
/// unreadable.
const MAX_EMPTY_FETCHES: u32 = 20;

/// Every record on the flow's four topics and their dead-letter topics,
/// all partitions read concurrently.
async fn read_published(topics: &Topics) -> anyhow::Result<Vec<Published>> {
    let names = TopicNames::new(topics.prefix.as_str());
    let wanted: Vec<String> = [
        ORDER_CREATED,
        PROCESS_PAYMENT,
        PAYMENT_SUCCEEDED,
        PAYMENT_FAILED,
    ]
    .into_iter()
    .map(|base| names.name(base))
    .flat_map(|topic| [dead_letter_topic(&topic), topic])
    .collect();
    let partitions: Vec<(String, i32)> = topics
        .client
        .list_topics()
        .await
        .context("list topics")?
        .into_iter()
        .filter(|topic| wanted.contains(&topic.name))
        .flat_map(|topic| {
            let name = topic.name;
            topic
                .partitions
                .into_iter()
                .map(move |partition| (name.clone(), partition))
        })
        .collect();
    let reads = partitions
        .iter()
        .map(|(topic, partition)| read_partition(&topics.client, topic, *partition));
    let published = futures::future::try_join_all(reads).await?;
    Ok(published.into_iter().flatten().collect())
}

async fn read_partition(
    client: &Client,
    topic: &str,
    partition: i32,
) -> anyhow::Result<Vec<Published>> {
    let partition_client = client
        .partition_client(topic.to_owned(), partition, UnknownTopicHandling::Error)
        .await
        .with_context(|| format!("partition client for {topic}/{partition}"))?;
    let dead_letters = topic.ends_with(DEAD_LETTER_SUFFIX);
    let mut published = Vec::new();
    let (mut offset, mut empty_fetches) = (0, 0);
    loop {
        // No broker wait: tansu would hold every fetch for all of it.
        let (records, high_watermark) = partition_client
            .fetch_records(offset, 1..FETCH_MAX_BYTES, 0)
            .await
            .with_context(|| format!("fetch {topic}/{partition} at {offset}"))?;
        if let Some(last) = records.last() {
            offset = last.offset + 1;
            empty_fetches = 0;
        } else {
            empty_fetches += 1;
        }
        published.extend(
            records
                .iter()
                .filter_map(|record| Published::of(&record.record, dead_letters)),
        );
        if offset >= high_watermark {
            return Ok(published);
        }
        anyhow::ensure!(
            empty_fetches < MAX_EMPTY_FETCHES,
            "{topic}/{partition} returns nothing at {offset}, below its high watermark {high_watermark}"
        );
        if empty_fetches > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Waits until the audit shows every accepted order completed exactly once
/// and every event published once, then waits a little longer and checks
/// nothing more appeared; panics with the last audit otherwise.
pub async fn assert_completed_exactly_once(
    db: &TestDatabase,
    topics: &Topics,
    accepted: &[Uuid],
    timeout: Duration,
) {
    assert_completion(db, topics, accepted, timeout, false).await;
}

/// As `assert_completed_exactly_once`, for tests that kill services or cut
/// them off from the broker or the database. A relay that dies or loses
/// its database between the broker's acknowledgement and the delete of its
/// outbox rows publishes them again: events are delivered at least once,
/// so they may be duplicated, and the count is printed. Every effect must
/// still happen exactly once.
pub async fn assert_effects_exactly_once(
    db: &TestDatabase,
    topics: &Topics,
    accepted: &[Uuid],
    timeout: Duration,
) {
    let seen = assert_completion(db, topics, accepted, timeout, true).await;
    println!(
        "events published more than once after the faults: {}",
        seen.duplicated
    );
}

async fn assert_completion(
    db: &TestDatabase,
    topics: &Topics,
    accepted: &[Uuid],
    timeout: Duration,
    republished_allowed: bool,
) -> Audit {
    let expected = |seen: &Audit| Audit {
        // -1, topics that could not be read, never passes.
        duplicated: if republished_allowed && seen.duplicated >= 0 {
            seen.duplicated
        } else {
            0
        },
        ..Audit::exactly_once(accepted.len())
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let seen = audit(db, topics, accepted).await;
        if seen == expected(&seen) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every accepted order completed exactly once within {timeout:?}:\n expected {:?}\n      saw {:?}",
            expected(&seen),
            Audit {
                unpaid_accepted: seen.unpaid_accepted.iter().take(5).cloned().collect(),
                ..seen
            }
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Late duplicates would show up now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = audit(db, topics, accepted).await;
    assert_eq!(seen, expected(&seen), "something changed after completion");
    seen
}
