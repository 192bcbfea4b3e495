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
    fn minor_units_round_trip() {
        for minor in [1, 99, 100, 1234, 1_000_000_007] {
            assert_eq!(to_minor_units(&from_minor_units("EUR", minor)), Some(minor));
        }
    }
}
