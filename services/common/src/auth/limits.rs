//! Per-caller rate limits: calls per second for each authenticated subject
//! (or, with authentication off, each peer address), writes and reads
//! apart, so one caller cannot take the capacity everyone shares.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use super::methods::Requirement;
use crate::config::{ConfigError, parse_in_range};

/// Calls per second per caller; 0 for no limit. A caller may spend a
/// second's worth at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub writes_per_second: u32,
    pub reads_per_second: u32,
}

impl RateLimitConfig {
    pub const UNLIMITED: Self = Self {
        writes_per_second: 0,
        reads_per_second: 0,
    };

    /// `RATE_LIMIT_WRITES_PER_SECOND` (default 50) and
    /// `RATE_LIMIT_READS_PER_SECOND` (default 200), 0 to 100000.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            writes_per_second: parse_in_range("RATE_LIMIT_WRITES_PER_SECOND", 50, 0..=100_000)?,
            reads_per_second: parse_in_range("RATE_LIMIT_READS_PER_SECOND", 200, 0..=100_000)?,
        })
    }
}

/// The limiters of one process. Callers' states are forgotten once they
/// are idle long enough to have their whole burst back, so the memory
/// follows the callers active in the last second or so.
pub struct RateLimits {
    writes: Option<DefaultKeyedRateLimiter<String>>,
    reads: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

fn limiter(per_second: u32) -> Option<DefaultKeyedRateLimiter<String>> {
    NonZeroU32::new(per_second).map(|rate| DefaultKeyedRateLimiter::keyed(Quota::per_second(rate)))
}

impl RateLimits {
    pub fn new(config: RateLimitConfig) -> Self {
        Self {
            writes: limiter(config.writes_per_second),
            reads: limiter(config.reads_per_second),
            clock: DefaultClock::default(),
        }
    }

    /// Counts a call by `caller`; `Err` holds how long until it would have
    /// been allowed.
    pub fn check(&self, requirement: Requirement, caller: &str) -> Result<(), Duration> {
        let limiter = match requirement {
            Requirement::Write => &self.writes,
            Requirement::Read => &self.reads,
            Requirement::Open | Requirement::Refused => &None,
        };
        let Some(limiter) = limiter else {
            return Ok(());
        };
        // Without this the keyed state keeps every caller ever seen.
        if limiter.len() > 10_000 {
            limiter.retain_recent();
        }
        limiter
            .check_key(&caller.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_over_its_limit_waits_while_another_goes_on() {
        let limits = RateLimits::new(RateLimitConfig {
            writes_per_second: 3,
            reads_per_second: 0,
        });
        for _ in 0..3 {
            assert!(limits.check(Requirement::Write, "alice").is_ok());
        }
        let wait = limits.check(Requirement::Write, "alice").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(334),
            "{wait:?}"
        );
        assert!(limits.check(Requirement::Write, "bob").is_ok());
        // Reads are unlimited here, and apart from writes.
        for _ in 0..100 {
            assert!(limits.check(Requirement::Read, "alice").is_ok());
        }
    }
}
