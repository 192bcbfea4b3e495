//! Writes of the `payments` table.

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
