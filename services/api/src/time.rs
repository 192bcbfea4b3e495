//! Conversions between the API's `google.protobuf.Timestamp` and chrono.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

pub fn to_timestamp(time: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

/// `None` for a timestamp outside chrono's range or with negative nanos.
pub fn from_timestamp(timestamp: &Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(timestamp.nanos).ok()?;
    DateTime::from_timestamp(timestamp.seconds, nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_to_the_nanosecond() {
        let time = DateTime::from_timestamp(1_764_120_000, 123_456_789).unwrap();
        assert_eq!(from_timestamp(&to_timestamp(time)), Some(time));
    }

    #[test]
    fn negative_nanos_are_refused() {
        let bad = Timestamp {
            seconds: 1,
            nanos: -1,
        };
        assert_eq!(from_timestamp(&bad), None);
    }
}
