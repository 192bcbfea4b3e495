//! Request validation: every bad field is reported, each with its own field
//! violation, in one INVALID_ARGUMENT answer. Nothing invalid reaches Kafka.
//! The rules themselves live in `oms_api::validation`, which the consumers
//! apply to the events too.

use oms_api::google::r#type::Money;
use oms_api::orders::v1::{CreateOrderRequest, ListOrdersRequest};
use oms_api::validation::{self, MAX_ID_CHARS, OrderFields, Violation};
use tonic_types::FieldViolation;

/// A request that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidOrder {
    pub customer_id: String,
    pub product_id: String,
    pub quantity: i32,
    pub amount: Money,
    pub request_id: Option<String>,
}

pub fn validate_create_order(
    request: CreateOrderRequest,
) -> Result<ValidOrder, Vec<FieldViolation>> {
    let violations = validation::order_violations(OrderFields {
        customer_id: &request.customer_id,
        product_id: &request.product_id,
        quantity: request.quantity,
        amount: request.amount.as_ref(),
        request_id: &request.request_id,
    });
    if !violations.is_empty() {
        return Err(field_violations(violations));
    }
    Ok(ValidOrder {
        customer_id: request.customer_id,
        product_id: request.product_id,
        quantity: request.quantity,
        amount: request.amount.unwrap_or_default(),
        request_id: Some(request.request_id).filter(|id| !id.is_empty()),
    })
}

/// Checks what the gateway can: the page token itself is checked by the
/// order service, which issued it.
pub fn validate_list_orders(request: &ListOrdersRequest) -> Result<(), Vec<FieldViolation>> {
    let mut violations = Vec::new();
    validation::check_text(
        &mut violations,
        "customer_id",
        &request.customer_id,
        MAX_ID_CHARS,
        false,
    );
    if request.page_size < 0 {
        violations.push(Violation::new("page_size", "must not be negative"));
    }
    if request.page_token.len() > MAX_ID_CHARS {
        violations.push(Violation::new(
            "page_token",
            "is not a token this service issued",
        ));
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(field_violations(violations))
    }
}

fn field_violations(violations: Vec<Violation>) -> Vec<FieldViolation> {
    violations
        .into_iter()
        .map(|violation| FieldViolation::new(violation.field, violation.description))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oms_api::validation::MAX_AMOUNT_UNITS;

    fn valid_request() -> CreateOrderRequest {
        CreateOrderRequest {
            customer_id: "customer-1".into(),
            product_id: "product-1".into(),
            quantity: 2,
            amount: Some(Money {
                currency_code: "EUR".into(),
                units: 19,
                nanos: 990_000_000,
            }),
            request_id: String::new(),
        }
    }

    fn fields(request: CreateOrderRequest) -> Vec<String> {
        validate_create_order(request)
            .unwrap_err()
            .into_iter()
            .map(|violation| violation.field)
            .collect()
    }

    #[test]
    fn valid_request_passes() {
        let order = validate_create_order(valid_request()).unwrap();
        assert_eq!(order.quantity, 2);
        assert_eq!(order.request_id, None);
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let request = CreateOrderRequest {
            customer_id: String::new(),
            product_id: "x".repeat(129),
            quantity: 0,
            amount: None,
            request_id: "r".repeat(129),
        };
        assert_eq!(
            fields(request),
            [
                "customer_id",
                "product_id",
                "request_id",
                "quantity",
                "amount"
            ]
        );
    }

    #[test]
    fn limits_count_characters_not_bytes() {
        let mut request = valid_request();
        request.customer_id = "é".repeat(128); // 256 bytes, 128 characters
        assert!(validate_create_order(request.clone()).is_ok());
        request.customer_id.push('é');
        assert_eq!(fields(request), ["customer_id"]);
    }

    #[test]
    fn quantity_bounds_are_inclusive() {
        for (quantity, ok) in [
            (1, true),
            (10_000, true),
            (0, false),
            (10_001, false),
            (-5, false),
        ] {
            let mut request = valid_request();
            request.quantity = quantity;
            assert_eq!(
                validate_create_order(request).is_ok(),
                ok,
                "quantity {quantity}"
            );
        }
    }

    #[test]
    fn amounts_are_checked_field_by_field() {
        let cases: [(&str, i64, i32, &str); 8] = [
            ("eur", 1, 0, "amount.currency_code"),
            ("EURO", 1, 0, "amount.currency_code"),
            ("EUR", 0, 0, "amount"),
            ("EUR", -1, 0, "amount"),
            ("EUR", 1, -10_000_000, "amount.nanos"),
            ("EUR", 1, 1_000_000_000, "amount.nanos"),
            ("EUR", 1, 5_000_000, "amount.nanos"),
            ("EUR", MAX_AMOUNT_UNITS + 1, 0, "amount.units"),
        ];
        for (currency, units, nanos, field) in cases {
            let mut request = valid_request();
            request.amount = Some(Money {
                currency_code: currency.into(),
                units,
                nanos,
            });
            assert_eq!(fields(request), [field], "{currency} {units} {nanos}");
        }
    }

    #[test]
    fn blank_and_control_characters_are_refused() {
        let mut request = valid_request();
        request.customer_id = "   ".into();
        request.product_id = "a\u{0}b".into();
        assert_eq!(fields(request), ["customer_id", "product_id"]);
    }
}
