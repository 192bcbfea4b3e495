//! Keyset pagination of orders, newest first.
//!
//! A page token names the last order of the previous page by its position
//! in the ordering, `(create_time, order_id)`; the next page starts right
//! after it. Orders that arrive later sort before the position (they are
//! newer), so they never shift a page: no order is returned twice or
//! skipped. The token is opaque to clients: hex of the position.

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub const DEFAULT_PAGE_SIZE: i64 = 50;
pub const MAX_PAGE_SIZE: i64 = 500;

/// Where a page starts: just after this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub create_time: DateTime<Utc>,
    pub order_id: Uuid,
}

/// The page size to use for a requested one: 0 means the default, larger
/// than the maximum means the maximum. `None` for a negative size.
pub fn page_size(requested: i32) -> Option<i64> {
    match requested {
        0 => Some(DEFAULT_PAGE_SIZE),
        n if n < 0 => None,
        n => Some(i64::from(n).min(MAX_PAGE_SIZE)),
    }
}

impl Position {
    pub fn to_token(self) -> String {
        let mut bytes = Vec::with_capacity(24);
        bytes.extend_from_slice(&self.create_time.timestamp_micros().to_be_bytes());
        bytes.extend_from_slice(self.order_id.as_bytes());
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads a token made by `to_token`; `None` for anything else.
    pub fn from_token(token: &str) -> Option<Self> {
        if token.len() != 48 || !token.is_ascii() {
            return None;
        }
        let bytes: Vec<u8> = (0..48)
            .step_by(2)
            .map(|i| u8::from_str_radix(&token[i..i + 2], 16).ok())
            .collect::<Option<_>>()?;
        let micros = i64::from_be_bytes(bytes[..8].try_into().ok()?);
        // Issued tokens hold real creation times; anything outside
        // 1970..10000 is forged and would only make the query fail.
        if !(0..253_402_300_800_000_000).contains(&micros) {
            return None;
        }
        Some(Self {
            create_time: DateTime::from_timestamp_micros(micros)?,
            order_id: Uuid::from_slice(&bytes[8..]).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_to_the_microsecond() {
        let position = Position {
            create_time: DateTime::from_timestamp_micros(1_764_120_000_123_456).unwrap(),
            order_id: Uuid::now_v7(),
        };
        assert_eq!(Position::from_token(&position.to_token()), Some(position));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = Position {
            create_time: Utc::now(),
            order_id: Uuid::now_v7(),
        }
        .to_token();
        for bad in [
            "",
            "abc",
            &good[..47],
            &format!("{good}0"),
            &good.replace(&good[..2], "zz"),
            "é".repeat(24).as_str(),
        ] {
            assert_eq!(Position::from_token(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn page_sizes_default_clamp_and_refuse_negatives() {
        assert_eq!(page_size(0), Some(50));
        assert_eq!(page_size(7), Some(7));
        assert_eq!(page_size(10_000), Some(500));
        assert_eq!(page_size(-1), None);
    }
}
