//! A CreateOrder request for tests that need an order, not particular
//! contents: one unit of `sku-1` for 12 EUR, well below the simulator's
//! decline limit.

use oms_api::google::r#type::Money;
use oms_api::orders::v1::CreateOrderRequest;

/// An order for `customer`, keyed by `request_id` (empty for none).
pub fn order(customer: &str, request_id: &str) -> CreateOrderRequest {
    CreateOrderRequest {
        customer_id: customer.into(),
        product_id: "sku-1".into(),
        quantity: 1,
        amount: Some(Money {
            currency_code: "EUR".into(),
            units: 12,
            nanos: 0,
        }),
        request_id: request_id.into(),
    }
}
