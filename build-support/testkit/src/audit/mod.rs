//! Counting what the system recorded and published, to prove that every
//! accepted order completed exactly once: one paid order, one matching
//! payment and one notification of each kind, each event published once,
//! and nothing else.
//!
//! Unique constraints keep the tables from ever showing a second payment or
//! notification, so the rows cannot reveal work done twice. What can really
//! happen twice is visible on the broker: an event published again, a record
//! dead-lettered again. `duplicated` reads the flow's topics back and counts
//! those.

mod published;

pub use published::{Topics, duplicated};

use std::time::Duration;

use diesel::sql_types::{Array, BigInt, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::TestDatabase;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audit {
    pub orders: i64,
    pub paid_orders: i64,
    pub payments: i64,
    pub order_received_notifications: i64,
    pub payment_succeeded_notifications: i64,
    /// Paid orders whose payment row is missing or differs (id or amount).
    pub mismatched_payments: i64,
    /// Events published more than once (per type and order) and records
    /// dead-lettered more often than their topic has consumers, read from
    /// the broker; -1 when the topics could not be read.
    pub duplicated: i64,
    /// Payments for which the provider was called more than once (the
    /// payment service counts its calls in `attempts`).
    pub repeated_provider_calls: i64,
    /// Accepted orders that are not paid (yet).
    pub unpaid_accepted: Vec<String>,
}

impl Audit {
    /// What a run that accepted `n` orders must end with.
    pub fn exactly_once(n: usize) -> Self {
        let n = n as i64;
        Self {
            orders: n,
            paid_orders: n,
            payments: n,
            order_received_notifications: n,
            payment_succeeded_notifications: n,
            mismatched_payments: 0,
            duplicated: 0,
            repeated_provider_calls: 0,
            unpaid_accepted: Vec::new(),
        }
    }
}
#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

#[derive(diesel::QueryableByName)]
struct Id {
    #[diesel(sql_type = Text)]
    id: String,
}

/// The count `sql` returns, or -1 (which no expected audit holds) when the
/// query fails; the error goes to the test's output, shown if it fails.
async fn count(conn: &mut AsyncPgConnection, sql: &'static str) -> i64 {
    match diesel::sql_query(sql).get_result::<Count>(conn).await {
        Ok(row) => row.count,
        Err(err) => {
            eprintln!("audit query failed: {err}: {sql}");
            -1
        }
    }
}

/// Counts what the services recorded in `db` for the `accepted` order ids,
/// and what they published on `topics`.
pub async fn audit(db: &TestDatabase, topics: &Topics, accepted: &[Uuid]) -> Audit {
    let mut conn = db.connect("public").await;
    let unpaid_accepted = diesel::sql_query(
        "SELECT a.id::text AS id FROM unnest($1) AS a(id) \
         WHERE NOT EXISTS (SELECT 1 FROM order_service.orders o WHERE o.order_id = a.id AND o.status = 'PAID')",
    )
    .bind::<Array<SqlUuid>, _>(accepted)
    .load::<Id>(&mut conn)
    .await
    .map(|ids| ids.into_iter().map(|i| i.id).collect())
    .unwrap_or_else(|_| vec!["<query failed>".into()]);
    Audit {
        orders: count(&mut conn, "SELECT count(*) AS count FROM order_service.orders").await,
        paid_orders: count(
            &mut conn,
            "SELECT count(*) AS count FROM order_service.orders WHERE status = 'PAID' AND payment_id IS NOT NULL",
        )
        .await,
        payments: count(&mut conn, "SELECT count(*) AS count FROM payment_service.payments").await,
        order_received_notifications: count(
            &mut conn,
            "SELECT count(*) AS count FROM notification_service.notifications WHERE kind = 'ORDER_RECEIVED'",
        )
        .await,
        payment_succeeded_notifications: count(
            &mut conn,
            "SELECT count(*) AS count FROM notification_service.notifications WHERE kind = 'PAYMENT_SUCCEEDED'",
        )
        .await,
        mismatched_payments: count(
            &mut conn,
            "SELECT count(*) AS count FROM order_service.orders o \
             LEFT JOIN payment_service.payments p ON p.order_id = o.order_id \
             WHERE o.status = 'PAID' AND (p.payment_id IS DISTINCT FROM o.payment_id \
                OR p.amount_minor IS DISTINCT FROM o.amount_minor)",
        )
        .await,
        duplicated: duplicated(topics).await,
        repeated_provider_calls: count(
            &mut conn,
            "SELECT count(*) AS count FROM payment_service.payments WHERE attempts > 1",
        )
        .await,
        unpaid_accepted,
    }
}

/// Waits until the audit shows every accepted order completed exactly once
/// and every event published once, then waits a little longer and checks
/// nothing more appeared; panics with the last audit otherwise.
pub async fn assert_completed_exactly_once(
    db: &TestDatabase,
    topics: &Topics,
    accepted: &[Uuid],
    timeout: Duration,
) {
    assert_completion(db, topics, accepted, timeout, false).await;
}

/// As `assert_completed_exactly_once`, for tests that kill services or cut
/// them off from the broker or the database. A relay that dies or loses
/// its database between the broker's acknowledgement and the delete of its
/// outbox rows publishes them again: events are delivered at least once,
/// so they may be duplicated, and the count is printed. Every effect must
/// still happen exactly once.
pub async fn assert_effects_exactly_once(
    db: &TestDatabase,
    topics: &Topics,
    accepted: &[Uuid],
    timeout: Duration,
) {
    let seen = assert_completion(db, topics, accepted, timeout, true).await;
    println!(
        "events published more than once after the faults: {}; payments asked of the provider more than once: {}",
        seen.duplicated, seen.repeated_provider_calls
    );
}

async fn assert_completion(
    db: &TestDatabase,
    topics: &Topics,
    accepted: &[Uuid],
    timeout: Duration,
    republished_allowed: bool,
) -> Audit {
    let expected = |seen: &Audit| Audit {
        // -1, topics that could not be read, never passes.
        duplicated: if republished_allowed && seen.duplicated >= 0 {
            seen.duplicated
        } else {
            0
        },
        // A payment service killed during a provider call asks again, with
        // the same key, after its restart.
        repeated_provider_calls: if republished_allowed && seen.repeated_provider_calls >= 0 {
            seen.repeated_provider_calls
        } else {
            0
        },
        ..Audit::exactly_once(accepted.len())
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let seen = audit(db, topics, accepted).await;
        if seen == expected(&seen) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every accepted order completed exactly once within {timeout:?}:\n expected {:?}\n      saw {:?}",
            expected(&seen),
            Audit {
                unpaid_accepted: seen.unpaid_accepted.iter().take(5).cloned().collect(),
                ..seen
            }
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Late duplicates would show up now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = audit(db, topics, accepted).await;
    assert_eq!(seen, expected(&seen), "something changed after completion");
    seen
}
