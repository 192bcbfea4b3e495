//! A log that changed under a consumer: its stored position is past the
//! log's end, or retention deleted records it had not read, or the log was
//! recreated. Nothing is skipped or read again unnoticed: every rewind and
//! every loss is logged as an error and counted.
//!
//! A position past the end does not by itself mean the log was recreated:
//! a broker that is behind (a replica that lost its tail and caught up, for
//! example) comes back. The consumer rewinds only on evidence, taken from
//! what it stored with the position (the last record's `ce_id` and time):
//! - a record in the log newer than the last one read, at a lower offset:
//!   offsets and time only grow in one log, so this is a new log;
//! - the record just before the position carrying another `ce_id`.
//!
//! Without evidence it waits, and says so in the log.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rskafka::client::error::{Error as RsKafkaError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient};
use tokio::time::Instant;

use super::offsets::StoredPosition;
use super::unreadable::is_unreadable;
use super::{Consumer, EventHandler};

/// The largest fetch made to look at a log's newest records.
const PROBE_MAX_BYTES: i32 = 256 * 1024;
/// How much newer than the last record read a record must be to prove a new
/// log: producers' clocks differ a little.
const CLOCK_SKEW_MARGIN: chrono::TimeDelta = chrono::TimeDelta::seconds(10);
/// How often a consumer whose position is past the log's end says so.
const BEHIND_REPORT_INTERVAL: Duration = Duration::from_secs(30);

/// What a partition's consumer remembers about the log between fetches.
#[derive(Debug, Default)]
pub(super) struct LogWatch {
    /// Set after a gap in what the consumer saw of the log: the record
    /// before its position is checked before it reads on.
    pub verify_before_reading: bool,
    behind_reported: Option<Instant>,
}

impl LogWatch {
    /// Logs, at most every `BEHIND_REPORT_INTERVAL`, that the position is
    /// past the log's end.
    pub fn report_behind(&mut self, topic: &str, partition: i32, offset: i64, high_watermark: i64) {
        if self
            .behind_reported
            .is_some_and(|at| at.elapsed() < BEHIND_REPORT_INTERVAL)
        {
            return;
        }
        self.behind_reported = Some(Instant::now());
        tracing::error!(
            %topic, partition, offset, high_watermark,
            "the stored position is past the end of the log; waiting for the log to catch up \
             (if the topic was recreated on purpose, delete the partition's row in consumer_offsets)"
        );
    }
}

/// Where an offset the broker refuses lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OutOfRange {
    /// Below the log's start: retention deleted records not read yet.
    Retention { earliest: i64 },
    /// Past the log's end.
    PastEnd { high_watermark: i64 },
}

/// What the log says about a stored position it does not reach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PastEnd {
    /// The log was recreated: resume from its earliest record.
    Recreated { earliest: i64, evidence: String },
    /// No evidence: the log may be catching up.
    Behind,
}

impl<H: EventHandler> Consumer<H> {
    /// Judges a position past the log's end (`high_watermark`).
    pub(super) async fn judge_past_end(
        &self,
        client: &PartitionClient,
        position: &StoredPosition,
        high_watermark: i64,
    ) -> Result<PastEnd, RsKafkaError> {
        let earliest = client.get_offset(OffsetAt::Earliest).await?;
        let Some(last_read) = position.last_record_time else {
            return Ok(PastEnd::Behind);
        };
        if high_watermark <= earliest {
            return Ok(PastEnd::Behind);
        }
        // The newest records; from the earliest when the broker cannot start
        // inside a batch (tansu's memory engine answers nothing there).
        let mut newest = client
            .fetch_records(high_watermark - 1, 1..PROBE_MAX_BYTES, 0)
            .await?
            .0;
        if newest.is_empty() {
            newest = client
                .fetch_records(earliest, 1..PROBE_MAX_BYTES, 0)
                .await?
                .0;
        }
        let newer = newest.iter().find(|record| {
            record.offset < position.next_offset
                && record.record.timestamp > last_read + CLOCK_SKEW_MARGIN
        });
        Ok(match newer {
            Some(record) => PastEnd::Recreated {
                earliest,
                evidence: format!(
                    "the record at offset {} is from {}, after the last one read ({last_read})",
                    record.offset, record.record.timestamp
                ),
            },
            None => PastEnd::Behind,
        })
    }

    /// Checks, before resuming at `position`, that the record just before it
    /// is the one the position was stored after. Returns the earliest offset
    /// when it is not (the log was recreated and has grown past us).
    pub(super) async fn recreated_below(
        &self,
        client: &PartitionClient,
        position: &StoredPosition,
    ) -> Result<Option<(i64, String)>, RsKafkaError> {
        let Some(expected) = &position.last_ce_id else {
            return Ok(None);
        };
        if position.next_offset == 0 {
            return Ok(None);
        }
        let before = position.next_offset - 1;
        // As little as the broker allows, so that an unreadable record after
        // the one we look for cannot fail the look.
        let (records, high_watermark) = match client.fetch_records(before, 1..2, 0).await {
            Ok(fetched) => fetched,
            // Outside the log: the fetch loop judges that.
            Err(RsKafkaError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            }) => return Ok(None),
            // Nothing to compare: the fetch loop deals with what it cannot
            // read.
            Err(err) if is_unreadable(&err) => return Ok(None),
            Err(err) => return Err(err),
        };
        if high_watermark < position.next_offset {
            // Past the end: the fetch loop judges that.
            return Ok(None);
        }
        let Some(record) = records.iter().find(|record| record.offset == before) else {
            return Ok(None);
        };
        let found = record
            .record
            .headers
            .get("ce_id")
            .map(|id| String::from_utf8_lossy(id).into_owned());
        if found.as_ref() == Some(expected) {
            return Ok(None);
        }
        let earliest = client.get_offset(OffsetAt::Earliest).await?;
        Ok(Some((
            earliest,
            format!("the record at offset {before} has ce_id {found:?}, not {expected:?}"),
        )))
    }

    /// Tells retention from a position past the end, for an offset the
    /// broker refused as out of range; logs and counts records lost to
    /// retention.
    pub(super) async fn out_of_range(
        &self,
        client: &PartitionClient,
        offset: i64,
    ) -> Result<OutOfRange, RsKafkaError> {
        let earliest = client.get_offset(OffsetAt::Earliest).await?;
        if earliest > offset {
            self.lost_to_retention(client.topic(), client.partition(), offset, earliest);
            return Ok(OutOfRange::Retention { earliest });
        }
        let high_watermark = client.get_offset(OffsetAt::Latest).await?;
        Ok(OutOfRange::PastEnd { high_watermark })
    }

    /// Counts and logs a rewind to `earliest`.
    pub(super) fn rewound(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        earliest: i64,
        evidence: &str,
    ) {
        self.stats.rewinds.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            %topic, partition, from, to = earliest, %evidence,
            "the log was recreated: reading it again from its earliest record"
        );
    }

    /// Counts and logs records lost to retention before they were read.
    fn lost_to_retention(&self, topic: &str, partition: i32, from: i64, earliest: i64) {
        let lost = (earliest - from).max(0) as u64;
        self.stats
            .lost_to_retention
            .fetch_add(lost, Ordering::Relaxed);
        tracing::error!(
            %topic, partition, from, to = earliest, lost,
            "records were deleted by retention before they were read: skipping to the earliest record"
        );
    }
}
