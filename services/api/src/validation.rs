//! What the system accepts as an order, in one place: the gateway checks
//! requests with it, and every consumer checks the events it reads with it,
//! so a record that bypassed the gateway can never reach a table in a form
//! the database refuses (NUL characters, ids past the index-row limit,
//! timestamps outside PostgreSQL's range).

use std::fmt;

use chrono::{DateTime, Datelike, Utc};
use prost_types::Timestamp;

use crate::google::r#type::Money;
use crate::money;

/// The longest customer, product or request id, in characters.
pub const MAX_ID_CHARS: usize = 128;
/// The longest free-text reason (a decline or cancellation reason).
pub const MAX_REASON_CHARS: usize = 1_024;
pub const MAX_QUANTITY: i32 = 10_000;
/// The largest amount accepted, in whole units. Far beyond any real order,
/// and it keeps minor-unit arithmetic well inside `i64`.
pub const MAX_AMOUNT_UNITS: i64 = 1_000_000_000_000;
/// Event times must fall in these years: well inside both chrono's and
/// PostgreSQL's range.
const YEARS: std::ops::RangeInclusive<i32> = 1970..=9999;

/// One thing wrong with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: &'static str,
    pub description: String,
}

impl Violation {
    pub fn new(field: &'static str, description: impl Into<String>) -> Self {
        Self {
            field,
            description: description.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.field, self.description)
    }
}

/// Joins violations into one sentence, for logs and dead letters.
pub fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(Violation::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The fields of an order, as the API and the `OrderCreated` event carry
/// them.
#[derive(Debug, Clone, Copy)]
pub struct OrderFields<'a> {
    pub customer_id: &'a str,
    pub product_id: &'a str,
    pub quantity: i32,
    pub amount: Option<&'a Money>,
    /// Empty when the request has no idempotency key.
    pub request_id: &'a str,
}

impl<'a> From<&'a crate::orders::events::v1::OrderCreated> for OrderFields<'a> {
    fn from(event: &'a crate::orders::events::v1::OrderCreated) -> Self {
        Self {
            customer_id: &event.customer_id,
            product_id: &event.product_id,
            quantity: event.quantity,
            amount: event.amount.as_ref(),
            request_id: &event.request_id,
        }
    }
}

/// Every violation of the order's fields, in field order.
pub fn order_violations(order: OrderFields<'_>) -> Vec<Violation> {
    let mut violations = Vec::new();
    check_text(
        &mut violations,
        "customer_id",
        order.customer_id,
        MAX_ID_CHARS,
        true,
    );
    check_text(
        &mut violations,
        "product_id",
        order.product_id,
        MAX_ID_CHARS,
        true,
    );
    check_text(
        &mut violations,
        "request_id",
        order.request_id,
        MAX_ID_CHARS,
        false,
    );
    if !(1..=MAX_QUANTITY).contains(&order.quantity) {
        violations.push(Violation::new(
            "quantity",
            format!(
                "must be between 1 and {MAX_QUANTITY}, got {}",
                order.quantity
            ),
        ));
    }
    match order.amount {
        None => violations.push(Violation::new("amount", "is required")),
        Some(amount) => check_amount(&mut violations, amount),
    }
    violations
}

