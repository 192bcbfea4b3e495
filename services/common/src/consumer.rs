//! The consumer loop: rskafka has no consumer groups, so each service reads
//! every partition of its topics itself and keeps its position in the
//! `consumer_offsets` table.
//!
//! One task per partition fetches a batch, then applies it in a single
//! database transaction that also writes the outbox rows the batch causes and
//! the partition's next offset. Either all of that commits or none of it does,
//! so after a crash the consumer resumes exactly after the last committed
//! batch. Records delivered twice are harmless because handlers write with
//! unique keys and `ON CONFLICT DO NOTHING`.
//!
//! A record that can never be processed (it does not decode, has an unknown
//! `ce_type` or an invalid payload) is poison: it goes to `<topic>.dlq`, via
//! the outbox and in the same transaction, with headers saying why and where
//! it came from, and the partition moves on. Failures of the database or the
//! broker are transient and retried with backoff, in order, skipping nothing.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rskafka::client::Client;
use rskafka::client::error::{Error as RsKafkaError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient, UnknownTopicHandling};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use oms_api::{Event, EventEnvelope};

use crate::config::KafkaConfig;
use crate::db::{DbError, DbPool};
use crate::outbox::{self, OutboxMessage};
use crate::retry::Backoff;
use crate::schema::consumer_offsets;
use crate::topics::dead_letter_topic;

/// One record as the broker delivered it.
#[derive(Debug, Clone)]
pub struct InboundRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, Vec<u8>>,
}

/// Why a record is poison and goes to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejection(pub String);

impl InboundRecord {
    /// Reads the CloudEvents envelope.
    pub fn envelope(&self) -> Result<EventEnvelope, Rejection> {
        EventEnvelope::from_headers(&self.headers)
            .map_err(|err| Rejection(format!("bad envelope: {err}")))
    }

    /// Decodes the payload as `E`, which the caller has matched on `ce_type`.
    pub fn decode<E: Event>(&self) -> Result<E, Rejection> {
        E::decode(self.payload.as_slice())
            .map_err(|err| Rejection(format!("payload is not a valid {}: {err}", E::TYPE)))
    }
}

/// What a service does with the records of its topics.
pub trait EventHandler: Send + Sync + 'static {
    /// A decoded, validated record.
    type Event: Send + 'static;

    /// Turns a record into an event, or says why it is poison. Pure: no I/O.
    fn decode(&self, record: &InboundRecord) -> Result<Self::Event, Rejection>;

    /// Applies a batch of events inside the batch's transaction and returns
    /// the events to publish as a result. Must be idempotent: an event seen
    /// before changes nothing and publishes nothing.
    fn apply<'a>(
        &'a self,
        conn: &'a mut AsyncPgConnection,
        events: Vec<Self::Event>,
    ) -> impl Future<Output = QueryResult<Vec<OutboxMessage>>> + Send + 'a;
}

/// Counters shared by a service's consumers.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    pub processed: AtomicU64,
    pub dead_lettered: AtomicU64,
}

/// Tuning of the fetch requests.
#[derive(Debug, Clone, Copy)]
pub struct FetchSettings {
    /// How long the broker may hold a fetch open waiting for data. Apache
    /// Kafka answers as soon as data arrives, so a long wait costs nothing
    /// there; tansu always waits all of it, and polls while it waits.
    pub max_wait_ms: i32,
    /// The least time between the starts of two fetches of a partition.
    /// Records that arrive meanwhile share one fetch and one transaction,
    /// which spares the broker and the database under load, and it bounds
    /// what each hop adds to a record's latency.
    pub min_interval: Duration,
    /// The longest pause between fetches of a partition that keeps coming
    /// back empty. The pause starts at `FIRST_IDLE_PAUSE` (or `min_interval`
    /// if longer) and doubles up to this; any record ends it.
    pub max_idle_pause: Duration,
}

