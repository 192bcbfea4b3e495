//! The order flow as Prometheus sees it: orders reaching a final status,
//! and how long each took from its create time (the gateway's clock, in
//! the order-created event) to that status.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use prometheus::{HistogramVec, IntCounterVec};

use oms_common::consumer::after_commit;
use oms_common::metrics;

use crate::repository::{STATUS_CANCELLED, STATUS_PAID};

static FINISHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "oms_orders_finished_total",
        "Orders that reached a final status, by that status (PAID or CANCELLED).",
        &["status"],
    )
});

static FLOW_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    metrics::histogram_vec(
        "oms_order_flow_duration_seconds",
        "Time from an order's create time to its final status, by that status.",
        &["status"],
        metrics::FLOW_BUCKETS,
    )
});

/// Registers the order-flow metrics for both final statuses, so that each
/// is served (at 0) before the first order reaches it.
pub fn describe() {
    for status in [STATUS_PAID, STATUS_CANCELLED] {
        FINISHED.with_label_values(&[status]);
        FLOW_DURATION.with_label_values(&[status]);
    }
}

/// An order created at `create_time` reached `status`; counted once the
/// batch that moved it commits.
pub fn finished(status: &'static str, create_time: DateTime<Utc>) {
    after_commit(move || {
        let took = (Utc::now() - create_time).to_std().unwrap_or_default();
        FINISHED.with_label_values(&[status]).inc();
        FLOW_DURATION
            .with_label_values(&[status])
            .observe(took.as_secs_f64());
    });
}