/// Checks a text field: present when `required`, at most `max_chars`
/// characters, not blank, and free of control characters (NUL among them,
/// which PostgreSQL cannot store in text).
pub fn check_text(
    violations: &mut Vec<Violation>,
    field: &'static str,
    value: &str,
    max_chars: usize,
    required: bool,
) {
    if value.is_empty() {
        if required {
            violations.push(Violation::new(field, "is required"));
        }
    } else if value.chars().count() > max_chars {
        violations.push(Violation::new(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    } else if value.trim().is_empty() {
        violations.push(Violation::new(field, "must not be blank"));
    } else if value.chars().any(char::is_control) {
        violations.push(Violation::new(field, "must not contain control characters"));
    }
}

/// Checks a free-text reason: required, bounded, and without NUL (line
/// breaks and tabs are fine in prose).
pub fn check_reason(violations: &mut Vec<Violation>, field: &'static str, value: &str) {
    if value.trim().is_empty() {
        violations.push(Violation::new(field, "is required"));
    } else if value.chars().count() > MAX_REASON_CHARS {
        violations.push(Violation::new(
            field,
            format!("must be at most {MAX_REASON_CHARS} characters"),
        ));
    } else if value.contains('\0') {
        violations.push(Violation::new(field, "must not contain NUL characters"));
    }
}

/// Checks an amount: a positive, whole number of cents in a three-letter
/// currency, at most `MAX_AMOUNT_UNITS`.
pub fn check_amount(violations: &mut Vec<Violation>, amount: &Money) {
    let code = &amount.currency_code;
    if code.len() != 3 || !code.chars().all(|c| c.is_ascii_uppercase()) {
        violations.push(Violation::new(
            "amount.currency_code",
            "must be three upper-case letters (ISO 4217)",
        ));
    }
    if amount.nanos.abs() > 999_999_999 {
        violations.push(Violation::new(
            "amount.nanos",
            "must be between -999,999,999 and 999,999,999",
        ));
    } else if (amount.units > 0 && amount.nanos < 0) || (amount.units < 0 && amount.nanos > 0) {
        violations.push(Violation::new(
            "amount.nanos",
            "must have the same sign as amount.units",
        ));
    } else if amount.units < 0 || (amount.units == 0 && amount.nanos <= 0) {
        violations.push(Violation::new("amount", "must be positive"));
    } else if amount.units > MAX_AMOUNT_UNITS {
        violations.push(Violation::new(
            "amount.units",
            format!("must be at most {MAX_AMOUNT_UNITS}"),
        ));
    } else if money::to_minor_units(amount).is_none() {
        violations.push(Violation::new(
            "amount.nanos",
            "must be a whole number of cents (a multiple of 10,000,000)",
        ));
    }
}

/// An event time the system can store, or `None` when it is missing,
/// malformed or outside the years 1970 to 9999.
pub fn event_time(timestamp: Option<&Timestamp>) -> Option<DateTime<Utc>> {
    timestamp
        .and_then(crate::time::from_timestamp)
        .filter(|time| YEARS.contains(&time.year()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn euros() -> Money {
        Money {
            currency_code: "EUR".into(),
            units: 10,
            nanos: 0,
        }
    }

    fn fields<'a>(customer_id: &'a str, amount: &'a Money) -> OrderFields<'a> {
        OrderFields {
            customer_id,
            product_id: "p-1",
            quantity: 1,
            amount: Some(amount),
            request_id: "",
        }
    }

    #[test]
    fn a_valid_order_has_no_violations() {
        assert_eq!(order_violations(fields("c-1", &euros())), []);
    }

    #[test]
    fn what_the_database_refuses_is_a_violation() {
        let amount = euros();
        let nul = order_violations(fields("c\0", &amount));
        assert_eq!(nul[0].field, "customer_id", "{nul:?}");
        let long = "x".repeat(3_000);
        let long = order_violations(fields(&long, &amount));
        assert!(long[0].description.contains("at most 128"), "{long:?}");
        let mut reasons = Vec::new();
        check_reason(&mut reasons, "reason", "declined\0");
        assert_eq!(reasons.len(), 1);
    }

    #[test]
    fn event_times_outside_storable_years_are_refused() {
        let at = |seconds| Some(Timestamp { seconds, nanos: 0 });
        assert!(event_time(at(1_700_000_000).as_ref()).is_some());
        assert!(event_time(at(-1).as_ref()).is_none());
        // Year 10000 and beyond: valid protobuf, not a time PostgreSQL and
        // chrono agree on.
        assert!(event_time(at(253_402_300_800).as_ref()).is_none());
        assert!(event_time(at(i64::MAX).as_ref()).is_none());
        assert!(event_time(None).is_none());
    }
}
