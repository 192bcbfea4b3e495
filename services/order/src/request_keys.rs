//! Idempotency keys the gateway claims before it publishes an order
//! (`request_keys`).
//!
//! A key is the order id the gateway derives from `(customer_id,
//! request_id)`; its row binds it to the fingerprint of the first request
//! that claimed it. Rows are never updated or deleted, so once a claim has
//! committed, every later claim of the key reads the same fingerprint.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::schema::request_keys;

/// Whose a key is after a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The key is bound to the claimed fingerprint, by this claim or an
    /// earlier one.
    Claimed,
    /// The key is bound to another fingerprint.
    Conflict,
}

/// Binds `order_id` to `fingerprint` unless it is bound already, and tells
/// whether it is bound to `fingerprint`.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    order_id: Uuid,
    fingerprint: Uuid,
) -> QueryResult<Claim> {
    // An insert that meets a concurrent, uncommitted claim of the same key
    // waits for it, so exactly one claim inserts and the others see its row.
    let inserted = diesel::insert_into(request_keys::table)
        .values((
            request_keys::order_id.eq(order_id),
            request_keys::fingerprint.eq(fingerprint),
        ))
        .on_conflict(request_keys::order_id)
        .do_nothing()
        .returning(request_keys::fingerprint)
        .get_result::<Uuid>(conn)
        .await
        .optional()?;
    let bound_to = match inserted {
        Some(bound_to) => bound_to,
        // A statement of its own: under READ COMMITTED (PostgreSQL's
        // default) its snapshot is newer than the insert's, so it sees the
        // winning row even when that committed while the insert waited. In
        // the insert's own statement (a CTE) it would be invisible.
        None => {
            request_keys::table
                .find(order_id)
                .select(request_keys::fingerprint)
                .first::<Uuid>(conn)
                .await?
        }
    };
    Ok(if bound_to == fingerprint {
        Claim::Claimed
    } else {
        Claim::Conflict
    })
}
