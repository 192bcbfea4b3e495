//! Produce batching for a service that publishes one record per request,
//! like the gateway: concurrent calls for the same partition share one
//! produce request, and each call still returns only once the broker has
//! acknowledged its own record.
//!
//! A task per partition collects records. Produce requests of a partition
//! start at least `linger` apart: a record that comes sooner waits for
//! company until then, while one after a quiet spell goes at once. A batch
//! holds what fits in the broker's `message.max.bytes` (each record counted
//! by `encoded_size`, headers included); the record that would overflow it
//! starts the next batch, and a batch that is full goes at once. A record
//! that cannot fit even alone is refused before it is queued. Up to
//! `MAX_IN_FLIGHT_PER_PARTITION` batches are in flight at a time; while all
//! are, the next batch takes in every record that arrives, so batches grow
//! with the load.
//!
//! Each record carries its caller's deadline. Right before a batch is
//! produced, records whose caller has stopped waiting or whose deadline has
//! passed are taken out and never sent, and the batch gets until the
//! earliest deadline left in it to be acknowledged. When that passes, its
//! produce is abandoned and every caller hears of the failure. So a caller
//! told that its record was not published does not see it published later
//! by a batch nobody waits for, unless the produce had reached the broker
//! and only the acknowledgement was late, which no producer can rule out.
//! (rskafka's own `BatchProducer` keeps flushing in a task of its own and
//! its retries are not bounded in time, so it cannot promise that.)

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use prometheus::Histogram;
use rskafka::client::partition::{Compression, PartitionClient};
use rskafka::record::Record;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::config::DEFAULT_MAX_MESSAGE_BYTES;
use crate::kafka::{
    KafkaError, KeyedRecord, Producer, RECORD_BATCH_OVERHEAD, encoded_size, partition_for_key,
};
use crate::metrics;

/// Batches of one partition awaiting the broker's answer at once.
const MAX_IN_FLIGHT_PER_PARTITION: usize = 4;
/// Records waiting for a batch, per partition; callers wait beyond it.
const QUEUE_PER_PARTITION: usize = 10_000;

/// Registers the producer's metrics, so that they are served before the
/// first batch.
pub fn describe_metrics() {
    LazyLock::force(&BATCH_RECORDS);
}

/// Why a record was not acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProduceError {
    #[error("the record needs {size} bytes in a batch, over the broker's limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("the deadline passed before the broker acknowledged the record")]
    DeadlinePassed,
    #[error("the produce failed: {0}")]
    Broker(String),
    #[error("the batcher has stopped")]
    Stopped,
}

type Outcome = Result<(), ProduceError>;

static BATCH_RECORDS: LazyLock<Histogram> = LazyLock::new(|| {
    metrics::histogram(
        "oms_producer_batch_records",
        "Records in each produce request the batching producer sends.",
        metrics::BATCH_SIZE_BUCKETS,
    )
});

struct Pending {
    record: Record,
    /// `encoded_size` of the record.
    size: usize,
    deadline: Instant,
    done: oneshot::Sender<Outcome>,
}

impl Pending {
    /// Whether sending the record now could only publish it behind the back
    /// of a caller that has given up or been told it failed.
    fn is_abandoned(&self, now: Instant) -> bool {
        self.done.is_closed() || self.deadline <= now
    }
}

pub struct BatchingProducer {
    producer: Arc<Producer>,
    topic: String,
    partitions: Vec<mpsc::Sender<Pending>>,
    timeout: Duration,
    max_message_bytes: usize,
}

impl BatchingProducer {
    /// A batcher per partition of `topic`, which must exist, for a broker
    /// with Kafka's default `message.max.bytes`. `produce` waits at most
    /// `timeout` for the acknowledgement.
    pub async fn new(
        producer: Arc<Producer>,
        topic: &str,
        linger: Duration,
        timeout: Duration,
    ) -> Result<Self, KafkaError> {
        Self::with_max_message_bytes(producer, topic, linger, timeout, DEFAULT_MAX_MESSAGE_BYTES)
            .await
    }

