//! The relay: publishes the outbox in requests the broker accepts, deletes
//! exactly what each acknowledged request carried, and parks what the broker
//! can never take.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rskafka::client::error::{Error as RsKafkaError, ProtocolError};
use rskafka::client::partition::{Compression, PartitionClient};
use rskafka::record::Record;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{OutboxRow, RELAY_BATCH, adopt_orphans, delete_published, load_pending, metrics, park};
use crate::db::{DbError, DbPool};
use crate::kafka::{KafkaError, Producer, RECORD_BATCH_OVERHEAD, encoded_size, partition_for_key};
use crate::membership::Membership;
use crate::retry::Backoff;

/// How often the relay looks for rows nobody woke it for, such as rows left
/// by a previous process that crashed before publishing them.
const RELAY_SWEEP_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// Rows of an instance that is no longer surely a member may have been
    /// adopted by another, so they are not published until it renews.
    #[error("membership not renewed in time: publishing paused")]
    NotMember,
}

impl From<diesel::result::Error> for RelayError {
    fn from(err: diesel::result::Error) -> Self {
        Self::Db(err.into())
    }
}

/// Answers whether the broker refused the records themselves, so that
/// sending them again can never succeed. Anything else (broker down, a
/// timeout, a topic not created yet) may pass later and is retried.
fn is_permanent(err: &KafkaError) -> bool {
    matches!(
        err,
        KafkaError::Broker(RsKafkaError::ServerError {
            protocol_error: ProtocolError::MessageTooLarge
                | ProtocolError::RecordListTooLarge
                | ProtocolError::InvalidRecord
                | ProtocolError::CorruptMessage
                | ProtocolError::InvalidTimestamp
                | ProtocolError::InvalidTopicException,
            ..
        })
    )
}

/// Counters of a relay.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Rows acknowledged by the broker and deleted.
    pub published: AtomicU64,
    /// Acknowledged produce requests.
    pub requests: AtomicU64,
    /// Rows moved to `outbox_parked`.
    pub parked: AtomicU64,
}

/// Publishes a service's outbox.
#[derive(Clone)]
pub struct Relay {
    pub pool: DbPool,
    pub producer: Arc<Producer>,
    /// The broker's `message.max.bytes`: no produce request is larger.
    pub max_message_bytes: usize,
    pub stats: Arc<RelayStats>,
    /// Whose rows this relay publishes: its own instance's, and those it
    /// adopts from instances that are gone.
    pub membership: Arc<Membership>,
}

/// A row routed and encoded, ready to go in a request.
#[derive(Debug)]
struct Pending {
    id: i64,
    record: Record,
    size: usize,
}

impl Pending {
    fn new(row: OutboxRow, timestamp: DateTime<Utc>) -> Self {
        let record = Record {
            key: Some(row.message_key),
            value: Some(row.payload),
            headers: row
                .header_names
                .into_iter()
                .zip(row.header_values)
                .collect(),
            timestamp,
        };
        Self {
            id: row.id,
            size: encoded_size(&record),
            record,
        }
    }
}