/// The first pause after an empty fetch: short, because under load a fetch
/// comes back empty only between two records.
const FIRST_IDLE_PAUSE: Duration = Duration::from_millis(2);

/// The largest fetch response, in bytes.
const FETCH_MAX_BYTES: i32 = 4 * 1024 * 1024;

impl FetchSettings {
    pub fn from_config(kafka: &KafkaConfig) -> Self {
        Self {
            max_wait_ms: kafka.fetch_max_wait_ms,
            min_interval: kafka.fetch_min_interval,
            max_idle_pause: kafka.fetch_max_idle_pause,
        }
    }

    /// The time from the start of the `empty_fetches`-th empty fetch in a
    /// row to the start of the next fetch.
    fn idle_pause(&self, empty_fetches: u32) -> Duration {
        FIRST_IDLE_PAUSE
            .saturating_mul(1 << empty_fetches.saturating_sub(1).min(16))
            .min(self.max_idle_pause)
            .max(self.min_interval)
    }
}

/// Everything a partition task needs.
pub struct Consumer<H> {
    pub client: Arc<Client>,
    pub pool: DbPool,
    pub handler: Arc<H>,
    /// Notified after a commit that wrote outbox rows.
    pub relay_wakeup: Arc<Notify>,
    pub stats: Arc<ConsumerStats>,
    pub fetch: FetchSettings,
}

impl<H: EventHandler> Consumer<H> {
    /// Starts one task per partition of each topic; they stop at `shutdown`
    /// after committing the batch in hand.
    pub async fn spawn(
        self,
        topics: &[String],
        shutdown: CancellationToken,
    ) -> Result<JoinSet<()>, RsKafkaError> {
        let this = Arc::new(self);
        let listed = this.client.list_topics().await?;
        let mut tasks = JoinSet::new();
        for topic in topics {
            let partitions = listed
                .iter()
                .find(|t| &t.name == topic)
                .map(|t| t.partitions.clone())
                .unwrap_or_default();
            for partition in partitions {
                let partition_client = this
                    .client
                    .partition_client(topic.clone(), partition, UnknownTopicHandling::Retry)
                    .await?;
                let this = Arc::clone(&this);
                let shutdown = shutdown.clone();
                tasks
                    .spawn(async move { this.consume_partition(partition_client, shutdown).await });
            }
        }
        Ok(tasks)
    }

