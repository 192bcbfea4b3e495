//! What the system published, read back from the broker: events per
//! (`ce_type`, order) and dead letters per source record, counted against
//! what may legitimately appear.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rskafka::client::Client;
use rskafka::client::partition::UnknownTopicHandling;
use rskafka::record::Record;

use oms_common::config::KafkaConfig;
use oms_common::topics::{
    DEAD_LETTER_SUFFIX, ORDER_CREATED, PAYMENT_FAILED, PAYMENT_SUCCEEDED, PROCESS_PAYMENT,
    TopicNames, dead_letter_topic,
};

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

/// What was published more than it may be: an event per (`ce_type`, order)
/// more than once, a dead letter per source record more often than its
/// topic has consumers (provider calls are counted apart, from the
/// payments' `attempts`). -1 when the topics cannot be read.
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
