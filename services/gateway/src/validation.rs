//! Request validation: every bad field is reported, each with its own field
//! violation, in one INVALID_ARGUMENT answer. Nothing invalid reaches Kafka.

use oms_api::google::r#type::Money;
use oms_api::money;
use oms_api::orders::v1::{CreateOrderRequest, ListOrdersRequest};
use tonic_types::FieldViolation;

pub const MAX_ID_CHARS: usize = 128;
pub const MAX_QUANTITY: i32 = 10_000;
/// The largest amount accepted, in whole units. Far beyond any real order,
/// and it keeps minor-unit arithmetic well inside `i64`.
pub const MAX_AMOUNT_UNITS: i64 = 1_000_000_000_000;

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
    let mut violations = Vec::new();
    check_id(&mut violations, "customer_id", &request.customer_id, true);
    check_id(&mut violations, "product_id", &request.product_id, true);
    check_id(&mut violations, "request_id", &request.request_id, false);
    if !(1..=MAX_QUANTITY).contains(&request.quantity) {
        violations.push(FieldViolation::new(
            "quantity",
            format!(
                "must be between 1 and {MAX_QUANTITY}, got {}",
                request.quantity
            ),
        ));
    }
    match &request.amount {
        None => violations.push(FieldViolation::new("amount", "is required")),
        Some(amount) => check_amount(&mut violations, amount),
    }
    if !violations.is_empty() {
        return Err(violations);
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
    check_id(&mut violations, "customer_id", &request.customer_id, false);
    if request.page_size < 0 {
        violations.push(FieldViolation::new("page_size", "must not be negative"));
    }
    if request.page_token.len() > MAX_ID_CHARS {
        violations.push(FieldViolation::new(
            "page_token",
            "is not a token this service issued",
        ));
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations)
    }
}

fn check_id(violations: &mut Vec<FieldViolation>, field: &str, value: &str, required: bool) {
    if value.is_empty() {
        if required {
            violations.push(FieldViolation::new(field, "is required"));
        }
    } else if value.chars().count() > MAX_ID_CHARS {
        violations.push(FieldViolation::new(
            field,
            format!("must be at most {MAX_ID_CHARS} characters"),
        ));
    } else if value.trim().is_empty() {
        violations.push(FieldViolation::new(field, "must not be blank"));
    } else if value.chars().any(char::is_control) {
        violations.push(FieldViolation::new(
            field,
            "must not contain control characters",
        ));
    }
}

fn check_amount(violations: &mut Vec<FieldViolation>, amount: &Money) {
    let code = &amount.currency_code;
    if code.len() != 3 || !code.chars().all(|c| c.is_ascii_uppercase()) {
        violations.push(FieldViolation::new(
            "amount.currency_code",
            "must be three upper-case letters (ISO 4217)",
        ));
    }
    if amount.nanos.abs() > 999_999_999 {
        violations.push(FieldViolation::new(
            "amount.nanos",
            "must be between -999,999,999 and 999,999,999",
        ));
    } else if (amount.units > 0 && amount.nanos < 0) || (amount.units < 0 && amount.nanos > 0) {
        violations.push(FieldViolation::new(
            "amount.nanos",
            "must have the same sign as amount.units",
        ));
    } else if amount.units < 0 || (amount.units == 0 && amount.nanos <= 0) {
        violations.push(FieldViolation::new("amount", "must be positive"));
    } else if amount.units > MAX_AMOUNT_UNITS {
        violations.push(FieldViolation::new(
            "amount.units",
            format!("must be at most {MAX_AMOUNT_UNITS}"),
        ));
    } else if money::to_minor_units(amount).is_none() {
        violations.push(FieldViolation::new(
            "amount.nanos",
            "must be a whole number of cents (a multiple of 10,000,000)",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