    async fn consume_partition(&self, client: PartitionClient, shutdown: CancellationToken) {
        let topic = client.topic().to_owned();
        let partition = client.partition();
        let mut backoff = Backoff::transient();
        let mut next_offset = None;
        let mut empty_fetches = 0;
        let mut next_fetch_at = Instant::now();
        while !shutdown.is_cancelled() {
            let offset = match next_offset {
                Some(offset) => offset,
                None => match load_offset(&self.pool, &topic, partition).await {
                    Ok(offset) => *next_offset.insert(offset),
                    Err(err) => {
                        tracing::warn!(%topic, partition, error = %err, "cannot load consumer offset");
                        pause(&mut backoff, &shutdown).await;
                        continue;
                    }
                },
            };
            // Checked first: even an elapsed timer waits for tokio's next tick.
            if Instant::now() < next_fetch_at {
                tokio::select! {
                    _ = tokio::time::sleep_until(next_fetch_at) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            let fetch_started = Instant::now();
            let fetched = tokio::select! {
                fetched = client.fetch_records(offset, 1..FETCH_MAX_BYTES, self.fetch.max_wait_ms) => fetched,
                _ = shutdown.cancelled() => return,
            };
            let records = match fetched {
                // Our position is past the end of the log: the log was reset
                // (a broker without durable storage restarted, or the topic
                // was recreated) and the records now in it are new to us.
                Ok((_, high_watermark)) if offset > high_watermark => None,
                Ok((records, _)) => Some(records),
                // The log no longer holds our position (retention).
                Err(RsKafkaError::ServerError {
                    protocol_error: ProtocolError::OffsetOutOfRange,
                    ..
                }) => None,
                Err(err) => {
                    tracing::warn!(%topic, partition, error = %err, "fetch failed");
                    pause(&mut backoff, &shutdown).await;
                    continue;
                }
            };
            let Some(records) = records else {
                match client.get_offset(OffsetAt::Earliest).await {
                    Ok(earliest) => {
                        tracing::warn!(%topic, partition, offset, earliest, "position not in the log, resuming from its earliest record");
                        next_offset = Some(earliest);
                    }
                    Err(err) => {
                        tracing::warn!(%topic, partition, error = %err, "cannot read earliest offset");
                        pause(&mut backoff, &shutdown).await;
                    }
                }
                continue;
            };
            let Some(last) = records.last() else {
                empty_fetches += 1;
                next_fetch_at = fetch_started + self.fetch.idle_pause(empty_fetches);
                continue;
            };
            empty_fetches = 0;
            next_fetch_at = fetch_started + self.fetch.min_interval;
            let new_offset = last.offset + 1;
            let batch: Vec<InboundRecord> = records
                .into_iter()
                .map(|r| InboundRecord {
                    topic: topic.clone(),
                    partition,
                    offset: r.offset,
                    key: r.record.key,
                    payload: r.record.value.unwrap_or_default(),
                    headers: r.record.headers,
                })
                .collect();
            // A transient failure retries the same batch until it commits;
            // shutdown abandons it uncommitted, to be fetched again next time.
            loop {
                match self
                    .commit_batch(&topic, partition, &batch, new_offset)
                    .await
                {
                    Ok(()) => break,
                    Err(err) => {
                        tracing::warn!(%topic, partition, offset, error = %err, "batch failed, retrying");
                        if pause(&mut backoff, &shutdown).await {
                            return;
                        }
                    }
                }
            }
            backoff.reset();
            next_offset = Some(new_offset);
        }
    }

    async fn commit_batch(
        &self,
        topic: &str,
        partition: i32,
        batch: &[InboundRecord],
        new_offset: i64,
    ) -> Result<(), DbError> {
        let outcome = commit_records(
            &self.pool,
            &*self.handler,
            topic,
            partition,
            batch,
            new_offset,
        )
        .await?;
        if outcome.wrote_outbox {
            self.relay_wakeup.notify_one();
        }
        self.stats
            .processed
            .fetch_add(outcome.applied, Ordering::Relaxed);
        let dead_letters = outcome.dead_letters;
        if dead_letters > 0 {
            // Counted once committed, so a retried batch is not counted twice.
            let total = self
                .stats
                .dead_lettered
                .fetch_add(dead_letters, Ordering::Relaxed)
                + dead_letters;
            tracing::warn!(%topic, partition, dead_letters, total, "dead letters committed");
        }
        Ok(())
    }
}

/// What one committed batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    pub applied: u64,
    pub dead_letters: u64,
    pub wrote_outbox: bool,
}

/// Decodes `batch`, applies its events with `handler`, writes the outbox
/// rows they cause plus a dead letter per poison record, and stores
/// `new_offset` for the partition, all in one transaction. (The consumer
/// loop's unit of work; the benchmark's PostgreSQL ceiling runs it too.)
pub async fn commit_records<H: EventHandler>(
    pool: &DbPool,
    handler: &H,
    topic: &str,
    partition: i32,
    batch: &[InboundRecord],
    new_offset: i64,
) -> Result<BatchOutcome, DbError> {
    let mut outbox_messages = Vec::new();
    let mut events = Vec::with_capacity(batch.len());
    for record in batch {
        match handler.decode(record) {
            Ok(event) => events.push(event),
            Err(rejection) => {
                tracing::error!(
                    topic = %record.topic, partition, offset = record.offset, reason = %rejection,
                    "poison record sent to the dead-letter topic"
                );
                outbox_messages.push(dead_letter(record, &rejection));
            }
        }
    }
    let dead_letters = outbox_messages.len() as u64;
    let applied = events.len() as u64;
    let mut conn = pool.get().await?;
    let wrote_outbox = conn
        .transaction::<_, diesel::result::Error, _>(async |conn| {
            outbox_messages.extend(handler.apply(conn, events).await?);
            outbox::enqueue(conn, &outbox_messages).await?;
            store_offset(conn, topic, partition, new_offset).await?;
            Ok(!outbox_messages.is_empty())
        })
        .await?;
    Ok(BatchOutcome {
        applied,
        dead_letters,
        wrote_outbox,
    })
}

/// Waits out the next backoff delay; returns early, with `true`, on shutdown.
async fn pause(backoff: &mut Backoff, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(backoff.next_delay()) => false,
        _ = shutdown.cancelled() => true,
    }
}

