//! Reads and writes of the `orders` table.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use oms_api::money;
use oms_api::orders::v1::{Order, OrderStatus};
use oms_api::time::to_timestamp;

use crate::pagination::Position;
use crate::schema::orders;

pub const STATUS_AWAITING_PAYMENT: &str = "AWAITING_PAYMENT";
pub const STATUS_PAID: &str = "PAID";
pub const STATUS_CANCELLED: &str = "CANCELLED";

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = orders)]
pub struct NewOrder {
    pub order_id: Uuid,
    pub customer_id: String,
    pub product_id: String,
    pub quantity: i32,
    pub amount_minor: i64,
    pub currency_code: String,
    pub request_id: Option<String>,
    pub status: &'static str,
    pub create_time: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = orders)]
pub struct OrderRow {
    pub order_id: Uuid,
    pub customer_id: String,
    pub product_id: String,
    pub quantity: i32,
    pub amount_minor: i64,
    pub currency_code: String,
    pub status: String,
    pub payment_id: Option<Uuid>,
    pub create_time: DateTime<Utc>,
    pub update_time: DateTime<Utc>,
    pub failure_reason: Option<String>,
    pub version: i32,
}

impl OrderRow {
    /// Whether the order has reached the end of its life.
    pub fn is_terminal(&self) -> bool {
        matches!(self.status.as_str(), STATUS_PAID | STATUS_CANCELLED)
    }

    /// The order as the public API shows it.
    pub fn into_proto(self) -> Order {
        let status = match self.status.as_str() {
            STATUS_AWAITING_PAYMENT => OrderStatus::AwaitingPayment,
            STATUS_PAID => OrderStatus::Paid,
            STATUS_CANCELLED => OrderStatus::Cancelled,
            _ => OrderStatus::Unspecified,
        };
        Order {
            order_id: self.order_id.to_string(),
            customer_id: self.customer_id,
            product_id: self.product_id,
            quantity: self.quantity,
            amount: Some(money::from_minor_units(
                &self.currency_code,
                self.amount_minor,
            )),
            status: status as i32,
            create_time: Some(to_timestamp(self.create_time)),
            update_time: Some(to_timestamp(self.update_time)),
            payment_id: self.payment_id.map(|id| id.to_string()).unwrap_or_default(),
            failure_reason: self.failure_reason.unwrap_or_default(),
        }
    }
}

/// Rows per multi-row INSERT: PostgreSQL allows 65,535 bind parameters
/// per statement, and an order has nine.
const INSERT_CHUNK: usize = 1_000;

/// Inserts the orders that do not exist yet, a thousand rows per statement;
/// returns the ids of those it inserted.
pub async fn insert_new(
    conn: &mut AsyncPgConnection,
    new_orders: &[NewOrder],
) -> QueryResult<HashSet<Uuid>> {
    let mut inserted = HashSet::with_capacity(new_orders.len());
    for chunk in new_orders.chunks(INSERT_CHUNK) {
        let ids: Vec<Uuid> = diesel::insert_into(orders::table)
            .values(chunk)
            .on_conflict(orders::order_id)
            .do_nothing()
            .returning(orders::order_id)
            .get_results(conn)
            .await?;
        inserted.extend(ids);
    }
    Ok(inserted)
}

#[derive(QueryableByName)]
struct Changed {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    order_id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    create_time: DateTime<Utc>,
}

/// Marks the orders of `(order_id, payment_id)` pairs that await payment
/// as paid, bumping version and update time, in one statement; returns
/// the ids it changed, each with its order's create time. Only
/// AWAITING_PAYMENT may move, as in `settle`.
pub async fn mark_all_paid(
    conn: &mut AsyncPgConnection,
    paid: &[(Uuid, Uuid)],
) -> QueryResult<HashMap<Uuid, DateTime<Utc>>> {
    use diesel::sql_types::{Array, Uuid as SqlUuid};
    let (order_ids, payment_ids): (Vec<Uuid>, Vec<Uuid>) = paid.iter().copied().unzip();
    let changed: Vec<Changed> = diesel::sql_query(
        "UPDATE orders SET status = 'PAID', payment_id = paid.payment_id, \
         version = orders.version + 1, update_time = now() \
         FROM unnest($1::uuid[], $2::uuid[]) AS paid(order_id, payment_id) \
         WHERE orders.order_id = paid.order_id AND orders.status = 'AWAITING_PAYMENT' \
         RETURNING orders.order_id, orders.create_time",
    )
    .bind::<Array<SqlUuid>, _>(&order_ids)
    .bind::<Array<SqlUuid>, _>(&payment_ids)
    .load(conn)
    .await?;
    Ok(changed
        .into_iter()
        .map(|row| (row.order_id, row.create_time))
        .collect())
}

/// Cancels an order that awaits payment; returns its create time if it
/// changed.
pub async fn mark_cancelled(
    conn: &mut AsyncPgConnection,
    order_id: Uuid,
    reason: &str,
) -> QueryResult<Option<DateTime<Utc>>> {
    settle(
        conn,
        order_id,
        (
            orders::status.eq(STATUS_CANCELLED),
            orders::failure_reason.eq(Some(reason)),
        ),
    )
    .await
}

/// Moves an order out of AWAITING_PAYMENT with `changes`, bumping its
/// version and update time, and returns its create time if it moved. Only
/// that state may move, so a repeated, late or contradictory event finds
/// nothing to change.
async fn settle<C>(
    conn: &mut AsyncPgConnection,
    order_id: Uuid,
    changes: C,
) -> QueryResult<Option<DateTime<Utc>>>
where
    C: diesel::AsChangeset<Target = orders::table>,
    C::Changeset: diesel::query_builder::QueryFragment<diesel::pg::Pg> + Send,
{
    let updated = diesel::update(
        orders::table
            .filter(orders::order_id.eq(order_id))
            .filter(orders::status.eq(STATUS_AWAITING_PAYMENT)),
    )
    .set((
        changes,
        orders::version.eq(orders::version + 1),
        orders::update_time.eq(diesel::dsl::now),
    ))
    .returning(orders::create_time)
    .get_result(conn)
    .await
    .optional()?;
    Ok(updated)
}

/// The order's status, if it is recorded.
pub async fn status_of(
    conn: &mut AsyncPgConnection,
    order_id: Uuid,
) -> QueryResult<Option<String>> {
    orders::table
        .find(order_id)
        .select(orders::status)
        .first(conn)
        .await
        .optional()
}

/// One page of orders, newest first, after `after` (exclusive).
pub async fn list(
    conn: &mut AsyncPgConnection,
    customer_id: Option<&str>,
    after: Option<Position>,
    limit: i64,
) -> QueryResult<Vec<OrderRow>> {
    let mut query = orders::table
        .select(OrderRow::as_select())
        .order((orders::create_time.desc(), orders::order_id.desc()))
        .limit(limit)
        .into_boxed();
    if let Some(customer_id) = customer_id {
        query = query.filter(orders::customer_id.eq(customer_id.to_owned()));
    }
    if let Some(after) = after {
        query = query.filter(
            orders::create_time
                .lt(after.create_time)
                .or(orders::create_time
                    .eq(after.create_time)
                    .and(orders::order_id.lt(after.order_id))),
        );
    }
    query.load(conn).await
}

pub async fn find(conn: &mut AsyncPgConnection, order_id: Uuid) -> QueryResult<Option<OrderRow>> {
    orders::table
        .find(order_id)
        .select(OrderRow::as_select())
        .first(conn)
        .await
        .optional()
}
