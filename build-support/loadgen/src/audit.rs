//! What the system recorded and published: progress while a phase runs,
//! read from its tables; then, once the pipeline has drained, the audit
//! (every accepted order terminal exactly once, nothing done twice) and the
//! end-to-end latency, from the times the services themselves stored.
//!
//! Unique constraints keep the tables from ever showing a second payment or
//! notification, so what was done twice is counted where it shows: on the
//! broker, by reading the flow's topics back.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Double, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use hdrhistogram::Histogram;
use rskafka::client::Client;
use rskafka::client::partition::{OffsetAt, UnknownTopicHandling};
use rskafka::record::Record;
use serde::Serialize;
use uuid::Uuid;

use oms_common::config::KafkaConfig;
use oms_common::kafka;
use oms_common::topics::{
    DEAD_LETTER_SUFFIX, ORDER_CREATED, PAYMENT_FAILED, PAYMENT_SUCCEEDED, PROCESS_PAYMENT,
    TopicNames, dead_letter_topic,
};

use crate::cli::Target;
use crate::driver::latency_histogram;

pub async fn connect(database_url: &str) -> anyhow::Result<AsyncPgConnection> {
    Ok(AsyncPgConnection::establish(database_url).await?)
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    value: i64,
}

#[derive(QueryableByName)]
struct Millis {
    #[diesel(sql_type = Double)]
    value: f64,
}

/// How many of `ids` have reached a terminal state.
pub async fn terminal_count(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> anyhow::Result<i64> {
    count(
        conn,
        "SELECT count(*) AS value FROM order_service.orders \
         WHERE order_id = ANY($1) AND status IN ('PAID', 'CANCELLED')",
        ids,
    )
    .await
}

/// Terminal orders of customers whose id starts with `prefix`: the
/// progress of a run, without holding its ids.
pub async fn terminal_count_of_run(conn: &mut AsyncPgConnection, run: &str) -> anyhow::Result<i64> {
    let row: Count = diesel::sql_query(
        "SELECT count(*) AS value FROM order_service.orders \
         WHERE customer_id LIKE $1 AND status IN ('PAID', 'CANCELLED')",
    )
    .bind::<diesel::sql_types::Text, _>(format!("bench-{run}-%"))
    .get_result(conn)
    .await?;
    Ok(row.value)
}

async fn count(conn: &mut AsyncPgConnection, sql: &str, ids: &[Uuid]) -> anyhow::Result<i64> {
    let row: Count = diesel::sql_query(sql)
        .bind::<Array<SqlUuid>, _>(ids)
        .get_result(conn)
        .await?;
    Ok(row.value)
}

/// Waits until every one of `ids` is terminal or `timeout` passes; returns
/// how long the drain took.
pub async fn wait_for_drain(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let start = tokio::time::Instant::now();
    let distinct = ids.iter().collect::<HashSet<_>>().len() as i64;
    while terminal_count(conn, ids).await? < distinct && start.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(start.elapsed())
}

/// The exactly-once audit of one phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Audit {
    pub accepted: u64,
    pub completed: u64,
    /// Accepted but never terminal (after the drain timeout).
    pub lost: u64,
    /// Ids answered twice, orders that changed state more than once,
    /// payments asked of the provider more than once, events published more
    /// than once per type and order, and records dead-lettered more often
    /// than their topic has consumers.
    pub duplicated: u64,
    /// Completed orders per second, first acceptance to last completion,
    /// by the system's own timestamps.
    pub completed_per_s: f64,
}

