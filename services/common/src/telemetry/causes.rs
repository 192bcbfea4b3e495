//! Which trace an outbox event continues. While a consumer applies a batch,
//! each record's span is the cause of the events written under the
//! record's key (an order's events are keyed by its id), so an event links
//! to the record that caused it even though a handler applies the whole
//! batch at once. Elsewhere the current span is the cause.
//!
//! The context goes into the event's headers when the outbox row is written,
//! in the business transaction, so it survives until the relay publishes
//! the row, whichever process that turns out to be.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;

use opentelemetry::Context;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::propagation::{self, inject_into_record};

/// The span context of each record of a batch, by record key.
pub type Causes = HashMap<Vec<u8>, Context>;

tokio::task_local! {
    static CAUSES: Causes;
}

/// Runs `work` (a batch's transaction) with `causes` in force.
pub async fn with_causes<F: Future>(causes: Causes, work: F) -> F::Output {
    CAUSES.scope(causes, work).await
}

/// The cause of an event keyed by `key`.
fn cause_of(key: &[u8]) -> Context {
    CAUSES
        .try_with(|causes| causes.get(key).cloned())
        .ok()
        .flatten()
        .unwrap_or_else(|| tracing::Span::current().context())
}

/// Writes the trace context of `key`'s cause into an event's headers.
pub fn inject_cause(key: &[u8], headers: &mut BTreeMap<String, Vec<u8>>) {
    if propagation::is_enabled() {
        inject_into_record(&cause_of(key), headers);
    }
}

/// `key`'s cause as `traceparent` text, to store with work that goes on
/// later in another task.
pub fn traceparent_of(key: &[u8]) -> Option<String> {
    if !propagation::is_enabled() {
        return None;
    }
    propagation::to_traceparent(&cause_of(key))
}
