//! The payment provider: who decides whether a payment goes through.
//!
//! The built-in provider is a deterministic simulator, so the whole flow,
//! declines included, can run and be tested without an outside service. It
//! declines when the amount exceeds `PAYMENT_DECLINE_ABOVE` (a decimal in
//! the order's currency, default 10000.00) or the customer is listed in
//! `PAYMENT_DECLINE_CUSTOMERS` (comma-separated, default none).

use std::collections::HashSet;

use oms_common::config::{ConfigError, var};

/// A provider's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Approved,
    Declined { reason: String },
}

/// What a provider sees of a payment.
#[derive(Debug, Clone, Copy)]
pub struct Charge<'a> {
    pub customer_id: &'a str,
    pub amount_minor: i64,
    pub currency_code: &'a str,
}

pub trait PaymentProvider: Send + Sync + 'static {
    fn decide(&self, charge: Charge<'_>) -> Decision;
}

#[derive(Debug, Clone)]
pub struct SimulatedProvider {
    pub decline_above_minor: i64,
    pub decline_customers: HashSet<String>,
}

impl Default for SimulatedProvider {
    fn default() -> Self {
        Self {
            decline_above_minor: 1_000_000,
            decline_customers: HashSet::new(),
        }
    }
}

impl SimulatedProvider {
    pub fn from_env() -> Result<Self, ConfigError> {
        let decline_above_minor = match var("PAYMENT_DECLINE_ABOVE") {
            None => Self::default().decline_above_minor,
            Some(raw) => parse_decimal_minor(raw.trim()).ok_or_else(|| {
                ConfigError::new(
                    "PAYMENT_DECLINE_ABOVE",
                    &raw,
                    "expected a non-negative decimal with at most two decimal places, such as 10000.00",
                )
            })?,
        };
        let decline_customers = var("PAYMENT_DECLINE_CUSTOMERS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|customer| !customer.is_empty())
            .map(str::to_owned)
            .collect();
        Ok(Self {
            decline_above_minor,
            decline_customers,
        })
    }
}

impl PaymentProvider for SimulatedProvider {
    fn decide(&self, charge: Charge<'_>) -> Decision {
        if self.decline_customers.contains(charge.customer_id) {
            return Decision::Declined {
                reason: format!("customer {} may not pay", charge.customer_id),
            };
        }
        if charge.amount_minor > self.decline_above_minor {
            return Decision::Declined {
                reason: format!(
                    "amount {} {} exceeds the limit of {} {}",
                    format_minor(charge.amount_minor),
                    charge.currency_code,
                    format_minor(self.decline_above_minor),
                    charge.currency_code
                ),
            };
        }
        Decision::Approved
    }
}

/// Parses "10000", "10000.5" or "10000.00" into hundredths.
fn parse_decimal_minor(raw: &str) -> Option<i64> {
    let (whole, fraction) = raw.split_once('.').unwrap_or((raw, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if fraction.len() > 2 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let cents = format!("{fraction:0<2}").parse::<i64>().ok()?;
    whole
        .parse::<i64>()
        .ok()?
        .checked_mul(100)?
        .checked_add(cents)
}

fn format_minor(minor: i64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge(customer_id: &str, amount_minor: i64) -> Charge<'_> {
        Charge {
            customer_id,
            amount_minor,
            currency_code: "EUR",
        }
    }

    #[test]
    fn decimals_parse_to_minor_units() {
        assert_eq!(parse_decimal_minor("10000.00"), Some(1_000_000));
        assert_eq!(parse_decimal_minor("10000"), Some(1_000_000));
        assert_eq!(parse_decimal_minor("0.5"), Some(50));
        for bad in ["", "-1", "1.234", "1,00", "abc", ".5", "1e3"] {
            assert_eq!(parse_decimal_minor(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn simulator_declines_above_the_limit_and_listed_customers() {
        let provider = SimulatedProvider {
            decline_above_minor: 10_000,
            decline_customers: ["mallory".to_owned()].into(),
        };
        assert_eq!(provider.decide(charge("alice", 10_000)), Decision::Approved);
        assert_eq!(
            provider.decide(charge("alice", 10_001)),
            Decision::Declined {
                reason: "amount 100.01 EUR exceeds the limit of 100.00 EUR".into()
            }
        );
        assert!(matches!(
            provider.decide(charge("mallory", 1)),
            Decision::Declined { .. }
        ));
    }
}