pub async fn audit(
    conn: &mut AsyncPgConnection,
    topics: &PhaseTopics,
    ids: &[Uuid],
) -> anyhow::Result<Audit> {
    let distinct: HashSet<&Uuid> = ids.iter().collect();
    let repeated_ids = (ids.len() - distinct.len()) as u64;
    let completed = terminal_count(conn, ids).await?;
    // Recorded at version 1, settled at version 2: anything more is a
    // second transition.
    let moved_twice = count(
        conn,
        "SELECT count(*) AS value FROM order_service.orders \
         WHERE order_id = ANY($1) AND version > 2",
        ids,
    )
    .await?;
    // The payment service counts its provider calls per payment.
    let asked_twice = count(
        conn,
        "SELECT count(*) AS value FROM payment_service.payments \
         WHERE order_id = ANY($1) AND attempts > 1",
        ids,
    )
    .await?;
    let published_twice = topics.duplicated(ids).await?;
    let duplicates = [
        repeated_ids,
        moved_twice as u64,
        asked_twice as u64,
        published_twice,
    ];
    if duplicates.iter().any(|&count| count > 0) {
        eprintln!(
            "duplicated: ids answered twice {}, orders moved twice {}, payments asked twice {}, \
             published twice {}",
            duplicates[0], duplicates[1], duplicates[2], duplicates[3]
        );
    }
    let span: Millis = diesel::sql_query(
        "SELECT COALESCE(EXTRACT(EPOCH FROM max(update_time) - min(create_time)) * 1000, 0)::float8 \
         AS value FROM order_service.orders \
         WHERE order_id = ANY($1) AND status IN ('PAID', 'CANCELLED')",
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .get_result(conn)
    .await?;
    Ok(Audit {
        accepted: ids.len() as u64,
        completed: completed as u64,
        lost: (distinct.len() as i64 - completed).max(0) as u64,
        duplicated: duplicates.iter().sum(),
        completed_per_s: if span.value > 0.0 {
            completed as f64 * 1000.0 / span.value
        } else {
            0.0
        },
    })
}

/// End-to-end latency of the paid orders among `ids`, in microseconds: from
/// the gateway accepting the order (`create_time`) to the order service
/// marking it paid (`update_time`).
pub async fn end_to_end_latency(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> anyhow::Result<Histogram<u64>> {
    let rows: Vec<Millis> = diesel::sql_query(
        "SELECT (EXTRACT(EPOCH FROM update_time - create_time) * 1000)::float8 AS value \
         FROM order_service.orders WHERE order_id = ANY($1) AND status = 'PAID'",
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .load(conn)
    .await?;
    let mut histogram = latency_histogram();
    for row in rows {
        histogram.saturating_record((row.value * 1000.0).max(1.0) as u64);
    }
    Ok(histogram)
}

/// A fetch may return this much: a phase's records come back in few round
/// trips.
const FETCH_MAX_BYTES: i32 = 32 * 1024 * 1024;

/// Empty fetches below the high watermark before a partition counts as
/// unreadable.
const MAX_EMPTY_FETCHES: u32 = 20;

/// The flow's topics from where a phase began. The phase's orders are new,
/// so none of their records lies before: the audit reads only the phase's
/// part of each log, however long the run has been going.
pub struct PhaseTopics {
    client: Arc<Client>,
    prefix: String,
    start: HashMap<(String, i32), i64>,
}

impl PhaseTopics {
    /// Notes where each partition of the flow's topics ends now.
    pub async fn mark(target: &Target) -> anyhow::Result<Self> {
        let prefix = match &target.topic_prefix {
            Some(prefix) => prefix.clone(),
            None => std::env::var("KAFKA_TOPIC_PREFIX").unwrap_or_default(),
        };
        let config = KafkaConfig {
            brokers: target.brokers.split(',').map(str::to_owned).collect(),
            ..KafkaConfig::from_env()?
        };
        let client = kafka::connect(&config, "oms-loadgen-audit").await?;
        let ends =
            flow_partitions(&client, &prefix)
                .await?
                .into_iter()
                .map(|(topic, partition)| {
                    let client = &client;
                    async move {
                        let end = client
                            .partition_client(topic.clone(), partition, UnknownTopicHandling::Error)
                            .await?
                            .get_offset(OffsetAt::Latest)
                            .await?;
                        anyhow::Ok(((topic, partition), end))
                    }
                });
        let start = futures::future::try_join_all(ends)
            .await
            .context("read where the flow's topics end")?
            .into_iter()
            .collect();
        Ok(Self {
            client,
            prefix,
            start,
        })
    }

    /// How many events about `ids` were published more than once per type
    /// and order, and how many records were dead-lettered more often than
    /// their topic has consumers, since the mark. Every partition is read
    /// concurrently.
    async fn duplicated(&self, ids: &[Uuid]) -> anyhow::Result<u64> {
        let orders: HashSet<Uuid> = ids.iter().copied().collect();
        let partitions = flow_partitions(&self.client, &self.prefix).await?;
        let reads = partitions.iter().map(|(topic, partition)| {
            // A partition that appeared since the mark is read from its start.
            let from = self
                .start
                .get(&(topic.clone(), *partition))
                .copied()
                .unwrap_or(0);
            read_partition(&self.client, topic, *partition, from, &orders)
        });
        let mut copies: HashMap<Published, u64> = HashMap::new();
        for published in futures::future::try_join_all(reads).await? {
            for item in published {
                *copies.entry(item).or_default() += 1;
            }
        }
        let over: Vec<_> = copies
            .iter()
            .filter(|(item, count)| **count > item.allowed_copies(&self.prefix))
            .collect();
        for (item, count) in over.iter().take(5) {
            eprintln!("published {count} times: {item:?}");
        }
        Ok(over.len() as u64)
    }
}

/// The flow's four topics and their dead-letter topics, by partition, as
/// far as they exist.
async fn flow_partitions(client: &Client, prefix: &str) -> anyhow::Result<Vec<(String, i32)>> {
    let names = TopicNames::new(prefix);
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
    Ok(client
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
        .collect())
}

/// What one record on the flow's topics publishes, as it is counted.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Published {
    /// An event about an order, due once per type and order.
    Event { event_type: String, order_id: Uuid },
    /// The dead letter of the record at `offset`, due once per service
    /// consuming the record's topic.
    DeadLetter {
        topic: String,
        partition: String,
        offset: String,
    },
}

impl Published {
    /// Events about other orders than `orders`, and records without the
    /// headers our producers write, are not counted.
    fn of(record: &Record, on_dead_letter_topic: bool, orders: &HashSet<Uuid>) -> Option<Self> {
        let header = |name: &str| {
            record
                .headers
                .get(name)
                .map(|value| String::from_utf8_lossy(value).into_owned())
        };
        if on_dead_letter_topic {
            return Some(Self::DeadLetter {
                topic: header("dlq_source_topic")?,
                partition: header("dlq_source_partition")?,
                offset: header("dlq_source_offset")?,
            });
        }
        let order_id = Uuid::parse_str(&header("ce_subject")?).ok()?;
        if !orders.contains(&order_id) {
            return None;
        }
        Some(Self::Event {
            event_type: header("ce_type")?,
            order_id,
        })
    }

    fn allowed_copies(&self, prefix: &str) -> u64 {
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

async fn read_partition(
    client: &Client,
    topic: &str,
    partition: i32,
    from: i64,
    orders: &HashSet<Uuid>,
) -> anyhow::Result<Vec<Published>> {
    let partition_client = client
        .partition_client(topic.to_owned(), partition, UnknownTopicHandling::Error)
        .await
        .with_context(|| format!("partition client for {topic}/{partition}"))?;
    let dead_letters = topic.ends_with(DEAD_LETTER_SUFFIX);
    let mut published = Vec::new();
    let (mut offset, mut empty_fetches) = (from, 0);
    let mut read = HashSet::new();
    loop {
        // No broker wait: tansu would hold every fetch for all of it.
        let (records, high_watermark) = partition_client
            .fetch_records(offset, 1..FETCH_MAX_BYTES, 0)
            .await
            .with_context(|| format!("fetch {topic}/{partition} at {offset}"))?;
        // One record is one publish, however often the broker sends it:
        // tansu's memory engine can answer with a record twice, or past
        // records again, so each offset counts once.
        let fresh: Vec<_> = records
            .iter()
            .filter(|record| record.offset >= offset && read.insert(record.offset))
            .collect();
        if let Some(next) = fresh.iter().map(|record| record.offset + 1).max() {
            offset = next;
            empty_fetches = 0;
        } else {
            empty_fetches += 1;
        }
        published.extend(
            fresh
                .iter()
                .filter_map(|record| Published::of(&record.record, dead_letters, orders)),
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
