//! Per-caller rate limits: calls per second for each authenticated subject
//! (or, with authentication off, each peer address), writes and reads
//! apart, so one caller cannot take the capacity everyone shares.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

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
    /// Calls refused for their token per second per peer address; beyond
    /// it the peer's calls are refused before any signature is checked.
    pub failed_auth_per_second: u32,
}

impl RateLimitConfig {
    pub const UNLIMITED: Self = Self {
        writes_per_second: 0,
        reads_per_second: 0,
        failed_auth_per_second: 0,
    };

    /// `RATE_LIMIT_WRITES_PER_SECOND` (default 50),
    /// `RATE_LIMIT_READS_PER_SECOND` (default 200) and
    /// `RATE_LIMIT_FAILED_AUTH_PER_SECOND` (default 20), 0 to 100000.
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            writes_per_second: parse_in_range("RATE_LIMIT_WRITES_PER_SECOND", 50, 0..=100_000)?,
            reads_per_second: parse_in_range("RATE_LIMIT_READS_PER_SECOND", 200, 0..=100_000)?,
            failed_auth_per_second: parse_in_range(
                "RATE_LIMIT_FAILED_AUTH_PER_SECOND",
                20,
                0..=100_000,
            )?,
        })
    }
}

/// The limiters of one process. Callers' states are forgotten once they
/// are idle long enough to have their whole burst back, so the memory
/// follows the callers active in the last second or so.
pub struct RateLimits {
    writes: Option<DefaultKeyedRateLimiter<String>>,
    reads: Option<DefaultKeyedRateLimiter<String>>,
    failed_auth: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Peers over their failed-authentication budget, until when.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    clock: DefaultClock,
    checks: AtomicU64,
    failures: AtomicU64,
}

fn limiter<K: Hash + Eq + Clone>(per_second: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    NonZeroU32::new(per_second).map(|rate| DefaultKeyedRateLimiter::keyed(Quota::per_second(rate)))
}

/// The address a peer is counted under: itself for IPv4, its /64 network
/// for IPv6, since one host can use a whole /64 of addresses.
fn network_of(peer: IpAddr) -> IpAddr {
    // An IPv4 client of a dual-stack listener arrives as ::ffff:a.b.c.d.
    let peer = peer.to_canonical();
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => {
            let [a, b, c, d, ..] = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
        }
    }
}

/// How often the limiters forget idle callers, in checks.
const FORGET_EVERY: u64 = 10_000;

impl RateLimits {
    pub fn new(config: RateLimitConfig) -> Self {
        Self {
            writes: limiter(config.writes_per_second),
            reads: limiter(config.reads_per_second),
            failed_auth: limiter(config.failed_auth_per_second),
            blocked: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// How long `peer` is still refused for failing authentication too
    /// often, if it is.
    pub fn peer_blocked(&self, peer: IpAddr) -> Option<Duration> {
        self.failed_auth.as_ref()?;
        let blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        let until = blocked.get(&network_of(peer))?;
        until.checked_duration_since(Instant::now())
    }

    /// Counts a call of `peer` refused for its token; past the budget the
    /// peer is refused until the budget refills.
    pub fn count_failed_auth(&self, peer: IpAddr) {
        let Some(limiter) = &self.failed_auth else {
            return;
        };
        if self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(FORGET_EVERY)
        {
            limiter.retain_recent();
        }
        if let Err(not_until) = limiter.check_key(&network_of(peer)) {
            let wait = not_until.wait_time_from(self.clock.now());
            let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
            blocked.insert(network_of(peer), now + wait);
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
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(FORGET_EVERY)
        {
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
            failed_auth_per_second: 0,
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

    #[test]
    fn a_peer_failing_authentication_too_often_is_refused_for_a_while() {
        let limits = RateLimits::new(RateLimitConfig {
            failed_auth_per_second: 2,
            ..RateLimitConfig::UNLIMITED
        });
        let (noisy, quiet): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        limits.count_failed_auth(noisy);
        limits.count_failed_auth(noisy);
        assert_eq!(limits.peer_blocked(noisy), None, "within its budget");
        limits.count_failed_auth(noisy);
        let blocked = limits.peer_blocked(noisy).expect("over its budget");
        assert!(blocked <= Duration::from_millis(500), "{blocked:?}");
        assert_eq!(limits.peer_blocked(quiet), None);
        std::thread::sleep(blocked);
        assert_eq!(limits.peer_blocked(noisy), None, "the budget refilled");
    }

    #[test]
    fn ipv4_clients_of_a_dual_stack_listener_are_counted_apart() {
        let first: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let second: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        assert_ne!(network_of(first), network_of(second));
        assert_eq!(network_of(first), IpAddr::from([10, 0, 0, 1]));
        let (a, b): (IpAddr, IpAddr) = (
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        );
        assert_eq!(network_of(a), network_of(b), "one /64");
    }
}
