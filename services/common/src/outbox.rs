//! The transactional outbox: events are written as rows in the same
//! transaction as the state change that causes them, and the relay publishes
//! them afterwards.
//!
//! The relay reads rows in id order, publishes them (all records of one
//! partition in one request, so per-key order holds), waits for the broker's
//! acknowledgement and only then deletes them. A crash between publish and
//! delete publishes a row again: delivery is at least once, and every consumer
//! is idempotent, so effects happen exactly once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use oms_api::{Event, EventEnvelope};

use crate::db::{DbError, DbPool};
use crate::kafka::{KafkaError, KeyedRecord, Producer};
use crate::retry::Backoff;
use crate::schema::outbox;

/// How many rows the relay publishes per round.
pub const RELAY_BATCH: i64 = 500;
/// How often the relay looks for rows nobody woke it for, such as rows left
/// by a previous process that crashed before publishing them.
const RELAY_SWEEP_INTERVAL: Duration = Duration::from_millis(500);

/// One event waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub topic: String,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, Vec<u8>>,
}

impl OutboxMessage {
    /// Wraps `event` in a new CloudEvents envelope, keyed by `order_id`.
    pub fn event<E: Event>(topic: String, source: &str, order_id: &str, event: &E) -> Self {
        Self {
            topic,
            key: order_id.as_bytes().to_vec(),
            payload: event.encode_to_vec(),
            headers: EventEnvelope::new::<E>(source, order_id).to_headers(),
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = outbox)]
struct NewOutboxRow<'a> {
    topic: &'a str,
    message_key: &'a [u8],
    payload: &'a [u8],
    header_names: Vec<&'a str>,
    header_values: Vec<&'a [u8]>,
}

/// A row waiting for the relay.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = outbox)]
pub struct OutboxRow {
    pub id: i64,
    pub topic: String,
    pub message_key: Vec<u8>,
    pub payload: Vec<u8>,
    pub header_names: Vec<String>,
    pub header_values: Vec<Vec<u8>>,
}

/// The oldest `limit` rows waiting to be published.
pub async fn load_pending(conn: &mut AsyncPgConnection, limit: i64) -> QueryResult<Vec<OutboxRow>> {
    outbox::table
        .select(OutboxRow::as_select())
        .order(outbox::id)
        .limit(limit)
        .load(conn)
        .await
}

/// Deletes rows the broker has acknowledged.
pub async fn delete_published(conn: &mut AsyncPgConnection, ids: &[i64]) -> QueryResult<()> {
    diesel::delete(outbox::table.filter(outbox::id.eq_any(ids)))
        .execute(conn)
        .await?;
    Ok(())
}

/// Writes the messages to the outbox; call inside the transaction that makes
/// the state change they announce.
pub async fn enqueue(conn: &mut AsyncPgConnection, messages: &[OutboxMessage]) -> QueryResult<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let rows: Vec<NewOutboxRow<'_>> = messages
        .iter()
        .map(|message| NewOutboxRow {
            topic: &message.topic,
            message_key: &message.key,
            payload: &message.payload,
            header_names: message.headers.keys().map(String::as_str).collect(),
            header_values: message.headers.values().map(Vec::as_slice).collect(),
        })
        .collect();
    diesel::insert_into(outbox::table)
        .values(&rows)
        .execute(conn)
        .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
}

impl From<diesel::result::Error> for RelayError {
    fn from(err: diesel::result::Error) -> Self {
        Self::Db(err.into())
    }
}

/// Publishes outbox rows until `shutdown`. Wakes on `wakeup` (notified after
/// each commit that wrote rows) and sweeps on a timer as a fallback.
pub async fn run_relay(
    pool: DbPool,
    producer: Arc<Producer>,
    wakeup: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::transient();
    loop {
        match publish_pending(&pool, &producer).await {
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
            _ = tokio::time::sleep(RELAY_SWEEP_INTERVAL) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Publishes rows until the outbox is empty.
async fn publish_pending(pool: &DbPool, producer: &Producer) -> Result<(), RelayError> {
    loop {
        let rows = {
            let mut conn = pool.get().await.map_err(DbError::from)?;
            load_pending(&mut conn, RELAY_BATCH).await?
        };
        if rows.is_empty() {
            return Ok(());
        }
        let published = publish_rows(producer, rows).await?;
        let mut conn = pool.get().await.map_err(DbError::from)?;
        delete_published(&mut conn, &published).await?;
        tracing::debug!(count = published.len(), "published outbox rows");
    }
}

/// Publishes the rows grouped by topic and returns the ids of all of them;
/// fails, publishing nothing further, at the first topic the broker refuses.
async fn publish_rows(producer: &Producer, rows: Vec<OutboxRow>) -> Result<Vec<i64>, KafkaError> {
    let mut by_topic: BTreeMap<String, (Vec<i64>, Vec<KeyedRecord>)> = BTreeMap::new();
    for row in rows {
        let (ids, records) = by_topic.entry(row.topic).or_default();
        ids.push(row.id);
        records.push(KeyedRecord {
            key: row.message_key,
            value: row.payload,
            headers: row
                .header_names
                .into_iter()
                .zip(row.header_values)
                .collect(),
        });
    }
    let mut published = Vec::new();
    for (topic, (ids, records)) in by_topic {
        producer.produce(&topic, records).await?;
        published.extend(ids);
    }
    Ok(published)
}
