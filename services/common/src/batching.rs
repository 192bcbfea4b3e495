//! Produce batching for a service that publishes one record per request,
//! like the gateway: concurrent calls for the same partition share one
//! produce request, and each call still returns only once the broker has
//! acknowledged its own record.
//!
//! A task per partition collects records. Produce requests of a partition
//! start at least `linger` apart: a record that comes sooner waits for
//! company until then, while one after a quiet spell goes at once. A batch
//! that reaches `MAX_BATCH_BYTES` goes at once. Up to
//! `MAX_IN_FLIGHT_PER_PARTITION` batches are in flight at a time; while all
//! are, the next batch takes in every record that arrives, so batches grow
//! with the load.
//!
//! Each batch gets at most `deadline` to be acknowledged. When that passes,
//! its produce is abandoned and every caller hears of the failure, so a
//! record reported as not published is not published later by a retry
//! nobody waits for. (rskafka's own `BatchProducer` keeps flushing in a
//! task of its own and its retries are not bounded in time, so it cannot
//! promise that.)

use std::sync::Arc;
use std::time::Duration;

use rskafka::client::partition::{Compression, PartitionClient};
use rskafka::record::Record;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::kafka::{KafkaError, KeyedRecord, Producer, partition_for_key};

/// The largest batch, in bytes; far above a request's 64 KiB limit.
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Batches of one partition awaiting the broker's answer at once.
const MAX_IN_FLIGHT_PER_PARTITION: usize = 4;
/// Records waiting for a batch, per partition; callers wait beyond it.
const QUEUE_PER_PARTITION: usize = 10_000;

type Outcome = Result<(), String>;

struct Pending {
    record: Record,
    done: oneshot::Sender<Outcome>,
}

pub struct BatchingProducer {
    producer: Arc<Producer>,
    partitions: Vec<mpsc::Sender<Pending>>,
}

impl BatchingProducer {
    /// A batcher per partition of `topic`, which must exist. A batch not
    /// acknowledged within `deadline` fails.
    pub async fn new(
        producer: Arc<Producer>,
        topic: &str,
        linger: Duration,
        deadline: Duration,
    ) -> Result<Self, KafkaError> {
        let clients = producer.partition_clients(topic).await?;
        let partitions = clients
            .iter()
            .map(|client| {
                let (sender, receiver) = mpsc::channel(QUEUE_PER_PARTITION);
                tokio::spawn(run_batcher(Arc::clone(client), receiver, linger, deadline));
                sender
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
    /// acknowledged the batch that carried it, or with the batch's failure.
    pub async fn produce(&self, record: KeyedRecord) -> Result<(), KafkaError> {
        let partition = partition_for_key(&record.key, self.partitions.len()) as usize;
        let (done, outcome) = oneshot::channel();
        let pending = Pending {
            record: Record {
                key: Some(record.key),
                value: Some(record.value),
                headers: record.headers,
                timestamp: chrono::Utc::now(),
            },
            done,
        };
        self.partitions[partition]
            .send(pending)
            .await
            .map_err(|_| KafkaError::Produce("the batcher has stopped".into()))?;
        outcome
            .await
            .map_err(|_| KafkaError::Produce("the batcher dropped the record".into()))?
            .map_err(KafkaError::Produce)
    }
}

struct Batch {
    records: Vec<Pending>,
    bytes: usize,
}

impl Batch {
    fn starting_with(first: Pending) -> Self {
        Self {
            bytes: size_of(&first.record),
            records: vec![first],
        }
    }

    fn push(&mut self, pending: Pending) {
        self.bytes += size_of(&pending.record);
        self.records.push(pending);
    }

    fn is_full(&self) -> bool {
        self.bytes >= MAX_BATCH_BYTES
    }
}

fn size_of(record: &Record) -> usize {
    record.key.as_ref().map_or(0, Vec::len)
        + record.value.as_ref().map_or(0, Vec::len)
        + record
            .headers
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum::<usize>()
}

/// Collects batches from `queue` until every sender is gone, and produces
/// each in a task of its own.
async fn run_batcher(
    client: Arc<PartitionClient>,
    mut queue: mpsc::Receiver<Pending>,
    linger: Duration,
    deadline: Duration,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_PARTITION));
    let mut last_sent: Option<Instant> = None;
    while let Some(first) = queue.recv().await {
        let mut batch = Batch::starting_with(first);
        // Skipped, not just elapsed, when there is nothing to wait for: a
        // timer rounds up to tokio's 1 ms tick, so even a past deadline
        // costs a tick.
        let until = last_sent.map(|sent| sent + linger);
        if let Some(until) = until.filter(|until| Instant::now() < *until) {
            while !batch.is_full() {
                match tokio::time::timeout_at(until, queue.recv()).await {
                    Ok(Some(pending)) => batch.push(pending),
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        // Records that came while every slot was busy join this batch rather
        // than wait for the next one: under load batches grow by themselves,
        // and a lone record never waits for company it will not get.
        while !batch.is_full() {
            match queue.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        let batch = batch.records;
        last_sent = Some(Instant::now());
        let client = Arc::clone(&client);
        tokio::spawn(async move {
            let (records, waiters): (Vec<Record>, Vec<oneshot::Sender<Outcome>>) = batch
                .into_iter()
                .map(|pending| (pending.record, pending.done))
                .unzip();
            // Timing out drops the produce, and with it rskafka's retries.
            let produce = client.produce(records, Compression::NoCompression);
            let outcome = match tokio::time::timeout(deadline, produce).await {
                Ok(Ok(_offsets)) => Ok(()),
                Ok(Err(err)) => Err(err.to_string()),
                Err(_) => Err(format!("no acknowledgement within {deadline:?}")),
            };
            drop(permit);
            for waiter in waiters {
                let _ = waiter.send(outcome.clone());
            }
        });
    }
}
