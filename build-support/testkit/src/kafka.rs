//! Kafka helpers: the test broker's address, raw produce and full reads of a
//! topic, used to observe what the services publish.

use std::collections::BTreeMap;
use std::sync::Arc;

use rskafka::client::Client;
use rskafka::client::partition::{Compression, UnknownTopicHandling};
use rskafka::record::{Record, RecordAndOffset};

use oms_common::config::KafkaConfig;

/// The brokers tests use: `KAFKA_BROKERS`, by default 127.0.0.1:9092.
pub fn brokers() -> Vec<String> {
    std::env::var("KAFKA_BROKERS")
        .unwrap_or_else(|_| "127.0.0.1:9092".into())
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// Partitions of the topics that in-process services create in tests.
pub const TEST_PARTITIONS: i32 = 2;

/// A Kafka config with a fresh topic prefix and small topics.
pub fn test_config(prefix: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: brokers(),
        topic_prefix: prefix.to_owned(),
        partitions: TEST_PARTITIONS,
        fetch_max_wait_ms: 0,
        fetch_min_interval: std::time::Duration::from_millis(5),
        fetch_max_idle_pause: std::time::Duration::from_millis(25),
        max_message_bytes: oms_common::config::DEFAULT_MAX_MESSAGE_BYTES,
        stall_after: std::time::Duration::from_secs(60),
        replication_factor: 1,
    }
}

/// Connects to the test broker, or fails saying how to start one.
pub async fn client() -> Arc<Client> {
    let config = test_config("");
    oms_common::kafka::connect(&config, "oms-testkit").await.unwrap_or_else(|err| {
        panic!(
            "no Kafka broker at {:?} ({err}); start one with `just broker` or set KAFKA_BROKERS",
            config.brokers
        )
    })
}

/// Creates the topics (2 partitions) if missing.
pub async fn create_topics(client: &Client, topics: &[String]) {
    oms_common::kafka::ensure_topics(client, topics, TEST_PARTITIONS, 1)
        .await
        .expect("create topics");
}

/// Produces one record to an explicit partition, exactly as given.
pub async fn produce_raw(
    client: &Client,
    topic: &str,
    partition: i32,
    key: &[u8],
    value: Vec<u8>,
    headers: BTreeMap<String, Vec<u8>>,
) {
    let record = Record {
        key: Some(key.to_vec()),
        value: Some(value),
        headers,
        timestamp: chrono::Utc::now(),
    };
    produce_together(client, topic, partition, vec![record]).await;
}

/// Produces `records` to an explicit partition in one request, so they
/// land next to each other and a consumer fetches them in one batch.
pub async fn produce_together(client: &Client, topic: &str, partition: i32, records: Vec<Record>) {
    let partition_client = client
        .partition_client(topic.to_owned(), partition, UnknownTopicHandling::Retry)
        .await
        .expect("partition client");
    partition_client
        .produce(records, Compression::NoCompression)
        .await
        .expect("produce");
}

/// Produces `record` to the partition its key routes to, as the services'
/// own producers would, on a topic of `TEST_PARTITIONS` partitions.
pub async fn publish(client: &Client, topic: &str, record: &crate::events::RawRecord) {
    let partition = oms_common::kafka::partition_for_key(&record.key, TEST_PARTITIONS as usize);
    produce_raw(
        client,
        topic,
        partition,
        &record.key,
        record.value.clone(),
        record.headers.clone(),
    )
    .await;
}

/// Reads every record currently in the topic, all partitions.
pub async fn read_topic(client: &Client, topic: &str) -> Vec<RecordAndOffset> {
    let partitions = client
        .list_topics()
        .await
        .expect("list topics")
        .into_iter()
        .find(|t| t.name == topic)
        .map(|t| t.partitions)
        .unwrap_or_default();
    let mut all = Vec::new();
    for partition in partitions {
        let partition_client = client
            .partition_client(topic.to_owned(), partition, UnknownTopicHandling::Retry)
            .await
            .expect("partition client");
        let mut offset = 0;
        loop {
            let (records, high_watermark) = partition_client
                .fetch_records(offset, 1..10_000_000, 10)
                .await
                .expect("fetch");
            let Some(last) = records.last() else { break };
            offset = last.offset + 1;
            all.extend(records);
            if offset >= high_watermark {
                break;
            }
        }
    }
    all
}
