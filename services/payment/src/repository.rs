//! Reads and writes of the `payments` table.
//!
//! A payment is inserted PENDING, once per order, and leaves PENDING once,
//! for COMPLETED or DECLINED: every settling write is conditional on the
//! row still being PENDING, so only one of several settlers records it.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::schema::payments;

/// Payments this instance settles: those it recorded (`settler` defaults to
/// the connection's `oms.instance_id`), those of instances that are no
/// longer members (see `oms_common::membership`), and those nobody owns.
/// With several payment instances, a payment whose provider call is in
/// flight is therefore never asked about by another live instance.
fn settled_here() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql(
        "(settler IS NULL \
          OR settler = current_setting('oms.instance_id', true) \
          OR NOT EXISTS (SELECT 1 FROM members m \
                         WHERE m.instance_id = payments.settler AND m.expires_at > now()))",
    )
}

/// This connection's instance, to adopt a payment.
fn this_instance()
-> diesel::expression::SqlLiteral<diesel::sql_types::Nullable<diesel::sql_types::Text>> {
    diesel::dsl::sql("NULLIF(current_setting('oms.instance_id', true), '')")
}

pub const STATUS_PENDING: &str = "PENDING";
pub const STATUS_COMPLETED: &str = "COMPLETED";
pub const STATUS_DECLINED: &str = "DECLINED";

/// A payment as first recorded: PENDING, before the provider is asked.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = payments)]
pub struct NewPayment {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount_minor: i64,
    pub currency_code: String,
    pub status: &'static str,
    /// The trace the payment continues (see the migration).
    pub trace_parent: Option<String>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = payments)]
pub struct PaymentRow {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount_minor: i64,
    pub currency_code: String,
    pub status: String,
    pub decline_reason: Option<String>,
    /// Provider calls made (each counted just before it is made).
    pub attempts: i32,
    pub create_time: DateTime<Utc>,
    pub trace_parent: Option<String>,
}

/// The order's payment, if it has one.
pub async fn find_by_order(
    conn: &mut AsyncPgConnection,
    order_id: Uuid,
) -> QueryResult<Option<PaymentRow>> {
    payments::table
        .filter(payments::order_id.eq(order_id))
        .select(PaymentRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Rows per multi-row INSERT, well inside PostgreSQL's 65,535 bind
/// parameters per statement.
const INSERT_CHUNK: usize = 1_000;

/// Records the payments of orders that have none yet, a thousand rows per
/// statement; returns how many it recorded. An order's first payment id
/// stays its payment id.
pub async fn insert_new(
    conn: &mut AsyncPgConnection,
    new_payments: &[NewPayment],
) -> QueryResult<usize> {
    let mut inserted = 0;
    for chunk in new_payments.chunks(INSERT_CHUNK) {
        inserted += diesel::insert_into(payments::table)
            .values(chunk)
            .on_conflict(payments::order_id)
            .do_nothing()
            .execute(conn)
            .await?;
    }
    Ok(inserted)
}

/// Claims the next provider call of the oldest `limit` pending payments,
/// except those of `skip`, that have had fewer than `max_unanswered` calls
/// go unanswered: one statement counts the call (so `attempts` is the real
/// number of calls) and returns the rows as they are now.
pub async fn claim_calls(
    conn: &mut AsyncPgConnection,
    skip: &[Uuid],
    limit: i64,
    max_unanswered: i32,
) -> QueryResult<Vec<PaymentRow>> {
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        let oldest: Vec<Uuid> = payments::table
            .filter(payments::status.eq(STATUS_PENDING))
            .filter(payments::unanswered.lt(max_unanswered))
            .filter(payments::order_id.ne_all(skip))
            .filter(settled_here())
            .order(payments::create_time)
            .limit(limit)
            .select(payments::order_id)
            // Two claims running at once never take the same payment, and
            // the claim makes the payment this instance's to settle.
            .for_update()
            .skip_locked()
            .load(conn)
            .await?;
        if oldest.is_empty() {
            return Ok(Vec::new());
        }
        diesel::update(payments::table.filter(payments::order_id.eq_any(&oldest)))
            .set((
                payments::attempts.eq(payments::attempts + 1),
                payments::update_time.eq(diesel::dsl::now),
                payments::settler.eq(this_instance()),
            ))
            .returning(PaymentRow::as_returning())
            .get_results(conn)
            .await
    })
    .await
}

