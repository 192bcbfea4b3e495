//! Where each partition's consumer resumes: `consumer_offsets`, written in
//! the transaction of the batch it covers, with what it last read there.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::upsert::excluded;
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

pub(super) async fn store_position(
    conn: &mut AsyncPgConnection,
    topic: &str,
    partition: i32,
    position: &StoredPosition,
) -> QueryResult<()> {
    diesel::insert_into(consumer_offsets::table)
        .values((
            consumer_offsets::topic.eq(topic),
            consumer_offsets::partition_id.eq(partition),
            consumer_offsets::next_offset.eq(position.next_offset),
            consumer_offsets::last_ce_id.eq(&position.last_ce_id),
            consumer_offsets::last_record_time.eq(position.last_record_time),
        ))
        .on_conflict((consumer_offsets::topic, consumer_offsets::partition_id))
        .do_update()
        .set((
            consumer_offsets::next_offset.eq(excluded(consumer_offsets::next_offset)),
            consumer_offsets::last_ce_id.eq(excluded(consumer_offsets::last_ce_id)),
            consumer_offsets::last_record_time.eq(excluded(consumer_offsets::last_record_time)),
            consumer_offsets::updated_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    Ok(())
}
