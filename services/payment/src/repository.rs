//! Reads and writes of the `payments` table.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::schema::payments;

pub const STATUS_COMPLETED: &str = "COMPLETED";
pub const STATUS_DECLINED: &str = "DECLINED";

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = payments)]
pub struct NewPayment {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    pub customer_id: String,
    pub amount_minor: i64,
    pub currency_code: String,
    pub status: &'static str,
    pub decline_reason: Option<String>,
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
    pub create_time: DateTime<Utc>,
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
/// statement; returns the ids of the payments it recorded.
pub async fn insert_new(
    conn: &mut AsyncPgConnection,
    new_payments: &[NewPayment],
) -> QueryResult<HashSet<Uuid>> {
    let mut inserted = HashSet::with_capacity(new_payments.len());
    for chunk in new_payments.chunks(INSERT_CHUNK) {
        let ids: Vec<Uuid> = diesel::insert_into(payments::table)
            .values(chunk)
            .on_conflict(payments::order_id)
            .do_nothing()
            .returning(payments::payment_id)
            .get_results(conn)
            .await?;
        inserted.extend(ids);
    }
    Ok(inserted)
}
