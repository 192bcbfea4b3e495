//! The settlement worker: takes PENDING payments to the provider, outside
//! any database transaction, and records each outcome with its event.
//!
//! The order id is the provider's idempotency key, so asking again (after a
//! timeout, a failed call, a restart, or a second settler) can never charge
//! an order twice: the provider answers a known key with its first
//! decision. No row is locked during a call. An outcome is written by an
//! UPDATE that only moves a PENDING payment, in the transaction that
//! writes its `payment-succeeded` or `payment-failed` outbox row, so each
//! payment is settled and announced once. Calls run concurrently; the
//! outcomes that are in at the same moment share one transaction, written
//! by the worker itself, so settling uses one connection at a time.
//!
//! A call is bounded by `PAYMENT_PROVIDER_TIMEOUT_MS` (default 2000); calls
//! that time out, fail or panic are counted in the row as unanswered and
//! retried with backoff, and after `PAYMENT_PROVIDER_MAX_ATTEMPTS` (default
//! 5) the payment is DECLINED with [`UNANSWERED_REASON`], so its order is
//! cancelled, not left waiting on a silent provider. A call cut off by our
//! own stop or crash is asked again and never counts: only a process that
//! crashes on every call to one payment could keep it waiting. The worker
//! wakes after each committed batch of requests and sweeps every 500 ms,
//! which settles payments left PENDING by a process that stopped or crashed
//! mid-call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use diesel_async::AsyncConnection;
use tokio::sync::Notify;
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use oms_api::money;
use oms_api::orders::events::v1::{PaymentFailed, PaymentSucceeded};
use oms_common::config::{ConfigError, parse_in_range};
use oms_common::db::{DbError, DbPool};
use oms_common::outbox::{self, OutboxMessage};
use oms_common::retry::{Backoff, retry_until_ok};

use crate::provider::{Charge, Decision, PaymentProvider};
use crate::repository::{self, AfterUnanswered, PaymentRow, STATUS_COMPLETED, STATUS_DECLINED};

/// The decline reason of a payment whose provider never answered.
pub const UNANSWERED_REASON: &str = "payment provider did not answer";

/// Payments being settled at once, each waiting on its own provider call.
const MAX_IN_FLIGHT: usize = 64;
/// How often the worker looks for pending payments nobody woke it for.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// The pause after the first unanswered call; it doubles after each.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// How long to wait for the provider and how often to ask.
#[derive(Debug, Clone, Copy)]
pub struct ProviderPolicy {
    /// The longest one call may take; a later answer counts as none.
    pub timeout: Duration,
    /// Calls that may go unanswered before the payment is declined.
    pub max_attempts: i32,
}

impl Default for ProviderPolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(2_000),
            max_attempts: 5,
        }
    }
}

impl ProviderPolicy {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            timeout: Duration::from_millis(parse_in_range(
                "PAYMENT_PROVIDER_TIMEOUT_MS",
                2_000,
                1..=60_000,
            )?),
            max_attempts: parse_in_range("PAYMENT_PROVIDER_MAX_ATTEMPTS", 5, 1..=100)?,
        })
    }
}

/// What the provider said, if anything.
#[derive(Debug)]
enum Outcome {
    Answered(Decision),
    Unanswered,
}

impl Outcome {
    /// The payment's new status and decline reason, and the answered calls
    /// to count.
    fn changes(&self) -> (&'static str, Option<String>) {
        match self {
            Outcome::Answered(Decision::Approved) => (STATUS_COMPLETED, None),
            // PostgreSQL text cannot hold NUL, whatever a provider sends.
            Outcome::Answered(Decision::Declined { reason }) => {
                (STATUS_DECLINED, Some(reason.replace('\0', "")))
            }
            Outcome::Unanswered => (STATUS_DECLINED, Some(UNANSWERED_REASON.to_owned())),
        }
    }
}

/// An order's outcome, ready to record.
type Answer = (Uuid, Outcome);

/// What one claim found: payments whose next call is counted, and payments
/// out of calls, answered already.
struct Claimed {
    calls: Vec<PaymentRow>,
    out_of_calls: Vec<Answer>,
}

