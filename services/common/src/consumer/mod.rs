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
//! A record that can never be processed is poison: it goes to `<topic>.dlq`,
//! via the outbox and in the same transaction, with headers saying why and
//! where it came from, and the partition moves on. Poison is a record that
//! does not decode, has an unknown `ce_type` or an invalid payload (the
//! shared validation, which also refuses what the database cannot store);
//! one the database refuses with a data error (`commit`); and one the
//! client cannot read at all, which is skipped after a bounded number of
//! tries (`unreadable`). Failures of the connection, the database server or
//! the broker are transient and retried with backoff, in order, skipping
//! nothing.

mod after_commit;
mod commit;
mod dead_letter;
mod log_changes;
pub mod metrics;
mod offsets;
mod partitions;
mod progress;
mod spans;
mod unreadable;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use diesel::QueryResult;
use diesel_async::AsyncPgConnection;
use rskafka::client::Client;
use rskafka::client::error::{Error as RsKafkaError, ProtocolError};
use rskafka::client::partition::PartitionClient;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use oms_api::{Event, EventEnvelope};

pub use after_commit::after_commit;
pub use commit::{BatchOutcome, CommitError, DbFailure, Position, commit_records};
pub use offsets::Fence;
pub use progress::{ConsumerProgress, PartitionProgress, PartitionSnapshot};
pub use unreadable::MAX_UNREADABLE_FETCHES;

use crate::config::KafkaConfig;
use crate::db::{DbError, DbPool};
use crate::membership::Membership;
use crate::outbox::OutboxMessage;
use crate::retry::Backoff;
use log_changes::{LogWatch, OutOfRange, PastEnd};
use offsets::{StoredPosition, load_position};
use unreadable::{UnreadableFetches, is_unreadable};

/// One record as the broker delivered it.
#[derive(Debug, Clone)]
pub struct InboundRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, Vec<u8>>,
    /// The record's timestamp (the producer's clock, or the broker's for
    /// log-append-time topics).
    pub timestamp: chrono::DateTime<chrono::Utc>,
}

/// Why a record is poison and goes to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejection(pub String);

impl Rejection {
    /// Fails with every violation in one reason, or passes when there are
    /// none.
    pub fn unless_valid(violations: &[oms_api::validation::Violation]) -> Result<(), Rejection> {
        if violations.is_empty() {
            Ok(())
        } else {
            Err(Rejection(oms_api::validation::describe(violations)))
        }
    }
}

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

    /// Called after a batch's transaction committed, outside it: the place
    /// to wake work that must see the batch's rows (and must not run inside
    /// the transaction, such as a call to an outside service).
    fn committed(&self) {}
}

/// Counters shared by a service's consumers.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    pub processed: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Times a partition was read again from the start of a recreated log.
    pub rewinds: AtomicU64,
    /// Records retention deleted before they were read.
    pub lost_to_retention: AtomicU64,
    /// Whether each partition moves; see `ConsumerProgress::check`.
    pub progress: ConsumerProgress,
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

/// How long a consumer whose position is past the log's end waits before it
/// looks again.
const BEHIND_PAUSE: Duration = Duration::from_secs(1);

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

/// The lease a partition task works under.
#[derive(Debug, Clone)]
pub struct Grant {
    pub fence: Fence,
    /// When to stop fetching, by this process's clock, unless the lease is
    /// renewed meanwhile (a renewal sends a later deadline).
    pub deadline: watch::Receiver<Instant>,
}

impl Grant {
    /// Waits until the lease is surely still ours by our own clock; `false`
    /// on shutdown, or when the lease's owner dropped it.
    async fn wait_until_valid(&mut self, shutdown: &CancellationToken) -> bool {
        let mut reported = false;
        loop {
            if Instant::now() < *self.deadline.borrow_and_update() {
                return true;
            }
            if !reported {
                tracing::warn!(
                    epoch = self.fence.epoch,
                    "lease not renewed in time, fetching paused"
                );
                reported = true;
            }
            let deadline = *self.deadline.borrow();
            tokio::select! {
                changed = self.deadline.changed() => if changed.is_err() { return false },
                // A deadline in the past: check again when one could come.
                _ = tokio::time::sleep_until(deadline.max(Instant::now()) + Duration::from_millis(100)) => {}
                _ = shutdown.cancelled() => return false,
            }
        }
    }
}

/// Everything a partition task needs.
pub struct Consumer<H> {
    pub client: Arc<Client>,
    pub pool: DbPool,
    pub membership: Arc<Membership>,
    pub handler: Arc<H>,
    /// Notified after a commit that wrote outbox rows.
    pub relay_wakeup: Arc<Notify>,
    pub stats: Arc<ConsumerStats>,
    pub fetch: FetchSettings,
}

