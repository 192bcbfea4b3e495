//! Reads and writes of the `payments` table.

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

/// Records the payment unless the order already has one; returns whether
/// it was new.
pub async fn insert_if_new(
    conn: &mut AsyncPgConnection,
    payment: &NewPayment,
) -> QueryResult<bool> {
    let inserted = diesel::insert_into(payments::table)
        .values(payment)
        .on_conflict(payments::order_id)
        .do_nothing()
        .execute(conn)
        .await?;
    Ok(inserted == 1)
}