    /// As `new`, for a broker that accepts batches of at most
    /// `max_message_bytes`.
    pub async fn with_max_message_bytes(
        producer: Arc<Producer>,
        topic: &str,
        linger: Duration,
        timeout: Duration,
        max_message_bytes: usize,
    ) -> Result<Self, KafkaError> {
        let clients = producer.partition_clients(topic).await?;
        let partitions = clients
            .iter()
            .map(|client| {
                let (sender, receiver) = mpsc::channel(QUEUE_PER_PARTITION);
                tokio::spawn(run_batcher(
                    Arc::clone(client),
                    receiver,
                    linger,
                    max_message_bytes,
                ));
                sender
            })
            .collect();
        Ok(Self {
            producer,
            topic: topic.to_owned(),
            partitions,
            timeout,
            max_message_bytes,
        })
    }

    /// The underlying producer, for health probes.
    pub fn producer(&self) -> &Arc<Producer> {
        &self.producer
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition a record keyed `key` goes to.
    pub fn partition_of(&self, key: &[u8]) -> i32 {
        partition_for_key(key, self.partitions.len())
    }

    /// Produces `record` to its key's partition and returns once the broker
    /// acknowledged the batch that carried it, or with the failure, within
    /// the producer's timeout.
    pub async fn produce(&self, record: KeyedRecord) -> Result<(), ProduceError> {
        self.produce_by(record, Instant::now() + self.timeout).await
    }

    /// As `produce`, for a caller that waits until `deadline`: the record is
    /// not sent after it, and the call returns by then.
    pub async fn produce_by(
        &self,
        record: KeyedRecord,
        deadline: Instant,
    ) -> Result<(), ProduceError> {
        let partition = partition_for_key(&record.key, self.partitions.len()) as usize;
        let record = Record {
            key: Some(record.key),
            value: Some(record.value),
            headers: record.headers,
            timestamp: chrono::Utc::now(),
        };
        let size = encoded_size(&record);
        if RECORD_BATCH_OVERHEAD + size > self.max_message_bytes {
            return Err(ProduceError::TooLarge {
                size: RECORD_BATCH_OVERHEAD + size,
                limit: self.max_message_bytes,
            });
        }
        let (done, outcome) = oneshot::channel();
        let pending = Pending {
            record,
            size,
            deadline,
            done,
        };
        match tokio::time::timeout_at(deadline, self.partitions[partition].send(pending)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(ProduceError::Stopped),
            Err(_) => return Err(ProduceError::DeadlinePassed),
        }
        // Giving up drops the receiver, so a record still waiting for a
        // batch is not sent; a batch already in flight is abandoned by its
        // own timer no later than this deadline.
        match tokio::time::timeout_at(deadline, outcome).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(ProduceError::Stopped),
            Err(_) => Err(ProduceError::DeadlinePassed),
        }
    }
}

struct Batch {
    records: Vec<Pending>,
    bytes: usize,
    limit: usize,
}

impl Batch {
    /// `first` fits alone: `produce_by` refuses records that do not.
    fn starting_with(first: Pending, limit: usize) -> Self {
        Self {
            bytes: RECORD_BATCH_OVERHEAD + first.size,
            records: vec![first],
            limit,
        }
    }

    /// Takes `pending` if it fits, or hands it back to start the next batch.
    fn offer(&mut self, pending: Pending) -> Option<Pending> {
        if self.bytes + pending.size > self.limit {
            return Some(pending);
        }
        self.bytes += pending.size;
        self.records.push(pending);
        None
    }
}

