//! Idempotent CreateOrder without a gateway database.
//!
//! With a `request_id`, the order id is derived from `(customer_id,
//! request_id)` (UUIDv5), so every retry of a request, concurrent or hours
//! later, names the same order. Publishing it again is harmless: the order
//! service records an order id once.
//!
//! What the order service cannot tell from the event is whether two calls
//! with one key asked for the same thing: it records whichever event comes
//! first. So before publishing, the gateway claims the key with the order
//! service for a fingerprint of the request's content. The first claim
//! binds the key for good (the database serializes concurrent claims), a
//! claim with another fingerprint is refused with ALREADY_EXISTS before
//! anything is published, and a retry with the same fingerprint is answered
//! with the recorded order or, before it is recorded, published again. A
//! keyed call whose claim cannot be made is refused with UNAVAILABLE rather
//! than published unclaimed.

use uuid::Uuid;

use oms_api::orders::internal::v1::{ClaimOutcome, ClaimRequestKeyRequest};
use oms_api::orders::v1::Order;
use oms_common::auth::Caller;

use crate::error::GatewayError;
use crate::service::upstream_error;
use crate::upstream::OrderService;
use crate::validation::ValidOrder;

/// The namespace of request fingerprints ("orders-v1-finger"). Changing it
/// would refuse the retries of keys claimed before the change whose orders
/// are not recorded yet.
const FINGERPRINT_NAMESPACE: Uuid = Uuid::from_u128(0x6f72_6465_7273_2d76_312d_6669_6e67_6572);

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
    oms_api::order_keys::keyed_order_id(customer_id, request_id)
}

/// Names the content of a request: what the key of a keyed request is
/// claimed for. Every field is self-delimiting (strings carry their length,
/// numbers have a fixed width), so different contents never encode to the
/// same bytes.
pub fn fingerprint(order: &ValidOrder) -> Uuid {
    let mut content = Vec::with_capacity(64 + order.customer_id.len() + order.product_id.len());
    for text in [
        &order.customer_id,
        &order.product_id,
        &order.amount.currency_code,
    ] {
        content.extend_from_slice(&(text.len() as u64).to_be_bytes());
        content.extend_from_slice(text.as_bytes());
    }
    content.extend_from_slice(&order.quantity.to_be_bytes());
    content.extend_from_slice(&order.amount.units.to_be_bytes());
    content.extend_from_slice(&order.amount.nanos.to_be_bytes());
    Uuid::new_v5(&FINGERPRINT_NAMESPACE, &content)
}

/// Claims a keyed request's order id for its content with the order
/// service. Returns the recorded order when the request is a retry of it,
/// and `None` when the order is to be published.
pub async fn claim_key(
    orders: &OrderService,
    caller: &Caller,
    order_id: Uuid,
    order: &ValidOrder,
    request_id: &str,
) -> Result<Option<Order>, GatewayError> {
    let claim = ClaimRequestKeyRequest {
        order_id: order_id.to_string(),
        fingerprint: fingerprint(order).to_string(),
        customer_id: order.customer_id.clone(),
        request_id: request_id.to_owned(),
    };
    // A claim is idempotent: made again, it finds the key it bound.
    let response = orders
        .call(|mut client| {
            let claim = caller.forward(claim.clone());
            async move { client.claim_request_key(claim).await }
        })
        .await
        .map_err(upstream_error)?
        .into_inner();
    let outcome = response.outcome();
    if let Some(recorded) = response.order {
        // The recorded order is the truth. It differs from the key's
        // fingerprint only for an order recorded before keys were claimed,
        // whose key the first claim after the change may have bound wrongly.
        if is_same_order(&recorded, order) {
            return Ok(Some(recorded));
        }
        return Err(GatewayError::RequestIdReused(request_id.to_owned()));
    }
    match outcome {
        ClaimOutcome::Claimed => Ok(None),
        ClaimOutcome::Conflict => Err(GatewayError::RequestIdReused(request_id.to_owned())),
        ClaimOutcome::Unspecified => Err(GatewayError::Internal(
            "a claim answered without an outcome".into(),
        )),
    }
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
    use std::collections::HashSet;

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

    #[test]
    fn equal_contents_have_equal_fingerprints() {
        assert_eq!(
            fingerprint(&order("c", Some("r1"))),
            fingerprint(&order("c", Some("r1")))
        );
        // The key names the order; the fingerprint names what is ordered.
        assert_eq!(
            fingerprint(&order("c", Some("r1"))),
            fingerprint(&order("c", Some("r2")))
        );
    }

    #[test]
    fn different_contents_have_different_fingerprints() {
        let base = order("c", Some("r"));
        let amount = |change: fn(&mut Money)| {
            let mut amount = base.amount.clone();
            change(&mut amount);
            ValidOrder {
                amount,
                ..base.clone()
            }
        };
        let variants = [
            ValidOrder {
                customer_id: "d".into(),
                ..base.clone()
            },
            ValidOrder {
                product_id: "q".into(),
                ..base.clone()
            },
            ValidOrder {
                quantity: 2,
                ..base.clone()
            },
            amount(|money| money.currency_code = "USD".into()),
            amount(|money| money.units = 2),
            amount(|money| money.nanos = 10_000_000),
            // The same characters split differently between two fields.
            ValidOrder {
                customer_id: "cp".into(),
                product_id: String::new(),
                ..base.clone()
            },
        ];
        let mut seen = HashSet::from([fingerprint(&base)]);
        for variant in &variants {
            assert!(seen.insert(fingerprint(variant)), "{variant:?}");
        }
    }
}