async fn load_offset(pool: &DbPool, topic: &str, partition: i32) -> Result<i64, DbError> {
    let mut conn = pool.get().await?;
    let stored = consumer_offsets::table
        .filter(consumer_offsets::topic.eq(topic))
        .filter(consumer_offsets::partition_id.eq(partition))
        .select(consumer_offsets::next_offset)
        .first::<i64>(&mut conn)
        .await
        .optional()?;
    Ok(stored.unwrap_or(0))
}

async fn store_offset(
    conn: &mut AsyncPgConnection,
    topic: &str,
    partition: i32,
    next_offset: i64,
) -> QueryResult<()> {
    diesel::insert_into(consumer_offsets::table)
        .values((
            consumer_offsets::topic.eq(topic),
            consumer_offsets::partition_id.eq(partition),
            consumer_offsets::next_offset.eq(next_offset),
        ))
        .on_conflict((consumer_offsets::topic, consumer_offsets::partition_id))
        .do_update()
        .set((
            consumer_offsets::next_offset.eq(excluded(consumer_offsets::next_offset)),
            consumer_offsets::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}

/// The copy of a poison record for its dead-letter topic: the original key,
/// payload and headers, plus why and where from.
fn dead_letter(record: &InboundRecord, rejection: &Rejection) -> OutboxMessage {
    let mut headers = record.headers.clone();
    for (name, value) in [
        ("dlq_reason", rejection.0.clone()),
        ("dlq_source_topic", record.topic.clone()),
        ("dlq_source_partition", record.partition.to_string()),
        ("dlq_source_offset", record.offset.to_string()),
        (
            "dlq_time",
            Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        ),
    ] {
        headers.insert(name.to_owned(), value.into_bytes());
    }
    OutboxMessage {
        topic: dead_letter_topic(&record.topic),
        key: record.key.clone().unwrap_or_default(),
        payload: record.payload.clone(),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(min_interval_ms: u64, max_idle_pause_ms: u64) -> FetchSettings {
        FetchSettings {
            max_wait_ms: 0,
            min_interval: Duration::from_millis(min_interval_ms),
            max_idle_pause: Duration::from_millis(max_idle_pause_ms),
        }
    }

    fn pauses(settings: FetchSettings) -> Vec<u128> {
        (1..=6)
            .map(|empty| settings.idle_pause(empty).as_millis())
            .collect()
    }

    #[test]
    fn the_idle_pause_doubles_from_2_ms_up_to_its_ceiling() {
        assert_eq!(pauses(settings(0, 25)), [2, 4, 8, 16, 25, 25]);
        assert_eq!(
            settings(0, 25).idle_pause(u32::MAX),
            Duration::from_millis(25)
        );
    }

    #[test]
    fn the_idle_pause_is_never_below_the_fetch_interval() {
        assert_eq!(pauses(settings(5, 25)), [5, 5, 8, 16, 25, 25]);
        assert_eq!(pauses(settings(5, 0)), [5, 5, 5, 5, 5, 5]);
    }

    #[test]
    fn with_no_interval_and_no_ceiling_fetches_never_pause() {
        assert_eq!(pauses(settings(0, 0)), [0, 0, 0, 0, 0, 0]);
    }
}
