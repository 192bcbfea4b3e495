//! Kafka access through rskafka: connecting, creating topics, choosing a
//! partition by key, and producing with acknowledgement from all in-sync
//! replicas (rskafka always sends `acks = -1`).
//!
//! rskafka has no partitioner, so records are routed here with the same
//! murmur2 hash the Java client's default partitioner uses: records with the
//! same key (the order id) always land on the same partition, in order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rskafka::BackoffConfig;
use rskafka::client::error::{Error as RsKafkaError, ProtocolError};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use tokio::sync::RwLock;

use crate::config::KafkaConfig;

/// How long one broker operation may retry before it reports failure. Without
/// a deadline rskafka retries forever, and a caller would hang.
const OPERATION_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("broker request failed: {0}")]
    Broker(#[from] RsKafkaError),
    #[error("topic {0} does not exist")]
    UnknownTopic(String),
    #[error("batched produce failed: {0}")]
    Produce(String),
    #[error("broker did not answer within {0:?}")]
    Timeout(Duration),
}

/// Connects to the cluster. Fails if no broker answers within the deadline.
pub async fn connect(config: &KafkaConfig, client_id: &str) -> Result<Arc<Client>, KafkaError> {
    let backoff = BackoffConfig {
        init_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_secs(1),
        base: 2.0,
        deadline: Some(OPERATION_DEADLINE),
    };
    let client = ClientBuilder::new(config.brokers.clone())
        .client_id(client_id.to_owned())
        .backoff_config(backoff)
        .build();
    let client = tokio::time::timeout(OPERATION_DEADLINE * 2, client)
        .await
        .map_err(|_| KafkaError::Timeout(OPERATION_DEADLINE * 2))??;
    Ok(Arc::new(client))
}

/// Creates each topic that does not exist yet, with `partitions` partitions
/// of `replication_factor` replicas. (rskafka cannot pass topic configs, so
/// `min.insync.replicas` comes from the broker's default: see the README.)
pub async fn ensure_topics(
    client: &Client,
    topics: &[String],
    partitions: i32,
    replication_factor: i16,
) -> Result<(), KafkaError> {
    let existing: Vec<String> = client
        .list_topics()
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();
    let controller = client.controller_client()?;
    for topic in topics.iter().filter(|topic| !existing.contains(topic)) {
        match controller
            .create_topic(topic.clone(), partitions, replication_factor, 5_000)
            .await
        {
            Ok(()) => tracing::info!(topic = %topic, partitions, "created topic"),
            // Another service created it first.
            Err(RsKafkaError::ServerError {
                protocol_error: ProtocolError::TopicAlreadyExists,
                ..
            }) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}

/// Answers whether a broker answers a metadata request right now.
pub async fn is_reachable(client: &Client) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), client.list_topics()).await,
        Ok(Ok(_))
    )
}

/// Kafka's murmur2 hash (the Java client's `Utils.murmur2`).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, byte) in tail.iter().enumerate().rev() {
            h ^= u32::from(*byte) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition a keyed record belongs to, as Kafka's default partitioner
/// chooses it.
pub fn partition_for_key(key: &[u8], partitions: usize) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) as usize % partitions.max(1)) as i32
}

/// The fixed part of a v2 record batch (base offset to record count).
pub const RECORD_BATCH_OVERHEAD: usize = 61;

/// An upper bound of `record`'s size inside a v2 record batch: its key,
/// value and headers plus the largest varints that frame them. Summed over
/// a batch's records and added to `RECORD_BATCH_OVERHEAD`, it bounds the
/// batch the broker checks against `message.max.bytes`.
pub fn encoded_size(record: &Record) -> usize {
    const VARINT: usize = 5;
    const VARLONG: usize = 10;
    let key = record.key.as_ref().map_or(0, Vec::len);
    let value = record.value.as_ref().map_or(0, Vec::len);
    let headers: usize = record
        .headers
        .iter()
        .map(|(name, value)| VARINT + name.len() + VARINT + value.len())
        .sum();
    // length, attributes, timestamp delta, offset delta, key length, key,
    // value length, value, header count, headers
    VARINT + 1 + VARLONG + VARINT + VARINT + key + VARINT + value + VARINT + headers
}

/// A record to produce, with the key that routes it.
#[derive(Debug, Clone)]
pub struct KeyedRecord {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: BTreeMap<String, Vec<u8>>,
}

/// Produces keyed records, routing each to its partition. Partition clients
/// are opened once per topic and shared; the topic's partition count is
/// read again after `PARTITIONS_REFRESH`, so partitions added to a topic are
/// written to without a restart (as with Kafka's own clients, keys then move
/// to the partitions the new count gives them).
#[derive(Debug)]
pub struct Producer {
    client: Arc<Client>,
    /// Per topic: when its partition count was read, and its clients.
    partitions: RwLock<HashMap<String, (Instant, PartitionClients)>>,
    compression: Compression,
}

