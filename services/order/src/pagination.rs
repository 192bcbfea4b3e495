//! Keyset pagination of orders, newest first, by `(create_time, order_id)`
//! (see `oms_common::pagination`). Orders that arrive later sort before any
//! position (they are newer), so they never shift a page.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use oms_common::pagination::{decode_token, encode_token};

/// Where a page starts: just after this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub create_time: DateTime<Utc>,
    pub order_id: Uuid,
}

impl Position {
    pub fn to_token(self) -> String {
        encode_token(self.create_time, self.order_id.as_bytes())
    }

    /// Reads a token made by `to_token`; `None` for anything else.
    pub fn from_token(token: &str) -> Option<Self> {
        let (create_time, key) = decode_token(token, 16)?;
        Some(Self {
            create_time,
            order_id: Uuid::from_slice(&key).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let position = Position {
            create_time: DateTime::from_timestamp_micros(1_764_120_000_123_456).unwrap(),
            order_id: Uuid::now_v7(),
        };
        assert_eq!(Position::from_token(&position.to_token()), Some(position));
        assert_eq!(Position::from_token("00"), None);
    }
}