impl<H: EventHandler> Consumer<H> {
    /// Consumes one partition under `grant` until `shutdown`, or until the
    /// lease is lost, when it cancels `shutdown` itself (the partition's own
    /// token) so the task is not started again.
    async fn consume_partition(
        &self,
        client: PartitionClient,
        mut grant: Grant,
        shutdown: CancellationToken,
    ) {
        let topic = client.topic().to_owned();
        let partition = client.partition();
        let mut backoff = Backoff::transient();
        let mut position: Option<StoredPosition> = None;
        let mut empty_fetches = 0;
        let mut next_fetch_at = Instant::now();
        let mut unreadable = UnreadableFetches::new(&topic, partition);
        let mut log_watch = LogWatch::default();
        let progress = self.stats.progress.partition(&topic, partition);
        progress.leased(grant.fence.epoch);
        while !shutdown.is_cancelled() {
            let Some(current) = &position else {
                match self.resume_position(&client).await {
                    Ok(resumed) => position = Some(resumed),
                    Err(err) => {
                        tracing::warn!(%topic, partition, error = %err, "cannot load consumer offset");
                        pause(&mut backoff, &shutdown).await;
                    }
                }
                continue;
            };
            let offset = current.next_offset;
            if !grant.wait_until_valid(&shutdown).await {
                return;
            }
            // Checked first: even an elapsed timer waits for tokio's next tick.
            if Instant::now() < next_fetch_at {
                tokio::select! {
                    _ = tokio::time::sleep_until(next_fetch_at) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            let fetch_started = Instant::now();
            // After a fetch the client could not read, ask for as little as
            // the broker allows (Kafka still sends the first batch whole), to
            // tell whether the record at `offset` is the unreadable one.
            let narrowed = unreadable.failures_at(offset) > 0;
            let max_bytes = if narrowed { 2 } else { FETCH_MAX_BYTES };
            let fetched = tokio::select! {
                fetched = client.fetch_records(offset, 1..max_bytes, self.fetch.max_wait_ms) => fetched,
                _ = shutdown.cancelled() => return,
            };
            let fetched = match fetched {
                // Kafka answers a fetch outside the log so (tansu answers one
                // past its end with nothing and a lower high watermark).
                Err(RsKafkaError::ServerError {
                    protocol_error: ProtocolError::OffsetOutOfRange,
                    ..
                }) => match self.out_of_range(&client, offset).await {
                    Ok(OutOfRange::Retention { earliest }) => {
                        position = Some(StoredPosition::at(earliest));
                        continue;
                    }
                    Ok(OutOfRange::PastEnd { high_watermark }) => Ok((Vec::new(), high_watermark)),
                    Err(err) => {
                        tracing::warn!(%topic, partition, error = %err, "cannot read the log's offsets");
                        pause(&mut backoff, &shutdown).await;
                        continue;
                    }
                },
                other => other,
            };
            if let Ok((_, high_watermark)) = &fetched {
                progress.fetched(offset, *high_watermark);
            }
            let records = match fetched {
                Ok((_, high_watermark)) if offset > high_watermark => {
                    // Whatever the verdict, look again before reading on.
                    log_watch.verify_before_reading = true;
                    match self.judge_past_end(&client, current, high_watermark).await {
                        Ok(PastEnd::Recreated { earliest, evidence }) => {
                            self.rewound(&topic, partition, offset, earliest, &evidence);
                            position = Some(StoredPosition::at(earliest));
                        }
                        Ok(PastEnd::Behind) => {
                            log_watch.report_behind(&topic, partition, offset, high_watermark);
                            next_fetch_at = fetch_started + BEHIND_PAUSE;
                        }
                        Err(err) => {
                            tracing::warn!(%topic, partition, error = %err, "cannot inspect the log");
                            pause(&mut backoff, &shutdown).await;
                        }
                    }
                    continue;
                }
                // After a fetch the client could not read, a broker that
                // sends nothing for so small a maximum cannot pin the
                // failure to `offset`: without that, skipping could lose a
                // good record, so the partition waits, and the stall check
                // says where. (An empty answer below the high watermark
                // proves nothing either: tansu's durable engine answers so
                // for seconds after a restart.)
                Ok((records, high_watermark))
                    if narrowed && records.is_empty() && high_watermark > offset =>
                {
                    unreadable.wait(&shutdown).await;
                    continue;
                }
                // After a gap in what we saw of the log (past its end, or
                // fetches failing), the record before our position must be
                // the one we read last, or the log was recreated meanwhile.
                Ok((records, _)) if log_watch.verify_before_reading => {
                    match self.recreated_below(&client, current).await {
                        Ok(None) => {
                            log_watch.verify_before_reading = false;
                            records
                        }
                        Ok(Some((earliest, evidence))) => {
                            log_watch.verify_before_reading = false;
                            self.rewound(&topic, partition, offset, earliest, &evidence);
                            position = Some(StoredPosition::at(earliest));
                            continue;
                        }
                        Err(err) => {
                            tracing::warn!(%topic, partition, error = %err, "cannot inspect the log");
                            pause(&mut backoff, &shutdown).await;
                            continue;
                        }
                    }
                }
                Ok((records, _)) => records,
                Err(err) if is_unreadable(&err) => {
                    if self
                        .unreadable_at(
                            &mut unreadable,
                            offset,
                            err.to_string(),
                            &grant.fence,
                            &shutdown,
                        )
                        .await
                    {
                        position = Some(StoredPosition::at(offset + 1));
                    }
                    continue;
                }
                Err(err) => {
                    tracing::warn!(%topic, partition, error = %err, "fetch failed");
                    progress.failed(format!("fetch failed: {err}"));
                    log_watch.verify_before_reading = true;
                    pause(&mut backoff, &shutdown).await;
                    continue;
                }
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
                    timestamp: r.record.timestamp,
                })
                .collect();
            // A transient failure retries the same batch until it commits;
            // shutdown abandons it uncommitted, to be fetched again next time.
            // Only refusals the database does not name count toward
            // isolating the batch's records; an outage does not.
            // One set of spans for the batch, however many tries it takes.
            let spans = spans::for_batch(&topic, partition, &batch);
            let at = Position {
                topic: &topic,
                partition,
                new_offset,
                fence: &grant.fence,
            };
            let mut unclassified_failures = 0;
            loop {
                match self
                    .commit_batch(&at, &batch, unclassified_failures, spans.as_ref())
                    .await
                {
                    Ok(()) => break,
                    Err(CommitError::LeaseLost { epoch }) => {
                        tracing::warn!(
                            instance = self.membership.instance_id(), %topic, partition, epoch, offset,
                            "lease lost: the batch was rolled back and the partition dropped"
                        );
                        shutdown.cancel();
                        return;
                    }
                    Err(CommitError::Db(err)) => {
                        if matches!(&err, DbError::Query(query) if DbFailure::of(query) == DbFailure::Unclassified)
                        {
                            unclassified_failures += 1;
                        }
                        tracing::warn!(%topic, partition, offset, error = %err, "batch failed, retrying");
                        progress.failed(format!("batch failed: {err}"));
                        if pause(&mut backoff, &shutdown).await {
                            return;
                        }
                    }
                }
            }
            backoff.reset();
            progress.committed(new_offset);
            position = batch.last().map(StoredPosition::after);
        }
    }

    /// The stored position, unless the log was recreated below it.
    async fn resume_position(&self, client: &PartitionClient) -> Result<StoredPosition, String> {
        let (topic, partition) = (client.topic(), client.partition());
        let stored = load_position(&self.pool, topic, partition)
            .await
            .map_err(|err| err.to_string())?;
        match self.recreated_below(client, &stored).await {
            Ok(None) => Ok(stored),
            Ok(Some((earliest, evidence))) => {
                self.rewound(topic, partition, stored.next_offset, earliest, &evidence);
                Ok(StoredPosition::at(earliest))
            }
            Err(err) => Err(err.to_string()),
        }
    }

    async fn commit_batch(
        &self,
        at: &Position<'_>,
        batch: &[InboundRecord],
        earlier_failures: u32,
        spans: Option<&spans::BatchSpans>,
    ) -> Result<(), CommitError> {
        let (topic, partition) = (at.topic, at.partition);
        let started = Instant::now();
        let commit = commit_records(&self.pool, &*self.handler, at, batch, earlier_failures);
        let outcome = spans::traced(spans, commit).await?;
        metrics::committed(
            topic,
            partition,
            batch.len(),
            outcome.dead_letters,
            started.elapsed(),
        );
        if outcome.wrote_outbox {
            self.relay_wakeup.notify_one();
        }
        self.handler.committed();
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

/// Waits out the next backoff delay; returns early, with `true`, on shutdown.
async fn pause(backoff: &mut Backoff, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(backoff.next_delay()) => false,
        _ = shutdown.cancelled() => true,
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
