//! Exact money arithmetic: amounts are stored and compared in minor units
//! (hundredths of the currency unit), never in floating point.

use crate::google::r#type::Money;

const NANOS_PER_MINOR_UNIT: i32 = 10_000_000;
const NANOS_PER_UNIT: i32 = 1_000_000_000;

/// Returns the amount in minor units (hundredths), or `None` when it is finer
/// than one hundredth, has inconsistent signs, or does not fit in an `i64`.
pub fn to_minor_units(money: &Money) -> Option<i64> {
    if money.nanos.abs() >= NANOS_PER_UNIT || money.nanos % NANOS_PER_MINOR_UNIT != 0 {
        return None;
    }
    if (money.units > 0 && money.nanos < 0) || (money.units < 0 && money.nanos > 0) {
        return None;
    }
    money
        .units
        .checked_mul(100)?
        .checked_add(i64::from(money.nanos / NANOS_PER_MINOR_UNIT))
}

/// An exact, positive amount in a valid currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amount {
    pub minor_units: i64,
    pub currency_code: String,
}

/// Why an event's amount is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount is missing")]
    Missing,
    #[error("amount is not a positive whole number of cents")]
    NotPositiveCents,
    #[error("currency_code {0:?} is invalid")]
    BadCurrency(String),
}

/// Whether `code` looks like an ISO 4217 code: three upper-case letters.
pub fn is_currency_code(code: &str) -> bool {
    code.len() == 3 && code.chars().all(|c| c.is_ascii_uppercase())
}

/// Checks an amount carried by an event: present, a positive whole number
/// of cents, in a valid currency.
pub fn parse_amount(amount: Option<Money>) -> Result<Amount, AmountError> {
    let amount = amount.ok_or(AmountError::Missing)?;
    let minor_units = to_minor_units(&amount)
        .filter(|minor| *minor > 0)
        .ok_or(AmountError::NotPositiveCents)?;
    if !is_currency_code(&amount.currency_code) {
        return Err(AmountError::BadCurrency(amount.currency_code));
    }
    Ok(Amount {
        minor_units,
        currency_code: amount.currency_code,
    })
}

/// Builds a `Money` from minor units (hundredths).
pub fn from_minor_units(currency_code: &str, minor_units: i64) -> Money {
    Money {
        currency_code: currency_code.to_owned(),
        units: minor_units / 100,
        // The remainder is below 100 in magnitude, so this cannot overflow.
        nanos: (minor_units % 100) as i32 * NANOS_PER_MINOR_UNIT,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn money(units: i64, nanos: i32) -> Money {
        Money {
            currency_code: "USD".into(),
            units,
            nanos,
        }
    }

    #[test]
    fn whole_cents_convert_exactly() {
        assert_eq!(to_minor_units(&money(12, 340_000_000)), Some(1234));
        assert_eq!(to_minor_units(&money(0, 10_000_000)), Some(1));
        assert_eq!(to_minor_units(&money(-3, -500_000_000)), Some(-350));
    }

    #[test]
    fn fractions_of_a_cent_are_refused() {
        assert_eq!(to_minor_units(&money(1, 1)), None);
        assert_eq!(to_minor_units(&money(1, 5_000_000)), None);
    }

    #[test]
    fn inconsistent_signs_and_overflow_are_refused() {
        assert_eq!(to_minor_units(&money(1, -10_000_000)), None);
        assert_eq!(to_minor_units(&money(i64::MAX, 0)), None);
        assert_eq!(to_minor_units(&money(0, 1_000_000_000)), None);
    }

    #[test]
    fn event_amounts_must_be_present_positive_cents_in_a_currency() {
        assert_eq!(parse_amount(None), Err(AmountError::Missing));
        assert_eq!(
            parse_amount(Some(money(0, 0))),
            Err(AmountError::NotPositiveCents)
        );
        let mut lower = money(1, 0);
        lower.currency_code = "usd".into();
        assert_eq!(
            parse_amount(Some(lower)),
            Err(AmountError::BadCurrency("usd".into()))
        );
        assert_eq!(
            parse_amount(Some(money(2, 500_000_000))),
            Ok(Amount {
                minor_units: 250,
                currency_code: "USD".into()
            })
        );
    }

    #[test]
    fn minor_units_round_trip() {
        for minor in [1, 99, 100, 1234, 1_000_000_007] {
            assert_eq!(to_minor_units(&from_minor_units("EUR", minor)), Some(minor));
        }
    }
}
