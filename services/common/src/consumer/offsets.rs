//! Where each partition's consumer resumes: `consumer_offsets`, written in
//! the transaction of the batch it covers, with what it last read there.

use chrono::{DateTime, Utc};
use std::sync::Arc;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::InboundRecord;
use crate::db::{DbError, DbPool};
use crate::schema::consumer_offsets;

/// The longest `ce_id` kept with a position; a longer one is not ours.
const MAX_CE_ID_BYTES: usize = 256;

/// A partition's stored position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredPosition {
    /// The next offset to read.
    pub next_offset: i64,
    /// The `ce_id` of the record just before `next_offset`, when it had one:
    /// the record at `next_offset - 1` must still carry it, or the log is
    /// not the one the position was stored in.
    pub last_ce_id: Option<String>,
    /// The timestamp of that record. A record newer than it at a lower
    /// offset proves the log was recreated.
    pub last_record_time: Option<DateTime<Utc>>,
}

impl StoredPosition {
    /// The position after `last`, the last record of a batch. What the
    /// record says is kept only where PostgreSQL can store it: the offset
    /// write must never fail because of a record's contents.
    pub fn after(last: &InboundRecord) -> Self {
        Self {
            next_offset: last.offset + 1,
            last_ce_id: last
                .headers
                .get("ce_id")
                .map(|id| String::from_utf8_lossy(id).into_owned())
                .filter(|id| id.len() <= MAX_CE_ID_BYTES && !id.contains('\0')),
            last_record_time: oms_api::validation::event_time(Some(&oms_api::time::to_timestamp(
                last.timestamp,
            ))),
        }
    }

    /// A position with nothing known of the record before it (a skip or a
    /// rewind).
    pub fn at(next_offset: i64) -> Self {
        Self {
            next_offset,
            ..Self::default()
        }
    }
}

pub(super) async fn load_position(
    pool: &DbPool,
    topic: &str,
    partition: i32,
) -> Result<StoredPosition, DbError> {
    let mut conn = pool.get().await?;
    let stored = consumer_offsets::table
        .filter(consumer_offsets::topic.eq(topic))
        .filter(consumer_offsets::partition_id.eq(partition))
        .select((
            consumer_offsets::next_offset,
            consumer_offsets::last_ce_id,
            consumer_offsets::last_record_time,
        ))
        .first::<(i64, Option<String>, Option<DateTime<Utc>>)>(&mut conn)
        .await
        .optional()?;
    Ok(stored
        .map(
            |(next_offset, last_ce_id, last_record_time)| StoredPosition {
                next_offset,
                last_ce_id,
                last_record_time,
            },
        )
        .unwrap_or_default())
}

/// The lease a batch was fetched under: its commit must still hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub owner: Arc<str>,
    pub epoch: i64,
}

/// Writes the partition's position, only while `fence` still holds the
/// partition's lease, and returns whether it did. The lease row is locked
/// (FOR SHARE) until the transaction ends, so a takeover waits for this
/// commit and then reads the position it wrote; a batch fetched under a
/// lease that has since expired or passed to another epoch writes nothing,
/// and the caller rolls its whole transaction back. So a position never
/// moves backwards, however many instances think they own the partition.
pub(super) async fn store_position(
    conn: &mut AsyncPgConnection,
    topic: &str,
    partition: i32,
    position: &StoredPosition,
    fence: &Fence,
) -> QueryResult<bool> {
    let written = diesel::sql_query(
        "INSERT INTO consumer_offsets \
             (topic, partition_id, next_offset, last_ce_id, last_record_time) \
         SELECT $1, $2, $3, $4, $5 FROM partition_leases \
         WHERE topic = $1 AND partition_id = $2 AND owner = $6 AND epoch = $7 \
           AND expires_at > clock_timestamp() \
         FOR SHARE \
         ON CONFLICT (topic, partition_id) DO UPDATE SET \
             next_offset = excluded.next_offset, \
             last_ce_id = excluded.last_ce_id, \
             last_record_time = excluded.last_record_time, \
             updated_at = now()",
    )
    .bind::<Text, _>(topic)
    .bind::<Integer, _>(partition)
    .bind::<BigInt, _>(position.next_offset)
    .bind::<Nullable<Text>, _>(&position.last_ce_id)
    .bind::<Nullable<Timestamptz>, _>(position.last_record_time)
    .bind::<Text, _>(&*fence.owner)
    .bind::<BigInt, _>(fence.epoch)
    .execute(conn)
    .await?;
    Ok(written == 1)
}