impl Relay {
    /// Publishes outbox rows until `shutdown`. Wakes on `wakeup` (notified
    /// after each commit that wrote rows) and sweeps on a timer as a fallback.
    pub async fn run(self, wakeup: Arc<Notify>, shutdown: CancellationToken) {
        let mut backoff = Backoff::transient();
        // A timer of its own, so that wake-ups after every commit (more often
        // than the sweep under load) never postpone the sweep.
        let mut sweep = tokio::time::interval(RELAY_SWEEP_INTERVAL);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut adopt_due = true;
        loop {
            if adopt_due {
                match self.adopt().await {
                    Ok(done) => adopt_due = !done,
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot adopt outbox rows of instances that are gone");
                    }
                }
            }
            match self.publish_pending().await {
                Ok(()) => backoff.reset(),
                Err(err) => {
                    tracing::warn!(error = %err, "outbox relay failed, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => continue,
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
            tokio::select! {
                _ = wakeup.notified() => {}
                _ = sweep.tick() => adopt_due = true,
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Takes over the rows of instances that are no longer members, and
    /// rows nobody owns; `false` when it could not look (not a member yet).
    async fn adopt(&self) -> Result<bool, RelayError> {
        if !self.membership.is_member() {
            return Ok(false);
        }
        let mut conn = self.pool.get().await.map_err(DbError::from)?;
        let adopted = adopt_orphans(&mut conn, self.membership.instance_id()).await?;
        if adopted > 0 {
            tracing::info!(
                instance = self.membership.instance_id(),
                rows = adopted,
                "adopted outbox rows of instances that are gone"
            );
        }
        Ok(true)
    }

    /// Publishes rows until the outbox is empty. Each round either removes
    /// every row it read (published or parked) or fails, so this ends.
    async fn publish_pending(&self) -> Result<(), RelayError> {
        loop {
            // Not a member yet (starting) or any more (paused past the
            // lease): the rows wait for the next round.
            if !self.membership.is_member() {
                return Ok(());
            }
            let rows = {
                let mut conn = self.pool.get().await.map_err(DbError::from)?;
                load_pending(&mut conn, self.membership.instance_id(), RELAY_BATCH).await?
            };
            if rows.is_empty() {
                return Ok(());
            }
            let mut by_topic: BTreeMap<String, Vec<OutboxRow>> = BTreeMap::new();
            for row in rows {
                by_topic.entry(row.topic.clone()).or_default().push(row);
            }
            let topics = by_topic
                .into_iter()
                .map(|(topic, rows)| self.publish_topic(topic, rows));
            // Every topic gets its chance before the first failure is reported.
            for result in futures::future::join_all(topics).await {
                result?;
            }
        }
    }

    async fn publish_topic(&self, topic: String, rows: Vec<OutboxRow>) -> Result<(), RelayError> {
        let clients = self.producer.partition_clients(&topic).await?;
        if clients.is_empty() {
            return Err(KafkaError::UnknownTopic(topic).into());
        }
        let now = Utc::now();
        let mut by_partition: BTreeMap<i32, Vec<Pending>> = BTreeMap::new();
        for row in rows {
            let partition = partition_for_key(&row.message_key, clients.len());
            let pending = Pending::new(row, now);
            if RECORD_BATCH_OVERHEAD + pending.size > self.max_message_bytes {
                let error = format!(
                    "record of up to {} bytes does not fit in a request of at most {} bytes",
                    RECORD_BATCH_OVERHEAD + pending.size,
                    self.max_message_bytes
                );
                self.park(&topic, pending.id, &error).await?;
                continue;
            }
            by_partition.entry(partition).or_default().push(pending);
        }
        let partitions = by_partition.into_iter().map(|(partition, rows)| {
            self.publish_partition(&topic, partition, &clients[partition as usize], rows)
        });
        for result in futures::future::join_all(partitions).await {
            result?;
        }
        Ok(())
    }

    /// Sends one partition's rows in order, request after request, deleting
    /// each request's rows as soon as the broker acknowledges it. Stops at
    /// the first transient failure, so that no row overtakes an earlier one.
    async fn publish_partition(
        &self,
        topic: &str,
        partition: i32,
        client: &PartitionClient,
        rows: Vec<Pending>,
    ) -> Result<(), RelayError> {
        let mut requests = split_by_size(rows, self.max_message_bytes);
        while let Some(request) = requests.pop_front() {
            // Checked right before each request: rows loaded before a pause
            // may have been adopted by another instance since.
            // And the request gives up when the membership might lapse, so
            // no retry of it lands after another instance adopted the rows.
            let Some(left) = self.membership.member_for() else {
                return Err(RelayError::NotMember);
            };
            let started = Instant::now();
            let sent = match tokio::time::timeout(left, produce(client, &request)).await {
                Ok(sent) => sent,
                Err(_) => return Err(RelayError::NotMember),
            };
            match sent {
                Ok(()) => {
                    metrics::published(request.len(), started.elapsed());
                    self.acknowledged(topic, partition, &request).await?
                }
                Err(err) if !is_permanent(&err) => return Err(err.into()),
                Err(err) if request.len() == 1 => {
                    self.park(topic, request[0].id, &err.to_string()).await?;
                }
                Err(err) => {
                    tracing::warn!(
                        topic,
                        partition,
                        error = %err,
                        rows = request.len(),
                        "broker refused a request, sending its rows one by one"
                    );
                    for row in request.into_iter().rev() {
                        requests.push_front(vec![row]);
                    }
                }
            }
        }
        Ok(())
    }

    async fn acknowledged(
        &self,
        topic: &str,
        partition: i32,
        request: &[Pending],
    ) -> Result<(), RelayError> {
        let ids: Vec<i64> = request.iter().map(|row| row.id).collect();
        let mut conn = self.pool.get().await.map_err(DbError::from)?;
        delete_published(&mut conn, &ids).await?;
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.stats
            .published
            .fetch_add(ids.len() as u64, Ordering::Relaxed);
        tracing::debug!(topic, partition, count = ids.len(), "published outbox rows");
        Ok(())
    }

    async fn park(&self, topic: &str, id: i64, error: &str) -> Result<(), RelayError> {
        let mut conn = self.pool.get().await.map_err(DbError::from)?;
        park(&mut conn, id, error).await?;
        self.stats.parked.fetch_add(1, Ordering::Relaxed);
        metrics::parked();
        tracing::error!(
            topic,
            id,
            error,
            "parked an outbox row the broker can never accept"
        );
        Ok(())
    }
}

/// Produces the rows in one request and waits for the acknowledgement.
async fn produce(client: &PartitionClient, rows: &[Pending]) -> Result<(), KafkaError> {
    let records = rows.iter().map(|row| row.record.clone()).collect();
    client.produce(records, Compression::NoCompression).await?;
    Ok(())
}

/// Cuts a partition's rows, in order, into requests that each stay within
/// `max_bytes`. Every row fits on its own; the caller parked those that do
/// not.
fn split_by_size(rows: Vec<Pending>, max_bytes: usize) -> VecDeque<Vec<Pending>> {
    let mut requests = VecDeque::new();
    let mut request = Vec::new();
    let mut size = RECORD_BATCH_OVERHEAD;
    for row in rows {
        if !request.is_empty() && size + row.size > max_bytes {
            requests.push_back(std::mem::take(&mut request));
            size = RECORD_BATCH_OVERHEAD;
        }
        size += row.size;
        request.push(row);
    }
    if !request.is_empty() {
        requests.push_back(request);
    }
    requests
}

#[cfg(test)]
mod tests {
    use rskafka::client::error::RequestContext;

    use super::*;

    fn pending(id: i64, value_bytes: usize) -> Pending {
        let row = OutboxRow {
            id,
            topic: "t".into(),
            message_key: b"order".to_vec(),
            payload: vec![0; value_bytes],
            header_names: vec!["ce_id".into()],
            header_values: vec![vec![b'x'; 36]],
        };
        Pending::new(row, Utc::now())
    }

    #[test]
    fn requests_stay_within_the_limit_keep_row_order_and_are_only_cut_when_full() {
        let max = 10_000;
        let rows: Vec<Pending> = (0..50)
            .map(|id| pending(id, 100 + 97 * id as usize))
            .collect();
        let requests = split_by_size(rows, max);

        let ids: Vec<i64> = requests.iter().flatten().map(|row| row.id).collect();
        assert_eq!(ids, (0..50).collect::<Vec<_>>());
        let totals: Vec<usize> = requests
            .iter()
            .map(|request| {
                RECORD_BATCH_OVERHEAD + request.iter().map(|row| row.size).sum::<usize>()
            })
            .collect();
        assert!(totals.iter().all(|&total| total <= max), "{totals:?}");
        for (total, next) in totals.iter().zip(requests.iter().skip(1)) {
            assert!(total + next[0].size > max, "cut early: {totals:?}");
        }
        assert!(requests.len() > 1, "{totals:?}");
    }

    #[test]
    fn only_errors_about_the_records_themselves_are_permanent() {
        let server_error = |protocol_error: ProtocolError| {
            KafkaError::Broker(RsKafkaError::ServerError {
                protocol_error,
                error_message: None,
                request: RequestContext::Topic("t".into()),
                response: None,
                is_virtual: false,
            })
        };
        for refused in [ProtocolError::MessageTooLarge, ProtocolError::InvalidRecord] {
            assert!(is_permanent(&server_error(refused)));
        }
        for passing in [
            ProtocolError::NotEnoughReplicas,
            ProtocolError::UnknownTopicOrPartition,
        ] {
            assert!(!is_permanent(&server_error(passing)));
        }
        assert!(!is_permanent(&KafkaError::UnknownTopic("t".into())));
        assert!(!is_permanent(&KafkaError::Timeout(Duration::from_secs(1))));
    }
}
