//! The payment provider: who decides whether a payment goes through.
//!
//! A provider is called outside any database transaction, with the order id
//! as the idempotency key. A key it has seen answers with that key's first
//! decision and charges nothing again, so calling again after a lost answer
//! or a crash can never charge an order twice. A real provider plugs in by
//! implementing [`PaymentProvider`] over its own idempotent API.
//!
//! The built-in provider is a deterministic simulator, so the whole flow,
//! declines included, can run and be tested without an outside service. It
//! declines when the amount exceeds `PAYMENT_DECLINE_ABOVE` (a decimal in
//! the order's currency, default 10000.00) or the customer is listed in
//! `PAYMENT_DECLINE_CUSTOMERS` (comma-separated, default none). It keeps a
//! [`Ledger`] of calls and decisions per key, shared by its clones.
//!
//! `PAYMENT_SIMULATOR_FAULT` makes it misbehave, to exercise the caller:
//! - `none` (the default): every call answers at once;
//! - `slow:<ms>`: every call answers after `<ms>` milliseconds;
//! - `fail:<n>`: the first `n` calls for each key fail, charging nothing;
//! - `timeout:<n>`: the first `n` calls for each key charge and then never
//!   answer, as when the answer is lost on its way back.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use uuid::Uuid;

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

/// A call that got no decision; whether it charged is unknown, so the
/// caller asks again with the same key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("payment provider is unavailable: {0}")]
    Unavailable(String),
}

pub trait PaymentProvider: Send + Sync + 'static {
    /// Charges the payment, once per `idempotency_key`: a key seen before
    /// answers with its first decision and charges nothing. May never
    /// answer; the caller bounds it with a timeout.
    fn charge(
        &self,
        idempotency_key: Uuid,
        charge: Charge<'_>,
    ) -> impl Future<Output = Result<Decision, ProviderError>> + Send;
}

/// How the simulator misbehaves (`PAYMENT_SIMULATOR_FAULT`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fault {
    #[default]
    None,
    Slow(Duration),
    Fail(u32),
    Timeout(u32),
    /// The first n calls per key panic in the caller's task, as a bug in a
    /// provider's client would.
    Panic(u32),
}

impl Fault {
    fn parse(raw: &str) -> Option<Self> {
        if raw == "none" {
            return Some(Self::None);
        }
        let (kind, number) = raw.split_once(':')?;
        let number: u32 = number.parse().ok()?;
        match kind {
            "slow" => Some(Self::Slow(Duration::from_millis(number.into()))),
            "fail" => Some(Self::Fail(number)),
            "timeout" => Some(Self::Timeout(number)),
            "panic" => Some(Self::Panic(number)),
            _ => None,
        }
    }
}

/// What the simulator remembers per idempotency key. Clones share it, so a
/// test keeps one and reads what the running service did.
#[derive(Debug, Clone, Default)]
pub struct Ledger(Arc<Mutex<HashMap<Uuid, KeyEntry>>>);

#[derive(Debug, Default)]
struct KeyEntry {
    calls: u32,
    charges: u32,
    decision: Option<Decision>,
}

impl Ledger {
    /// Calls made with the key, answered or not.
    pub fn calls(&self, key: Uuid) -> u32 {
        self.lock().get(&key).map_or(0, |entry| entry.calls)
    }

    /// Decisions taken for the key; a repeated key replays its decision and
    /// is not counted again.
    pub fn charges(&self, key: Uuid) -> u32 {
        self.lock().get(&key).map_or(0, |entry| entry.charges)
    }

