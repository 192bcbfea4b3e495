//! Idempotent CreateOrder without a gateway database.
//!
//! With a `request_id`, the order id is derived from `(customer_id,
//! request_id)` (UUIDv5), so every retry of a request, concurrent or hours
//! later, names the same order. Publishing it again is harmless: the order
//! service records an order id once. Before publishing, the gateway asks the
//! order service whether the id is recorded already, to answer a retry with
//! the order as it is now, and to refuse a `request_id` reused for a
//! different order.

use uuid::Uuid;

use oms_api::orders::v1::Order;

use crate::validation::ValidOrder;

/// The namespace of derived order ids. Changing it would break retries that
/// span the change.
const ORDER_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f72_6465_7273_2d76_312d_7265_7175_6573);

/// The order id for a request: derived from its idempotency key when it has
/// one, otherwise new and time-ordered.
pub fn order_id_for(order: &ValidOrder) -> Uuid {
    match &order.request_id {
        Some(request_id) => order_id_for_key(&order.customer_id, request_id),
        None => Uuid::now_v7(),
    }
}

/// The order id a customer's `request_id` names.
pub fn order_id_for_key(customer_id: &str, request_id: &str) -> Uuid {
    // Validation forbids control characters in ids, so the NUL separator
    // keeps ("ab", "c") and ("a", "bc") apart.
    Uuid::new_v5(
        &ORDER_ID_NAMESPACE,
        format!("{customer_id}\0{request_id}").as_bytes(),
    )
}

/// Whether a recorded order is the one this request asks for.
pub fn is_same_order(recorded: &Order, requested: &ValidOrder) -> bool {
    recorded.customer_id == requested.customer_id
        && recorded.product_id == requested.product_id
        && recorded.quantity == requested.quantity
        && recorded.amount.as_ref() == Some(&requested.amount)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oms_api::google::r#type::Money;

    fn order(customer: &str, request_id: Option<&str>) -> ValidOrder {
        ValidOrder {
            customer_id: customer.into(),
            product_id: "p".into(),
            quantity: 1,
            amount: Money {
                currency_code: "EUR".into(),
                units: 1,
                nanos: 0,
            },
            request_id: request_id.map(str::to_owned),
        }
    }

    #[test]
    fn the_same_key_always_names_the_same_order() {
        assert_eq!(
            order_id_for(&order("c", Some("r1"))),
            order_id_for(&order("c", Some("r1")))
        );
    }

    #[test]
    fn keys_are_scoped_to_their_customer() {
        assert_ne!(
            order_id_for(&order("c1", Some("r"))),
            order_id_for(&order("c2", Some("r")))
        );
        assert_ne!(
            order_id_for(&order("ab", Some("c"))),
            order_id_for(&order("a", Some("bc")))
        );
    }

    #[test]
    fn without_a_key_every_order_is_new() {
        assert_ne!(
            order_id_for(&order("c", None)),
            order_id_for(&order("c", None))
        );
    }
}
