//! What the gateway reports to Prometheus beside its gRPC calls: how
//! publishing `order-created` goes.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{HistogramVec, IntCounter};

use oms_common::batching::ProduceError;
use oms_common::metrics;

static PUBLISH_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    metrics::histogram_vec(
        "oms_gateway_publish_duration_seconds",
        "Time from handing an order-created record to the producer to the broker's answer, by outcome (acknowledged or failed).",
        &["outcome"],
        metrics::LATENCY_BUCKETS,
    )
});

/// CreateOrder calls answered UNAVAILABLE because the record could not be
/// published.
pub static PUBLISH_UNAVAILABLE: LazyLock<IntCounter> = LazyLock::new(|| {
    metrics::counter(
        "oms_gateway_publish_unavailable_total",
        "CreateOrder calls answered UNAVAILABLE because the broker did not acknowledge the order in time.",
    )
});

/// Registers the gateway's metrics, so that each is served (at 0) before
/// it first moves.
pub fn describe() {
    LazyLock::force(&PUBLISH_UNAVAILABLE);
    oms_common::batching::describe_metrics();
    for outcome in ["acknowledged", "failed"] {
        PUBLISH_DURATION.with_label_values(&[outcome]);
    }
}

/// One publish ended after `took` with `outcome`.
pub fn published(took: Duration, outcome: &Result<(), ProduceError>) {
    let label = if outcome.is_ok() {
        "acknowledged"
    } else {
        "failed"
    };
    PUBLISH_DURATION
        .with_label_values(&[label])
        .observe(took.as_secs_f64());
    if matches!(
        outcome,
        Err(ProduceError::DeadlinePassed | ProduceError::Broker(_) | ProduceError::Stopped)
    ) {
        PUBLISH_UNAVAILABLE.inc();
    }
}
