//! One batch's unit of work: apply its records, write the outbox rows they
//! cause and the partition's next offset, in one transaction; and when the
//! database refuses the batch for a record's data, find that record.

use std::panic::AssertUnwindSafe;

use diesel::QueryResult;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures::FutureExt;

use super::after_commit;
use super::dead_letter::dead_letter;
use super::offsets::{Fence, StoredPosition, store_position};
use super::{EventHandler, InboundRecord, Rejection};
use crate::db::{DbError, DbPool};
use crate::outbox::{self, OutboxMessage};

/// Why a batch did not commit.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// The partition's lease is no longer held under the batch's epoch:
    /// nothing was written, and the partition belongs to someone else.
    #[error("the partition's lease was lost (epoch {epoch})")]
    LeaseLost { epoch: i64 },
}

/// A batch transaction's failure: the database's, or the fence's.
#[derive(Debug)]
enum TxError {
    Query(diesel::result::Error),
    LeaseLost,
}

impl From<diesel::result::Error> for TxError {
    fn from(err: diesel::result::Error) -> Self {
        Self::Query(err)
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
/// rows they cause plus a dead letter per poison record, and stores the
/// position `at` names, all in one transaction, which commits only while
/// its fence still holds the partition's lease. (The consumer
/// loop's unit of work; the benchmark's PostgreSQL ceiling runs it too.)
///
/// When the database refuses the batch with a data error (see `DbFailure`),
/// or with an error it does not name for the `UNCLASSIFIED_FAILURES`-th time
/// (`earlier_failures` counts the batch's earlier such failures), the
/// batch is applied again record by record, each in a savepoint, and the
/// records refused on their own are dead-lettered with the reason, so one
/// bad record never blocks its partition.
///
/// What the handler queued with `after_commit` runs once the transaction
/// commits, and not at all when it fails.
pub async fn commit_records<H: EventHandler>(
    pool: &DbPool,
    handler: &H,
    at: &Position<'_>,
    batch: &[InboundRecord],
    earlier_failures: u32,
) -> Result<BatchOutcome, CommitError> {
    after_commit::run_after(apply_and_commit(pool, handler, at, batch, earlier_failures)).await
}

async fn apply_and_commit<H: EventHandler>(
    pool: &DbPool,
    handler: &H,
    at: &Position<'_>,
    batch: &[InboundRecord],
    earlier_failures: u32,
) -> Result<BatchOutcome, CommitError> {
    let (topic, partition) = (at.topic, at.partition);
    let mut conn = pool.get().await.map_err(DbError::from)?;
    let together = apply_together(&mut conn, handler, at, batch).await;
    let isolate = |failure| match failure {
        DbFailure::Data => true,
        DbFailure::Unclassified => earlier_failures + 1 >= UNCLASSIFIED_FAILURES,
        DbFailure::Transient => false,
    };
    let lost = || CommitError::LeaseLost {
        epoch: at.fence.epoch,
    };
    match together {
        Ok(outcome) => Ok(outcome),
        Err(TxError::LeaseLost) => Err(lost()),
        Err(TxError::Query(err)) if isolate(DbFailure::of(&err)) => {
            // What the rolled-back attempt queued is undone with it.
            after_commit::roll_back_to(0);
            tracing::warn!(
                %topic, partition, offset = batch.first().map(|r| r.offset), error = %err,
                "the database refused a batch, applying its records one by one"
            );
            match apply_one_by_one(&mut conn, handler, at, batch).await {
                Ok(outcome) => Ok(outcome),
                Err(TxError::LeaseLost) => Err(lost()),
                Err(TxError::Query(err)) => Err(DbError::from(err).into()),
            }
        }
        Err(TxError::Query(err)) => Err(DbError::from(err).into()),
    }
}

/// Where a batch's transaction writes the partition's next position, and
/// the lease it must hold to do so.
#[derive(Debug, Clone, Copy)]
pub struct Position<'a> {
    pub topic: &'a str,
    pub partition: i32,
    /// The offset after the batch.
    pub new_offset: i64,
    pub fence: &'a Fence,
}

impl Position<'_> {
    /// Stores the position after `batch`, last in its transaction, or fails
    /// the transaction when the lease is lost.
    async fn store(
        &self,
        conn: &mut AsyncPgConnection,
        batch: &[InboundRecord],
    ) -> Result<(), TxError> {
        let position = position_after(batch, self.new_offset);
        if store_position(conn, self.topic, self.partition, &position, self.fence).await? {
            Ok(())
        } else {
            Err(TxError::LeaseLost)
        }
    }
}

