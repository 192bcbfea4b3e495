//! What the system recorded, read from its tables: progress while a phase
//! runs, then, once the pipeline has drained, the audit (every accepted
//! order terminal exactly once) and the end-to-end latency, from the times
//! the services themselves stored.

use std::collections::HashSet;
use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Double, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use hdrhistogram::Histogram;
use serde::Serialize;
use uuid::Uuid;

use crate::driver::latency_histogram;

pub async fn connect(database_url: &str) -> anyhow::Result<AsyncPgConnection> {
    Ok(AsyncPgConnection::establish(database_url).await?)
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    value: i64,
}

#[derive(QueryableByName)]
struct Millis {
    #[diesel(sql_type = Double)]
    value: f64,
}

/// How many of `ids` have reached a terminal state.
pub async fn terminal_count(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> anyhow::Result<i64> {
    count(
        conn,
        "SELECT count(*) AS value FROM order_service.orders \
         WHERE order_id = ANY($1) AND status IN ('PAID', 'CANCELLED')",
        ids,
    )
    .await
}

/// Terminal orders of customers whose id starts with `prefix`: the
/// progress of a run, without holding its ids.
pub async fn terminal_count_of_run(conn: &mut AsyncPgConnection, run: &str) -> anyhow::Result<i64> {
    let row: Count = diesel::sql_query(
        "SELECT count(*) AS value FROM order_service.orders \
         WHERE customer_id LIKE $1 AND status IN ('PAID', 'CANCELLED')",
    )
    .bind::<diesel::sql_types::Text, _>(format!("bench-{run}-%"))
    .get_result(conn)
    .await?;
    Ok(row.value)
}

async fn count(conn: &mut AsyncPgConnection, sql: &str, ids: &[Uuid]) -> anyhow::Result<i64> {
    let row: Count = diesel::sql_query(sql)
        .bind::<Array<SqlUuid>, _>(ids)
        .get_result(conn)
        .await?;
    Ok(row.value)
}

/// Waits until every one of `ids` is terminal or `timeout` passes; returns
/// how long the drain took.
pub async fn wait_for_drain(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let start = tokio::time::Instant::now();
    let distinct = ids.iter().collect::<HashSet<_>>().len() as i64;
    while terminal_count(conn, ids).await? < distinct && start.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(start.elapsed())
}

/// The exactly-once audit of one phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Audit {
    pub accepted: u64,
    pub completed: u64,
    /// Accepted but never terminal (after the drain timeout).
    pub lost: u64,
    /// Ids answered twice, payments or notifications recorded twice, and
    /// orders that changed state more than once.
    pub duplicated: u64,
    /// Completed orders per second, first acceptance to last completion,
    /// by the system's own timestamps.
    pub completed_per_s: f64,
}

pub async fn audit(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> anyhow::Result<Audit> {
    let distinct: HashSet<&Uuid> = ids.iter().collect();
    let repeated_ids = (ids.len() - distinct.len()) as i64;
    let completed = terminal_count(conn, ids).await?;
    let double_payments = count(
        conn,
        "SELECT count(*) - count(DISTINCT order_id) AS value FROM payment_service.payments \
         WHERE order_id = ANY($1)",
        ids,
    )
    .await?;
    let double_notifications = count(
        conn,
        "SELECT count(*) - count(DISTINCT (order_id, kind)) AS value \
         FROM notification_service.notifications WHERE order_id = ANY($1)",
        ids,
    )
    .await?;
    // Recorded at version 1, settled at version 2: anything more is a
    // second transition.
    let moved_twice = count(
        conn,
        "SELECT count(*) AS value FROM order_service.orders \
         WHERE order_id = ANY($1) AND version > 2",
        ids,
    )
    .await?;
    let span: Millis = diesel::sql_query(
        "SELECT COALESCE(EXTRACT(EPOCH FROM max(update_time) - min(create_time)) * 1000, 0)::float8 \
         AS value FROM order_service.orders \
         WHERE order_id = ANY($1) AND status IN ('PAID', 'CANCELLED')",
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .get_result(conn)
    .await?;
    Ok(Audit {
        accepted: ids.len() as u64,
        completed: completed as u64,
        lost: (distinct.len() as i64 - completed).max(0) as u64,
        duplicated: (repeated_ids + double_payments + double_notifications + moved_twice) as u64,
        completed_per_s: if span.value > 0.0 {
            completed as f64 * 1000.0 / span.value
        } else {
            0.0
        },
    })
}

/// End-to-end latency of the paid orders among `ids`, in microseconds: from
/// the gateway accepting the order (`create_time`) to the order service
/// marking it paid (`update_time`).
pub async fn end_to_end_latency(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> anyhow::Result<Histogram<u64>> {
    let rows: Vec<Millis> = diesel::sql_query(
        "SELECT (EXTRACT(EPOCH FROM update_time - create_time) * 1000)::float8 AS value \
         FROM order_service.orders WHERE order_id = ANY($1) AND status = 'PAID'",
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .load(conn)
    .await?;
    let mut histogram = latency_histogram();
    for row in rows {
        histogram.saturating_record((row.value * 1000.0).max(1.0) as u64);
    }
    Ok(histogram)
}