pub struct Settlement<P> {
    pub pool: DbPool,
    pub provider: P,
    pub policy: ProviderPolicy,
    /// Full names of the `payment-succeeded` and `payment-failed` topics.
    pub payment_succeeded_topic: String,
    pub payment_failed_topic: String,
    pub source: &'static str,
    /// Notified after a commit that wrote an outbox row.
    pub relay_wakeup: Arc<Notify>,
}

impl<P: PaymentProvider> Settlement<P> {
    /// Settles pending payments until `shutdown`, waking on `wakeup` and on
    /// a timer. At shutdown, calls in flight are abandoned: their payments
    /// stay PENDING and are settled, under the same key, after a restart.
    pub async fn run(self: Arc<Self>, wakeup: Arc<Notify>, shutdown: CancellationToken) {
        let mut tasks = JoinSet::new();
        // Payments asked about and not recorded yet, which a read must skip.
        let mut in_flight: HashMap<Id, Uuid> = HashMap::new();
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = Backoff::transient();
        let mut look = true;
        let mut ever_read = false;
        'work: loop {
            if look && in_flight.len() < MAX_IN_FLIGHT {
                let busy: Vec<Uuid> = in_flight.values().copied().collect();
                let room = MAX_IN_FLIGHT - in_flight.len();
                match self.claim(&busy, room as i64).await {
                    Ok(Claimed {
                        calls,
                        out_of_calls,
                    }) => {
                        ever_read = true;
                        backoff.reset();
                        // A full page may have more behind it.
                        look = calls.len() + out_of_calls.len() == room;
                        for payment in calls {
                            let order_id = payment.order_id;
                            let task = Arc::clone(&self).ask(payment, shutdown.clone());
                            in_flight.insert(tasks.spawn(task).id(), order_id);
                        }
                        if !out_of_calls.is_empty()
                            && self
                                .record_answers(&out_of_calls, &shutdown)
                                .await
                                .is_none()
                        {
                            break;
                        }
                    }
                    Err(err) => {
                        // Until the first read, the shared runner may still
                        // be migrating; it reports the database itself.
                        if ever_read {
                            tracing::warn!(error = %err, "cannot read pending payments");
                        } else {
                            tracing::debug!(error = %err, "cannot read pending payments yet");
                        }
                        // A committed batch shows the database is back.
                        tokio::select! {
                            _ = tokio::time::sleep(backoff.next_delay()) => continue,
                            _ = wakeup.notified() => continue,
                            _ = shutdown.cancelled() => break,
                        }
                    }
                }
            }
            tokio::select! {
                _ = wakeup.notified() => look = true,
                _ = sweep.tick() => look = true,
                Some(first) = tasks.join_next_with_id() => {
                    let mut answers = Vec::new();
                    let mut joined = Some(first);
                    while let Some(result) = joined {
                        match result {
                            Ok((id, answer)) => {
                                in_flight.remove(&id);
                                answers.extend(answer);
                            }
                            Err(err) => {
                                tracing::error!(error = %err, "payment settlement task failed");
                                // Counted as a call without an answer, so a
                                // payment whose call always panics is
                                // declined in the end, not retried forever.
                                if let Some(order_id) = in_flight.remove(&err.id())
                                    && err.is_panic()
                                    && retry_until_ok("the database to count a failed call", &shutdown, || async {
                                        self.count_unanswered(order_id).await.map_err(anyhow::Error::from)
                                    })
                                    .await
                                    .is_none()
                                {
                                    break 'work;
                                }
                            }
                        }
                        joined = tasks.try_join_next_with_id();
                    }
                    // Recorded before the next read, which would otherwise
                    // find these payments pending and ask again.
                    if !answers.is_empty() && self.record_answers(&answers, &shutdown).await.is_none() {
                        break;
                    }
                }
                _ = shutdown.cancelled() => break,
            }
        }
        // The tasks see the same shutdown and return without waiting on the
        // provider; what they learnt is asked again after a restart.
        while tasks.join_next().await.is_some() {}
    }

    /// Settles every payment pending now and returns how many; for callers
    /// that run the service's transactions without the worker (the
    /// benchmark).
    pub async fn settle_all_pending(self: &Arc<Self>) -> Result<usize, DbError> {
        let never = CancellationToken::new();
        let mut settled = 0;
        loop {
            let Claimed {
                calls,
                out_of_calls,
            } = self.claim(&[], MAX_IN_FLIGHT as i64).await?;
            if calls.is_empty() && out_of_calls.is_empty() {
                return Ok(settled);
            }
            let mut tasks = JoinSet::new();
            for payment in calls {
                tasks.spawn(Arc::clone(self).ask(payment, never.clone()));
            }
            let mut answers = out_of_calls;
            while let Some(joined) = tasks.join_next().await {
                match joined {
                    Ok(answer) => answers.extend(answer),
                    // A payment left pending would be read again forever.
                    Err(err) => std::panic::resume_unwind(err.into_panic()),
                }
            }
            settled += self.record(&answers).await?.len();
        }
    }

    /// Asks the provider about one payment; `None` at shutdown or when the
    /// payment was settled meanwhile.
    async fn ask(
        self: Arc<Self>,
        payment: PaymentRow,
        shutdown: CancellationToken,
    ) -> Option<Answer> {
        let outcome = self.ask_provider(&payment, &shutdown).await?;
        Some((payment.order_id, outcome))
    }

    /// Records the answers, retrying while the database fails; `None` if
    /// shutdown comes first, leaving the payments pending.
    async fn record_answers(&self, answers: &[Answer], shutdown: &CancellationToken) -> Option<()> {
        let settled = retry_until_ok("the database to record payments", shutdown, || async {
            self.record(answers).await.map_err(anyhow::Error::from)
        })
        .await?;
        for row in &settled {
            match &row.decline_reason {
                None => {
                    tracing::info!(order_id = %row.order_id, payment_id = %row.payment_id, "payment completed");
                }
                Some(reason) => {
                    tracing::info!(order_id = %row.order_id, payment_id = %row.payment_id, %reason, "payment declined");
                }
            }
        }
        if settled.len() < answers.len() {
            tracing::debug!(
                count = answers.len() - settled.len(),
                "payments already settled elsewhere"
            );
        }
        Some(())
    }

    /// Calls the provider until it answers or `max_attempts` calls went
    /// unanswered; `None` at shutdown or when the payment is settled
    /// meanwhile. Each call is counted in the database before it is made:
    /// the first by the claim that read `payment`, the others here. A call
    /// that times out or fails is counted as unanswered at once; one cut
    /// off by shutdown or a crash never is, so restarts cannot decline a
    /// payment the provider may have charged.
    async fn ask_provider(
        &self,
        payment: &PaymentRow,
        shutdown: &CancellationToken,
    ) -> Option<Outcome> {
        let order_id = payment.order_id;
        let max_attempts = self.policy.max_attempts;
        let mut backoff = Backoff::new(FIRST_RETRY_DELAY, MAX_RETRY_DELAY);
        let mut attempt = payment.attempts;
        loop {
            let charge = Charge {
                customer_id: &payment.customer_id,
                amount_minor: payment.amount_minor,
                currency_code: &payment.currency_code,
            };
            let call =
                tokio::time::timeout(self.policy.timeout, self.provider.charge(order_id, charge));
            let error = tokio::select! {
                answer = call => match answer {
                    Ok(Ok(decision)) => return Some(Outcome::Answered(decision)),
                    Ok(Err(err)) => err.to_string(),
                    Err(_) => format!("no answer within {} ms", self.policy.timeout.as_millis()),
                },
                _ = shutdown.cancelled() => return None,
            };
            tracing::warn!(%order_id, attempt, max_attempts, %error, "payment provider call failed");
            // Counted before the pause, so that a stop during it cannot
            // lose a call that really went unanswered.
            let after = retry_until_ok(
                "the database to count an unanswered provider call",
                shutdown,
                || async {
                    self.count_unanswered(order_id)
                        .await
                        .map_err(anyhow::Error::from)
                },
            )
            .await?;
            match after {
                AfterUnanswered::CallAgain => {}
                AfterUnanswered::Settled => {
                    tracing::debug!(%order_id, "payment settled meanwhile");
                    return None;
                }
                AfterUnanswered::OutOfCalls => {
                    tracing::error!(%order_id, max_attempts, "payment provider did not answer, declining the payment");
                    return Some(Outcome::Unanswered);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff.next_delay()) => {}
                _ = shutdown.cancelled() => return None,
            }
            let counted = retry_until_ok(
                "the database to count a provider call",
                shutdown,
                || async { self.count_call(order_id).await.map_err(anyhow::Error::from) },
            )
            .await?;
            let Some(counted) = counted else {
                // The sweep declines it if it ran out of calls meanwhile.
                tracing::debug!(%order_id, "payment settled or out of calls meanwhile");
                return None;
            };
            attempt = counted;
        }
    }

    /// Claims the first call of up to `limit` pending payments (except
    /// `skip`), and finds those out of calls, which are declined.
    async fn claim(&self, skip: &[Uuid], limit: i64) -> Result<Claimed, DbError> {
        let max_unanswered = self.policy.max_attempts;
        let mut conn = self.pool.get().await?;
        let calls = repository::claim_calls(&mut conn, skip, limit, max_unanswered).await?;
        let room = limit - calls.len() as i64;
        let out_of_calls = if room > 0 {
            repository::out_of_calls(&mut conn, skip, room, max_unanswered).await?
        } else {
            Vec::new()
        };
        for payment in &out_of_calls {
            tracing::error!(order_id = %payment.order_id, max_unanswered, "payment provider did not answer, declining the payment");
        }
        Ok(Claimed {
            calls,
            out_of_calls: out_of_calls
                .into_iter()
                .map(|payment| (payment.order_id, Outcome::Unanswered))
                .collect(),
        })
    }

    async fn count_unanswered(&self, order_id: Uuid) -> Result<AfterUnanswered, DbError> {
        let mut conn = self.pool.get().await?;
        Ok(repository::count_unanswered(&mut conn, order_id, self.policy.max_attempts).await?)
    }

    async fn count_call(&self, order_id: Uuid) -> Result<Option<i32>, DbError> {
        let mut conn = self.pool.get().await?;
        Ok(repository::count_call(&mut conn, order_id, self.policy.max_attempts).await?)
    }

    /// Records the outcomes and their events in one transaction, for the
    /// payments still pending; returns the rows it settled.
    async fn record(&self, answers: &[Answer]) -> Result<Vec<PaymentRow>, DbError> {
        let mut conn = self.pool.get().await?;
        let settled = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                let mut settled = Vec::with_capacity(answers.len());
                for (order_id, outcome) in answers {
                    let (status, reason) = outcome.changes();
                    let row =
                        repository::settle(conn, *order_id, status, reason.as_deref()).await?;
                    settled.extend(row);
                }
                let events: Vec<OutboxMessage> =
                    settled.iter().map(|row| self.announce(row)).collect();
                outbox::enqueue(conn, &events).await?;
                Ok(settled)
            })
            .await?;
        if !settled.is_empty() {
            self.relay_wakeup.notify_one();
        }
        Ok(settled)
    }

    /// The event that tells the others how the payment went.
    fn announce(&self, payment: &PaymentRow) -> OutboxMessage {
        let time = Some(oms_api::time::to_timestamp(Utc::now()));
        let amount = Some(money::from_minor_units(
            &payment.currency_code,
            payment.amount_minor,
        ));
        let order_id = payment.order_id.to_string();
        match &payment.decline_reason {
            None => {
                let event = PaymentSucceeded {
                    order_id: order_id.clone(),
                    payment_id: payment.payment_id.to_string(),
                    customer_id: payment.customer_id.clone(),
                    amount,
                    complete_time: time,
                };
                OutboxMessage::event(
                    self.payment_succeeded_topic.clone(),
                    self.source,
                    &order_id,
                    &event,
                )
                .continuing(payment.trace_parent.as_deref())
            }
            Some(reason) => {
                let event = PaymentFailed {
                    order_id: order_id.clone(),
                    customer_id: payment.customer_id.clone(),
                    amount,
                    reason: reason.clone(),
                    fail_time: time,
                };
                OutboxMessage::event(
                    self.payment_failed_topic.clone(),
                    self.source,
                    &order_id,
                    &event,
                )
                .continuing(payment.trace_parent.as_deref())
            }
        }
    }
}