/// How many times in a row a batch must fail with an error the database does
/// not name before its records are tried one by one. A lock timeout, a
/// deadlock or a brief resource shortage passes within these retries.
const UNCLASSIFIED_FAILURES: u32 = 3;

/// The whole batch in one transaction, its events in one `apply`.
async fn apply_together<H: EventHandler>(
    conn: &mut AsyncPgConnection,
    handler: &H,
    at: &Position<'_>,
    batch: &[InboundRecord],
) -> Result<BatchOutcome, TxError> {
    let mut outbox_messages = Vec::new();
    let mut events = Vec::with_capacity(batch.len());
    for record in batch {
        match decode(handler, record) {
            Ok(event) => events.push(event),
            Err(rejection) => outbox_messages.push(dead_letter(record, &rejection)),
        }
    }
    let dead_letters = outbox_messages.len() as u64;
    let applied = events.len() as u64;
    let wrote_outbox = conn
        .transaction::<_, TxError, _>(async |conn| {
            outbox_messages.extend(apply_guarded(handler, conn, events).await?);
            outbox::enqueue(conn, &outbox_messages).await?;
            at.store(conn, batch).await?;
            Ok(!outbox_messages.is_empty())
        })
        .await?;
    Ok(BatchOutcome {
        applied,
        dead_letters,
        wrote_outbox,
    })
}

/// The batch in one transaction, each record's events applied in a
/// savepoint of its own. A record the database refuses is dead-lettered; a
/// transient failure rolls everything back, to be retried whole.
async fn apply_one_by_one<H: EventHandler>(
    conn: &mut AsyncPgConnection,
    handler: &H,
    at: &Position<'_>,
    batch: &[InboundRecord],
) -> Result<BatchOutcome, TxError> {
    conn.transaction::<_, TxError, _>(async |conn| {
        let mut outcome = BatchOutcome {
            applied: 0,
            dead_letters: 0,
            wrote_outbox: false,
        };
        let mut outbox_messages = Vec::new();
        for record in batch {
            match apply_alone(conn, handler, record).await? {
                Ok(messages) => {
                    outbox_messages.extend(messages);
                    outcome.applied += 1;
                }
                Err(rejection) => {
                    outbox_messages.push(dead_letter(record, &rejection));
                    outcome.dead_letters += 1;
                }
            }
        }
        outbox::enqueue(conn, &outbox_messages).await?;
        // The offset is written last: if the server itself is failing (a
        // full disk refuses every write), this fails too and the whole batch
        // is retried instead of being dead-lettered.
        at.store(conn, batch).await?;
        outcome.wrote_outbox = !outbox_messages.is_empty();
        Ok(outcome)
    })
    .await
}

/// Applies one record in a savepoint. `Ok(Err(_))` is a permanent refusal:
/// the record is poison, or the database refuses it with a data error, or
/// with an error of no known class that happens again on a second try (a
/// deadlock or a lock timeout does not repeat for a record applied alone).
async fn apply_alone<H: EventHandler>(
    conn: &mut AsyncPgConnection,
    handler: &H,
    record: &InboundRecord,
) -> QueryResult<Result<Vec<OutboxMessage>, Rejection>> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let event = match decode(handler, record) {
            Ok(event) => event,
            Err(rejection) => return Ok(Err(rejection)),
        };
        let savepoint = after_commit::mark();
        let applied = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                apply_guarded(handler, conn, vec![event]).await
            })
            .await;
        let err = match applied {
            Ok(messages) => return Ok(Ok(messages)),
            Err(err) => err,
        };
        after_commit::roll_back_to(savepoint);
        match DbFailure::of(&err) {
            DbFailure::Transient => return Err(err),
            DbFailure::Unclassified if attempt == 1 => continue,
            DbFailure::Data | DbFailure::Unclassified => {
                let rejection = Rejection(format!("the record could not be applied: {err}"));
                tracing::error!(
                    topic = %record.topic, partition = record.partition, offset = record.offset,
                    reason = %rejection, "record that cannot be applied sent to the dead-letter topic"
                );
                return Ok(Err(rejection));
            }
        }
    }
}