/// Pending payments, except those of `skip`, that have had
/// `max_unanswered` calls go unanswered: to be declined.
pub async fn out_of_calls(
    conn: &mut AsyncPgConnection,
    skip: &[Uuid],
    limit: i64,
    max_unanswered: i32,
) -> QueryResult<Vec<PaymentRow>> {
    payments::table
        .filter(payments::status.eq(STATUS_PENDING))
        .filter(payments::unanswered.ge(max_unanswered))
        .filter(payments::order_id.ne_all(skip))
        .filter(settled_here())
        .limit(limit)
        .select(PaymentRow::as_select())
        .load(conn)
        .await
}

/// What a payment's calls came to after one more went unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterUnanswered {
    /// Fewer than `max_unanswered` went unanswered: the provider may be
    /// asked again.
    CallAgain,
    /// `max_unanswered` calls went unanswered: the payment is to be declined.
    OutOfCalls,
    /// The payment was settled meanwhile.
    Settled,
}

/// Counts a call that timed out or failed. Calls cut off by a stop or a
/// crash are counted in `attempts` but never here, so only the provider's
/// silence can decline a payment.
pub async fn count_unanswered(
    conn: &mut AsyncPgConnection,
    order_id: Uuid,
    max_unanswered: i32,
) -> QueryResult<AfterUnanswered> {
    let unanswered: Option<i32> = diesel::update(
        payments::table
            .filter(payments::order_id.eq(order_id))
            .filter(payments::status.eq(STATUS_PENDING)),
    )
    .set((
        payments::unanswered.eq(payments::unanswered + 1),
        payments::update_time.eq(diesel::dsl::now),
    ))
    .returning(payments::unanswered)
    .get_result(conn)
    .await
    .optional()?;
    Ok(match unanswered {
        None => AfterUnanswered::Settled,
        Some(unanswered) if unanswered >= max_unanswered => AfterUnanswered::OutOfCalls,
        Some(_) => AfterUnanswered::CallAgain,
    })
}

/// Counts a provider call about to be made, while the payment is pending and
/// fewer than `max_unanswered` calls went unanswered; returns the calls
/// counted so far, or `None` when no call may be made (settled meanwhile,
/// or out of calls). Counting before calling makes `attempts` the real
/// number of calls.
pub async fn count_call(
    conn: &mut AsyncPgConnection,
    order_id: Uuid,
    max_unanswered: i32,
) -> QueryResult<Option<i32>> {
    diesel::update(
        payments::table
            .filter(payments::order_id.eq(order_id))
            .filter(payments::status.eq(STATUS_PENDING))
            .filter(payments::unanswered.lt(max_unanswered)),
    )
    .set((
        payments::attempts.eq(payments::attempts + 1),
        payments::update_time.eq(diesel::dsl::now),
    ))
    .returning(payments::attempts)
    .get_result(conn)
    .await
    .optional()
}

/// Moves a pending payment to `status` (COMPLETED, or DECLINED with a
/// reason); returns the settled row, or `None` when it was not pending any
/// more.
pub async fn settle(
    conn: &mut AsyncPgConnection,
    order_id: Uuid,
    status: &'static str,
    decline_reason: Option<&str>,
) -> QueryResult<Option<PaymentRow>> {
    diesel::update(
        payments::table
            .filter(payments::order_id.eq(order_id))
            .filter(payments::status.eq(STATUS_PENDING)),
    )
    .set((
        payments::status.eq(status),
        payments::decline_reason.eq(decline_reason),
        payments::update_time.eq(diesel::dsl::now),
    ))
    .returning(PaymentRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}
