//! The transactional outbox: events are written as rows in the same
//! transaction as the state change that causes them, and the relay publishes
//! them afterwards.
//!
//! The relay reads up to `RELAY_BATCH` rows in id order and routes each to
//! its partition. A partition's rows go in produce requests that stay within
//! the broker's `message.max.bytes`, sent one after another so per-key order
//! holds; partitions and topics are written concurrently. Once the broker
//! acknowledges a request, exactly its rows are deleted, so a later failure
//! never makes acknowledged rows be published again. A crash between the
//! acknowledgement and the delete does publish them again: delivery is at
//! least once, and every consumer is idempotent, so effects happen once.
//!
//! A failure is transient or permanent for one row (`is_permanent`). After a
//! transient one (broker down, timeout, topic missing) the rest of that
//! partition waits for the next round, after a backoff, so nothing overtakes
//! it. A row that can never be published (too large on its own, or refused
//! by the broker as invalid) is parked: moved with its error to
//! `outbox_parked`, logged and counted, and the rows behind it go on. When a
//! request of several rows is refused as invalid, its rows are sent again one
//! per request, so that only the culprit is parked.
//!
//! With several instances, each relay publishes the rows its own instance
//! wrote (`owner`, set from the connection's `oms.instance_id`), so exactly
//! one relay publishes a row and a row is published by the instance that
//! wrote it, in id order. Rows of an instance that is no longer a member
//! (see `membership`) are adopted by another relay at its next sweep, and
//! rows with no owner (written by hand) by any.

pub mod metrics;
mod relay;

pub use relay::{Relay, RelayStats};

use std::collections::BTreeMap;
use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use oms_api::{Event, EventEnvelope};

use crate::schema::outbox;
use crate::telemetry::{causes, propagation};

/// How many rows the relay publishes per round.
pub const RELAY_BATCH: i64 = 500;

/// One event waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub topic: String,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, Vec<u8>>,
}

impl OutboxMessage {
    /// Wraps `event` in a new CloudEvents envelope, keyed by `order_id`,
    /// with the trace context of its cause (see `telemetry::causes`).
    pub fn event<E: Event>(topic: String, source: &str, order_id: &str, event: &E) -> Self {
        let mut headers = EventEnvelope::new::<E>(source, order_id).to_headers();
        causes::inject_cause(order_id.as_bytes(), &mut headers);
        Self {
            topic,
            key: order_id.as_bytes().to_vec(),
            payload: event.encode_to_vec(),
            headers,
        }
    }

    /// Makes the event continue the trace of a stored `traceparent`, for
    /// work resumed in another task than its cause.
    pub fn continuing(mut self, traceparent: Option<&str>) -> Self {
        if let Some(traceparent) = traceparent.filter(|_| propagation::is_enabled()) {
            // The stored cause has no `tracestate`; none from `event` stays.
            self.headers.remove(propagation::TRACESTATE);
            let cause = propagation::from_traceparent(traceparent);
            propagation::inject_into_record(&cause, &mut self.headers);
        }
        self
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

/// The oldest `limit` rows of `owner` waiting to be published.
pub async fn load_pending(
    conn: &mut AsyncPgConnection,
    owner: &str,
    limit: i64,
) -> QueryResult<Vec<OutboxRow>> {
    outbox::table
        .filter(outbox::owner.eq(owner))
        .select(OutboxRow::as_select())
        .order(outbox::id)
        .limit(limit)
        .load(conn)
        .await
}

/// Makes `owner` the owner of rows whose owner is no longer a member (or
/// that have none), and returns how many. Of two instances adopting at
/// once, the second finds the rows owned by a live member and leaves them.
pub async fn adopt_orphans(conn: &mut AsyncPgConnection, owner: &str) -> QueryResult<usize> {
    diesel::sql_query(
        "UPDATE outbox SET owner = $1 \
         WHERE owner IS DISTINCT FROM $1 \
           AND NOT EXISTS (SELECT 1 FROM members m \
                           WHERE m.instance_id = outbox.owner AND m.expires_at > now())",
    )
    .bind::<Text, _>(owner)
    .execute(conn)
    .await
}

/// The newest row of `owner` waiting now, if any.
pub async fn newest_of(conn: &mut AsyncPgConnection, owner: &str) -> QueryResult<Option<i64>> {
    outbox::table
        .filter(outbox::owner.eq(owner))
        .select(diesel::dsl::max(outbox::id))
        .first(conn)
        .await
}

/// Whether rows of `owner` up to `id` still wait.
pub async fn waits_up_to(conn: &mut AsyncPgConnection, owner: &str, id: i64) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        outbox::table
            .filter(outbox::owner.eq(owner))
            .filter(outbox::id.le(id)),
    ))
    .get_result(conn)
    .await
}

/// Deletes rows the broker has acknowledged.
pub async fn delete_published(conn: &mut AsyncPgConnection, ids: &[i64]) -> QueryResult<()> {
    diesel::delete(outbox::table.filter(outbox::id.eq_any(ids)))
        .execute(conn)
        .await?;
    Ok(())
}

/// Moves row `id` from the outbox to `outbox_parked`, keeping its id, with
/// `error` saying why it cannot be published. One statement, so the row is
/// in exactly one of the two tables at any time.
pub async fn park(conn: &mut AsyncPgConnection, id: i64, error: &str) -> QueryResult<()> {
    diesel::sql_query(
        "WITH moved AS (DELETE FROM outbox WHERE id = $1 RETURNING *) \
         INSERT INTO outbox_parked \
         (id, topic, message_key, payload, header_names, header_values, created_at, error) \
         SELECT id, topic, message_key, payload, header_names, header_values, created_at, $2 \
         FROM moved",
    )
    .bind::<BigInt, _>(id)
    // PostgreSQL text cannot hold NUL, and a broker's message might.
    .bind::<Text, _>(error.replace('\0', "\\0"))
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(QueryableByName)]
struct Age {
    #[diesel(sql_type = diesel::sql_types::Double)]
    seconds: f64,
}

/// How long the oldest row has waited, by the database's clock; `None` when
/// the outbox is empty.
pub async fn oldest_age(conn: &mut AsyncPgConnection) -> QueryResult<Option<Duration>> {
    let age = diesel::sql_query(
        "SELECT EXTRACT(EPOCH FROM now() - created_at)::float8 AS seconds \
         FROM outbox ORDER BY id LIMIT 1",
    )
    .get_result::<Age>(conn)
    .await
    .optional()?;
    Ok(age.map(|age| Duration::from_secs_f64(age.seconds.max(0.0))))
}

/// Rows per INSERT: five bind parameters a row, well inside PostgreSQL's
/// 65,535, however many dead letters one fetch brings.
const ENQUEUE_CHUNK: usize = 1_000;

/// Writes the messages to the outbox; call inside the transaction that makes
/// the state change they announce.
pub async fn enqueue(conn: &mut AsyncPgConnection, messages: &[OutboxMessage]) -> QueryResult<()> {
    for chunk in messages.chunks(ENQUEUE_CHUNK) {
        let rows: Vec<NewOutboxRow<'_>> = chunk
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
    }
    Ok(())
}