/// The position to store after `batch`: `new_offset`, with what the batch's
/// last record says when it is the record just before it.
fn position_after(batch: &[InboundRecord], new_offset: i64) -> StoredPosition {
    batch
        .last()
        .map(StoredPosition::after)
        .filter(|position| position.next_offset == new_offset)
        .unwrap_or_else(|| StoredPosition::at(new_offset))
}

/// Applies events with `handler`, turning a panic of the handler into an
/// unclassified error of the batch: a bug that panics on one record every
/// time is isolated and dead-lettered like a record the database refuses,
/// instead of killing the partition's task again and again, while one that
/// panics once is retried like any unclassified failure.
async fn apply_guarded<H: EventHandler>(
    handler: &H,
    conn: &mut AsyncPgConnection,
    events: Vec<H::Event>,
) -> QueryResult<Vec<OutboxMessage>> {
    match AssertUnwindSafe(handler.apply(conn, events))
        .catch_unwind()
        .await
    {
        Ok(applied) => applied,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            Err(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::Unknown,
                Box::new(format!("the handler panicked: {what}")),
            ))
        }
    }
}

/// Decodes a record, logging a poison one.
fn decode<H: EventHandler>(handler: &H, record: &InboundRecord) -> Result<H::Event, Rejection> {
    handler.decode(record).inspect_err(|rejection| {
        tracing::error!(
            topic = %record.topic, partition = record.partition, offset = record.offset,
            reason = %rejection, "poison record sent to the dead-letter topic"
        );
    })
}

/// What a database error says about retrying.
///
/// PostgreSQL's SQLSTATE classes 22 (data exception), 23 (integrity
/// violation) and 54 (program limit, such as an index row too large) are
/// permanent for the record that caused them. diesel-async names class 23
/// through `DatabaseErrorKind` but reports every other SQLSTATE as
/// `Unknown` without the code, so those are `Unclassified`: a record whose
/// apply fails that way twice in a row, alone, is treated as a data error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFailure {
    /// The connection or the server failed: retry the same work later.
    Transient,
    /// The data broke a rule of the database: retrying cannot help.
    Data,
    /// The database refused the statement for a reason we cannot name.
    Unclassified,
}

impl DbFailure {
    pub fn of(err: &diesel::result::Error) -> Self {
        use diesel::result::DatabaseErrorKind as Kind;
        use diesel::result::Error;
        match err {
            Error::DatabaseError(kind, _) => match kind {
                Kind::UniqueViolation
                | Kind::ForeignKeyViolation
                | Kind::RestrictViolation
                | Kind::NotNullViolation
                | Kind::CheckViolation
                | Kind::ExclusionViolation => Self::Data,
                Kind::UnableToSendCommand
                | Kind::ClosedConnection
                | Kind::SerializationFailure
                | Kind::ReadOnlyTransaction => Self::Transient,
                _ => Self::Unclassified,
            },
            // A value diesel cannot encode is as permanent as one the
            // server refuses.
            Error::SerializationError(_) | Error::QueryBuilderError(_) => Self::Data,
            _ => Self::Transient,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_errors_are_permanent_and_connection_errors_transient() {
        use diesel::result::{DatabaseErrorKind as Kind, Error};
        let db = |kind| Error::DatabaseError(kind, Box::new(String::from("refused")));
        assert_eq!(DbFailure::of(&db(Kind::UniqueViolation)), DbFailure::Data);
        assert_eq!(DbFailure::of(&db(Kind::CheckViolation)), DbFailure::Data);
        assert_eq!(
            DbFailure::of(&db(Kind::ClosedConnection)),
            DbFailure::Transient
        );
        assert_eq!(
            DbFailure::of(&db(Kind::SerializationFailure)),
            DbFailure::Transient
        );
        assert_eq!(DbFailure::of(&db(Kind::Unknown)), DbFailure::Unclassified);
        assert_eq!(DbFailure::of(&Error::NotFound), DbFailure::Transient);
    }
}
