//! Records the client cannot read: rskafka fails a whole fetch when one
//! record in the answer does not parse (a header name that is not UTF-8, for
//! example), and asking again gets the same bytes. After a bounded number
//! of such failures at one offset, exactly that offset is skipped, with a
//! dead letter that names it, so the partition never stalls for good.

use std::sync::atomic::Ordering;
use std::time::Duration;

use diesel_async::AsyncConnection;
use rskafka::client::error::Error as RsKafkaError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::dead_letter::skipped_record;
use super::offsets::{Fence, StoredPosition, store_position};
use super::{Consumer, EventHandler, pause};
use crate::db::DbError;
use crate::outbox;
use crate::retry::Backoff;

/// How many fetches at one offset may fail because the client cannot read
/// the answer before that offset is skipped...
pub const MAX_UNREADABLE_FETCHES: u32 = 5;
/// ...and for how long at least, so that a passing fault is never taken for
/// an unreadable record.
pub const MIN_UNREADABLE_SPAN: Duration = Duration::from_secs(5);

/// Consecutive fetches at one offset of a partition whose answer the
/// client could not read, and the last error.
#[derive(Debug)]
pub(super) struct UnreadableFetches {
    topic: String,
    partition: i32,
    offset: i64,
    failures: u32,
    first_failure: Instant,
    backoff: Backoff,
    pub(super) error: String,
}

impl UnreadableFetches {
    pub(super) fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: topic.to_owned(),
            partition,
            offset: -1,
            failures: 0,
            first_failure: Instant::now(),
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(2)),
            error: String::new(),
        }
    }

    pub(super) fn failures_at(&self, offset: i64) -> u32 {
        if self.offset == offset {
            self.failures
        } else {
            0
        }
    }

    /// Waits before the next look at a failing offset, without counting.
    pub(super) async fn wait(&mut self, shutdown: &CancellationToken) {
        pause(&mut self.backoff, shutdown).await;
    }

    /// Counts one more failure at `offset`; returns whether the record
    /// there has now failed often enough, for long enough, to be skipped.
    fn record(&mut self, offset: i64, error: String) -> bool {
        if self.failures_at(offset) == 0 {
            self.first_failure = Instant::now();
            self.backoff.reset();
        }
        self.failures = self.failures_at(offset) + 1;
        self.offset = offset;
        self.error = error;
        self.failures >= MAX_UNREADABLE_FETCHES
            && self.first_failure.elapsed() >= MIN_UNREADABLE_SPAN
    }
}

/// Whether the broker answered but the client cannot parse the answer (for
/// example a header name that is not UTF-8): asking again gets the same
/// bytes. Connection, metadata and server errors are not this (rskafka's
/// `InvalidResponse` also covers a partition leader missing from metadata,
/// which passes).
pub(super) fn is_unreadable(err: &RsKafkaError) -> bool {
    use rskafka::client::error::RequestError;
    matches!(
        err,
        RsKafkaError::Request(
            RequestError::ReadError(_)
                | RequestError::ReadVersionedError(_)
                | RequestError::TooMuchData { .. }
        )
    )
}

impl<H: EventHandler> Consumer<H> {
    /// Counts a fetch at `offset` that the client could not read, and after
    /// `MAX_UNREADABLE_FETCHES` of them skips that one record: stores
    /// `offset + 1` with a dead letter that says what was skipped and why.
    /// Returns whether the skip committed.
    pub(super) async fn unreadable_at(
        &self,
        unreadable: &mut UnreadableFetches,
        offset: i64,
        error: String,
        fence: &Fence,
        shutdown: &CancellationToken,
    ) -> bool {
        let (topic, partition) = (unreadable.topic.clone(), unreadable.partition);
        if !unreadable.record(offset, error) {
            tracing::warn!(
                %topic, partition, offset, failures = unreadable.failures, error = %unreadable.error,
                "cannot read the fetched records"
            );
            pause(&mut unreadable.backoff, shutdown).await;
            return false;
        }
        let letter = skipped_record(&topic, partition, offset, &unreadable.error);
        let stored = async {
            let mut conn = self.pool.get().await?;
            conn.transaction::<_, diesel::result::Error, _>(async |conn| {
                outbox::enqueue(conn, std::slice::from_ref(&letter)).await?;
                // Under a lost lease, nothing: the next owner skips it.
                if store_position(
                    conn,
                    &topic,
                    partition,
                    &StoredPosition::at(offset + 1),
                    fence,
                )
                .await?
                {
                    Ok(())
                } else {
                    Err(diesel::result::Error::RollbackTransaction)
                }
            })
            .await?;
            Ok::<_, DbError>(())
        };
        match stored.await {
            Ok(()) => {
                tracing::error!(
                    %topic, partition, offset, error = %unreadable.error,
                    "skipped a record the client cannot read; its dead letter names it"
                );
                self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                super::metrics::dead_lettered(&topic, 1);
                self.relay_wakeup.notify_one();
                true
            }
            Err(err) => {
                tracing::warn!(%topic, partition, offset, error = %err, "cannot record the skip, retrying");
                pause(&mut unreadable.backoff, shutdown).await;
                false
            }
        }
    }
}