    /// The key's decision, once a call for it has charged.
    pub fn decision(&self, key: Uuid) -> Option<Decision> {
        self.lock()
            .get(&key)
            .and_then(|entry| entry.decision.clone())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, KeyEntry>> {
        // Entries are updated whole, so a panic elsewhere leaves them valid.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug, Clone)]
pub struct SimulatedProvider {
    pub decline_above_minor: i64,
    pub decline_customers: HashSet<String>,
    pub fault: Fault,
    pub ledger: Ledger,
}

impl Default for SimulatedProvider {
    fn default() -> Self {
        Self {
            decline_above_minor: 1_000_000,
            decline_customers: HashSet::new(),
            fault: Fault::None,
            ledger: Ledger::default(),
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
        let fault = match var("PAYMENT_SIMULATOR_FAULT") {
            None => Fault::None,
            Some(raw) => Fault::parse(raw.trim()).ok_or_else(|| {
                ConfigError::new(
                    "PAYMENT_SIMULATOR_FAULT",
                    &raw,
                    "expected none, slow:<ms>, fail:<n>, timeout:<n> or panic:<n>",
                )
            })?,
        };
        Ok(Self {
            decline_above_minor,
            decline_customers,
            fault,
            ledger: Ledger::default(),
        })
    }

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

    /// Records the call under its key and works out its answer; no await
    /// happens while the ledger is locked.
    fn answer(&self, key: Uuid, charge: Charge<'_>) -> Answer {
        let mut ledger = self.ledger.lock();
        let entry = ledger.entry(key).or_default();
        entry.calls += 1;
        let calls = entry.calls;
        if matches!(self.fault, Fault::Fail(n) if calls <= n) {
            return Answer::Fail;
        }
        if matches!(self.fault, Fault::Panic(n) if calls <= n) {
            return Answer::Panic;
        }
        let decision = match &entry.decision {
            Some(first) => first.clone(),
            None => {
                let decision = self.decide(charge);
                entry.charges += 1;
                entry.decision = Some(decision.clone());
                decision
            }
        };
        tracing::debug!(idempotency_key = %key, calls, ?decision, "simulated provider called");
        match self.fault {
            Fault::Timeout(n) if calls <= n => Answer::Lost,
            Fault::Slow(delay) => Answer::Late(decision, delay),
            _ => Answer::Now(decision),
        }
    }
}

enum Answer {
    Now(Decision),
    Late(Decision, Duration),
    Fail,
    Lost,
    Panic,
}

impl PaymentProvider for SimulatedProvider {
    async fn charge(
        &self,
        idempotency_key: Uuid,
        charge: Charge<'_>,
    ) -> Result<Decision, ProviderError> {
        match self.answer(idempotency_key, charge) {
            Answer::Now(decision) => Ok(decision),
            Answer::Late(decision, delay) => {
                tokio::time::sleep(delay).await;
                Ok(decision)
            }
            Answer::Fail => Err(ProviderError::Unavailable("simulated failure".into())),
            Answer::Lost => std::future::pending().await,
            // Outside the ledger's lock, which stays usable.
            Answer::Panic => panic!("simulated provider client panicked"),
        }
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
    fn faults_parse_from_their_documented_spelling() {
        assert_eq!(Fault::parse("none"), Some(Fault::None));
        assert_eq!(
            Fault::parse("slow:250"),
            Some(Fault::Slow(Duration::from_millis(250)))
        );
        assert_eq!(Fault::parse("fail:2"), Some(Fault::Fail(2)));
        assert_eq!(Fault::parse("timeout:1"), Some(Fault::Timeout(1)));
        assert_eq!(Fault::parse("panic:3"), Some(Fault::Panic(3)));
        for bad in ["", "slow", "slow:", "fail:-1", "timeout:x", "crash:1"] {
            assert_eq!(Fault::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn simulator_declines_above_the_limit_and_listed_customers() {
        let provider = SimulatedProvider {
            decline_above_minor: 10_000,
            decline_customers: ["mallory".to_owned()].into(),
            ..SimulatedProvider::default()
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

    #[tokio::test]
    async fn a_repeated_key_replays_its_first_decision_without_charging_again() {
        let provider = SimulatedProvider {
            decline_above_minor: 10_000,
            ..SimulatedProvider::default()
        };
        let key = Uuid::now_v7();
        assert_eq!(
            provider.charge(key, charge("alice", 1)).await,
            Ok(Decision::Approved)
        );
        // Same key, different contents: still the first decision.
        assert_eq!(
            provider.charge(key, charge("alice", 99_999)).await,
            Ok(Decision::Approved)
        );
        assert_eq!(
            (provider.ledger.calls(key), provider.ledger.charges(key)),
            (2, 1)
        );
    }

    #[tokio::test]
    async fn failing_calls_charge_nothing_and_lost_answers_charge_once() {
        let failing = SimulatedProvider {
            fault: Fault::Fail(1),
            ..SimulatedProvider::default()
        };
        let key = Uuid::now_v7();
        assert!(failing.charge(key, charge("bob", 1)).await.is_err());
        assert_eq!(failing.ledger.decision(key), None);
        assert_eq!(
            failing.charge(key, charge("bob", 1)).await,
            Ok(Decision::Approved)
        );

        let losing = SimulatedProvider {
            fault: Fault::Timeout(1),
            ..SimulatedProvider::default()
        };
        let lost = tokio::time::timeout(
            Duration::from_millis(20),
            losing.charge(key, charge("bob", 1)),
        )
        .await;
        assert!(lost.is_err(), "the first call never answers");
        assert_eq!(losing.ledger.decision(key), Some(Decision::Approved));
        assert_eq!(
            losing.charge(key, charge("bob", 1)).await,
            Ok(Decision::Approved)
        );
        assert_eq!(
            (losing.ledger.calls(key), losing.ledger.charges(key)),
            (2, 1)
        );
    }
}