/// The clients of a topic's partitions, indexed by partition.
pub type PartitionClients = Arc<[Arc<PartitionClient>]>;

/// How long a topic's partition count is trusted before it is read again.
const PARTITIONS_REFRESH: Duration = Duration::from_secs(30);

impl Producer {
    pub fn new(client: Arc<Client>) -> Self {
        Self {
            client,
            partitions: RwLock::default(),
            compression: Compression::NoCompression,
        }
    }

    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// The clients of every partition of `topic`, indexed by partition.
    /// Never empty: a topic the broker reports without partitions is an
    /// error, as a missing one is.
    pub async fn partition_clients(&self, topic: &str) -> Result<PartitionClients, KafkaError> {
        let cached = self.partitions.read().await.get(topic).cloned();
        if let Some((read_at, clients)) = &cached
            && read_at.elapsed() < PARTITIONS_REFRESH
        {
            return Ok(Arc::clone(clients));
        }
        let listed = match self.client.list_topics().await {
            Ok(listed) => listed,
            // What we knew still routes records while metadata is down.
            Err(err) => {
                return cached
                    .map(|(_, clients)| clients)
                    .ok_or_else(|| KafkaError::from(err));
            }
        };
        let count = listed
            .into_iter()
            .find(|t| t.name == topic)
            .map(|t| t.partitions.len())
            .filter(|&count| count > 0)
            .ok_or_else(|| KafkaError::UnknownTopic(topic.to_owned()))?;
        let clients = match cached {
            Some((_, clients)) if clients.len() == count => clients,
            _ => {
                let mut clients = Vec::with_capacity(count);
                for partition in 0..count as i32 {
                    let client = self
                        .client
                        .partition_client(topic.to_owned(), partition, UnknownTopicHandling::Error)
                        .await?;
                    clients.push(Arc::new(client));
                }
                clients.into()
            }
        };
        self.partitions
            .write()
            .await
            .insert(topic.to_owned(), (Instant::now(), Arc::clone(&clients)));
        Ok(clients)
    }

    /// Produces the records to `topic` and returns once every partition
    /// involved has acknowledged them. Records for one partition go in one
    /// request, in the given order; partitions are written concurrently.
    pub async fn produce(&self, topic: &str, records: Vec<KeyedRecord>) -> Result<(), KafkaError> {
        let clients = self.partition_clients(topic).await?;
        let mut by_partition: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
        let now = chrono::Utc::now();
        for record in records {
            let partition = partition_for_key(&record.key, clients.len());
            by_partition.entry(partition).or_default().push(Record {
                key: Some(record.key),
                value: Some(record.value),
                headers: record.headers,
                timestamp: now,
            });
        }
        let sends = by_partition.into_iter().map(|(partition, records)| {
            let client = Arc::clone(&clients[partition as usize]);
            async move { client.produce(records, self.compression).await }
        });
        for result in futures::future::join_all(sends).await {
            result?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Reference values from the Java client's own tests, as signed ints.
        let cases: [(&str, i32); 3] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
        ];
        for (input, expected) in cases {
            assert_eq!(
                murmur2(input.as_bytes()) as i32,
                expected,
                "murmur2({input:?})"
            );
        }
    }

    #[test]
    fn encoded_size_counts_every_byte_plus_bounded_framing() {
        let record = Record {
            key: Some(vec![b'k'; 36]),
            value: Some(vec![7; 300]),
            headers: [("ce_id".to_owned(), vec![b'x'; 36])].into(),
            timestamp: chrono::Utc::now(),
        };
        let size = encoded_size(&record);
        // key + value + header bytes, plus at most 50 bytes of framing.
        assert!(size >= 36 + 300 + 5 + 36, "{size}");
        assert!(size <= 36 + 300 + 5 + 36 + 50, "{size}");
    }

    #[test]
    fn same_key_always_routes_to_the_same_partition() {
        let key = b"0193b1a2-7c4e-7d2a-9f00-000000000001";
        let first = partition_for_key(key, 6);
        assert!((0..6).contains(&first));
        for _ in 0..10 {
            assert_eq!(partition_for_key(key, 6), first);
        }
    }

    #[test]
    fn keys_spread_over_all_partitions() {
        let mut seen = [0u32; 6];
        for i in 0..600 {
            seen[partition_for_key(format!("order-{i}").as_bytes(), 6) as usize] += 1;
        }
        assert!(
            seen.iter().all(|&count| count > 50),
            "uneven spread: {seen:?}"
        );
    }
}