/// Collects batches from `queue` until every sender is gone, and produces
/// each in a task of its own.
async fn run_batcher(
    client: Arc<PartitionClient>,
    mut queue: mpsc::Receiver<Pending>,
    linger: Duration,
    max_message_bytes: usize,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_PARTITION));
    let mut last_sent: Option<Instant> = None;
    // The record that did not fit the previous batch; it starts the next.
    let mut overflow: Option<Pending> = None;
    loop {
        let first = match overflow.take() {
            Some(pending) => pending,
            None => match queue.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        let mut batch = Batch::starting_with(first, max_message_bytes);
        // Skipped, not just elapsed, when there is nothing to wait for: a
        // timer rounds up to tokio's 1 ms tick, so even a past deadline
        // costs a tick.
        let until = last_sent.map(|sent| sent + linger);
        if let Some(until) = until.filter(|until| Instant::now() < *until) {
            while overflow.is_none() {
                match tokio::time::timeout_at(until, queue.recv()).await {
                    Ok(Some(pending)) => overflow = batch.offer(pending),
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
        while overflow.is_none() {
            match queue.try_recv() {
                Ok(pending) => overflow = batch.offer(pending),
                Err(_) => break,
            }
        }
        last_sent = Some(Instant::now());
        tokio::spawn(produce(Arc::clone(&client), batch.records, permit));
    }
}

/// Produces what is still wanted of `batch` and tells each caller the
/// outcome. The permit is held until the broker answers or the batch is
/// abandoned.
async fn produce(client: Arc<PartitionClient>, batch: Vec<Pending>, permit: OwnedSemaphorePermit) {
    let now = Instant::now();
    let (live, abandoned): (Vec<Pending>, Vec<Pending>) = batch
        .into_iter()
        .partition(|pending| !pending.is_abandoned(now));
    if !abandoned.is_empty() {
        tracing::debug!(
            dropped = abandoned.len(),
            "records whose callers gave up were not sent"
        );
    }
    for pending in abandoned {
        let _ = pending.done.send(Err(ProduceError::DeadlinePassed));
    }
    let Some(deadline) = live.iter().map(|pending| pending.deadline).min() else {
        return;
    };
    BATCH_RECORDS.observe(live.len() as f64);
    let (records, waiters): (Vec<Record>, Vec<oneshot::Sender<Outcome>>) = live
        .into_iter()
        .map(|pending| (pending.record, pending.done))
        .unzip();
    // Timing out drops the produce, and with it rskafka's retries.
    let produce = client.produce(records, Compression::NoCompression);
    let outcome = match tokio::time::timeout_at(deadline, produce).await {
        Ok(Ok(_offsets)) => Ok(()),
        Ok(Err(err)) => Err(ProduceError::Broker(err.to_string())),
        Err(_) => Err(ProduceError::DeadlinePassed),
    };
    drop(permit);
    for waiter in waiters {
        let _ = waiter.send(outcome.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(value_bytes: usize, deadline: Instant) -> (Pending, oneshot::Receiver<Outcome>) {
        let record = Record {
            key: Some(b"order".to_vec()),
            value: Some(vec![0; value_bytes]),
            headers: [("ce_id".to_owned(), vec![b'x'; 36])].into(),
            timestamp: chrono::Utc::now(),
        };
        let (done, outcome) = oneshot::channel();
        let pending = Pending {
            size: encoded_size(&record),
            record,
            deadline,
            done,
        };
        (pending, outcome)
    }

    #[test]
    fn a_record_that_would_overflow_a_batch_starts_the_next_one() {
        let later = Instant::now() + Duration::from_secs(5);
        let (first, _a) = pending(400, later);
        let limit = RECORD_BATCH_OVERHEAD + 2 * first.size;
        let mut batch = Batch::starting_with(first, limit);
        let (second, _b) = pending(400, later);
        assert!(batch.offer(second).is_none(), "two fit exactly");
        let (third, _c) = pending(0, later);
        let overflow = batch.offer(third).expect("a third does not fit");
        assert_eq!(batch.records.len(), 2);
        assert!(batch.bytes <= limit, "{} > {limit}", batch.bytes);
        assert!(Batch::starting_with(overflow, limit).bytes <= limit);
    }

    #[test]
    fn a_record_is_abandoned_once_its_caller_left_or_its_deadline_passed() {
        let now = Instant::now();
        let (waited_for, _outcome) = pending(10, now + Duration::from_secs(1));
        assert!(!waited_for.is_abandoned(now));
        assert!(waited_for.is_abandoned(now + Duration::from_secs(1)));
        let (left, outcome) = pending(10, now + Duration::from_secs(1));
        drop(outcome);
        assert!(left.is_abandoned(now));
    }
}
