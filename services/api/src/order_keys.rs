//! The order id an idempotency key names. The gateway derives it before
//! publishing, and the order service derives it again when the key is
//! claimed, so both agree, and a caller may only name its own customer's.

use uuid::Uuid;

/// The namespace of derived order ids. Changing it would break retries that
/// span the change.
const ORDER_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f72_6465_7273_2d76_312d_7265_7175_6573);

/// The order id a customer's `request_id` names (UUIDv5).
pub fn keyed_order_id(customer_id: &str, request_id: &str) -> Uuid {
    // Validation forbids control characters in ids, so the NUL separator
    // keeps ("ab", "c") and ("a", "bc") apart.
    Uuid::new_v5(
        &ORDER_ID_NAMESPACE,
        format!("{customer_id}\0{request_id}").as_bytes(),
    )
}
