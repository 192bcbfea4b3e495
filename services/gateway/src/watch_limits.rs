//! Bounds on open WatchOrder streams: a few per caller, a cap for the whole
//! gateway, and a longest life for each, so no caller can hold the
//! gateway's (and the order service's) streams for everyone else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oms_common::auth::Caller;
use oms_common::config::{ConfigError, parse_in_range};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchLimitConfig {
    /// Open watches one caller (token subject) may hold.
    pub per_caller: usize,
    /// Open watches the gateway holds in all.
    pub total: usize,
    /// The longest a watch lives; it then ends DEADLINE_EXCEEDED, as a
    /// caller's own deadline would end it, and the caller may watch again.
    pub max_age: Duration,
}

impl WatchLimitConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let default = Self::default();
        Ok(Self {
            per_caller: parse_in_range(
                "GATEWAY_WATCHES_PER_CALLER",
                default.per_caller,
                1..=10_000,
            )?,
            total: parse_in_range("GATEWAY_MAX_WATCHES", default.total, 1..=1_000_000)?,
            max_age: Duration::from_secs(parse_in_range(
                "GATEWAY_WATCH_MAX_AGE_SECONDS",
                default.max_age.as_secs(),
                1..=86_400,
            )?),
        })
    }
}

impl Default for WatchLimitConfig {
    fn default() -> Self {
        Self {
            per_caller: 20,
            total: 5_000,
            max_age: Duration::from_secs(600),
        }
    }
}

/// Why a watch was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WatchRefused {
    #[error("this caller has {0} watches open, the most allowed; close one first")]
    CallerAtLimit(usize),
    #[error("the gateway has {0} watches open, the most it holds; retry later")]
    GatewayAtLimit(usize),
}

#[derive(Default)]
struct Open {
    by_caller: HashMap<String, usize>,
    total: usize,
}

pub struct WatchLimits {
    config: WatchLimitConfig,
    open: Mutex<Open>,
}

/// One open watch's place; given back when the stream is dropped, however
/// it ends.
pub struct WatchPermit {
    limits: Arc<WatchLimits>,
    /// `None` for a caller not checked (authentication off): counted in the
    /// total only.
    caller: Option<String>,
}

impl WatchLimits {
    pub fn new(config: WatchLimitConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            open: Mutex::new(Open::default()),
        })
    }

    pub fn max_age(&self) -> Duration {
        self.config.max_age
    }

    pub fn acquire(self: &Arc<Self>, caller: &Caller) -> Result<WatchPermit, WatchRefused> {
        let mut open = self.lock();
        if open.total >= self.config.total {
            return Err(WatchRefused::GatewayAtLimit(open.total));
        }
        let subject = caller.subject().map(str::to_owned);
        if let Some(subject) = &subject {
            let held = open.by_caller.get(subject).copied().unwrap_or(0);
            if held >= self.config.per_caller {
                return Err(WatchRefused::CallerAtLimit(held));
            }
            open.by_caller.insert(subject.clone(), held + 1);
        }
        open.total += 1;
        Ok(WatchPermit {
            limits: Arc::clone(self),
            caller: subject,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for WatchPermit {
    fn drop(&mut self) {
        let mut open = self.limits.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(caller) = &self.caller
            && let Some(held) = open.by_caller.get_mut(caller)
        {
            *held -= 1;
            if *held == 0 {
                open.by_caller.remove(caller);
            }
        }
    }
}
