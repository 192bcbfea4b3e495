//! Produce batching for a service that publishes one record per request,
//! like the gateway: concurrent calls for the same partition share one
//! produce request, and each call still returns only once the broker has
//! acknowledged its own record.
//!
//! The first record of a batch waits `linger` for company; a batch that
//! reaches `MAX_BATCH_BYTES` goes at once. While one batch is in flight the
//! next one fills, so the broker sees few large requests instead of many
//! small ones.

use std::sync::Arc;
use std::time::Duration;

use rskafka::client::producer::aggregator::RecordAggregator;
use rskafka::client::producer::{BatchProducer, BatchProducerBuilder};
use rskafka::record::Record;

use crate::kafka::{KafkaError, KeyedRecord, Producer, partition_for_key};

/// The largest batch, in bytes; far above a request's 64 KiB limit.
const MAX_BATCH_BYTES: usize = 1024 * 1024;

pub struct BatchingProducer {
    producer: Arc<Producer>,
    partitions: Vec<BatchProducer<RecordAggregator>>,
}

impl BatchingProducer {
    /// A batcher per partition of `topic`, which must exist.
    pub async fn new(
        producer: Arc<Producer>,
        topic: &str,
        linger: Duration,
    ) -> Result<Self, KafkaError> {
        let clients = producer.partition_clients(topic).await?;
        let partitions = clients
            .iter()
            .map(|client| {
                BatchProducerBuilder::new(Arc::clone(client))
                    .with_linger(linger)
                    .build(RecordAggregator::new(MAX_BATCH_BYTES))
            })
            .collect();
        Ok(Self {
            producer,
            partitions,
        })
    }

    /// The underlying producer, for health probes.
    pub fn producer(&self) -> &Arc<Producer> {
        &self.producer
    }

    /// Produces `record` to its key's partition and returns once the broker
    /// acknowledged the batch that carried it.
    pub async fn produce(&self, record: KeyedRecord) -> Result<(), KafkaError> {
        let partition = partition_for_key(&record.key, self.partitions.len()) as usize;
        let record = Record {
            key: Some(record.key),
            value: Some(record.value),
            headers: record.headers,
            timestamp: chrono::Utc::now(),
        };
        self.partitions[partition]
            .produce(record)
            .await
            .map_err(|err| KafkaError::Produce(err.to_string()))?;
        Ok(())
    }
}
