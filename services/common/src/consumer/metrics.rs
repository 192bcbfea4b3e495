//! What the consumers report to Prometheus. Counters move when a batch
//! commits, so a batch retried after a rollback is counted once. Lag, the
//! age of the last commit and the partitions owned are read from
//! `ConsumerProgress` right before each scrape.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures::FutureExt;
use prometheus::{GaugeVec, HistogramVec, IntCounterVec, IntGaugeVec};

use super::ConsumerStats;
use crate::metrics::{self, Refresh};
use crate::topics::dead_letter_topic;

static RECORDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "oms_consumer_records_total",
        "Records this instance consumed and committed (dead letters included), by topic and partition.",
        &["topic", "partition"],
    )
});

static BATCHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "oms_consumer_batches_committed_total",
        "Batches this instance committed, by topic and partition.",
        &["topic", "partition"],
    )
});

static COMMIT_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    metrics::histogram_vec(
        "oms_consumer_commit_duration_seconds",
        "Time to apply one batch and commit it with its offset, by topic.",
        &["topic"],
        metrics::LATENCY_BUCKETS,
    )
});

static DEAD_LETTERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "oms_dead_letters_total",
        "Records this instance sent to a dead-letter topic, by that topic.",
        &["topic"],
    )
});

static LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    metrics::gauge_vec(
        "oms_consumer_lag_records",
        "Records in a partition past this instance's stored position: the high watermark of its last fetch minus its next offset.",
        &["topic", "partition"],
    )
});

static LAST_COMMIT_AGE: LazyLock<GaugeVec> = LazyLock::new(|| {
    metrics::float_gauge_vec(
        "oms_consumer_last_commit_age_seconds",
        "Seconds since this instance last committed a batch of a partition (or took the partition, before its first).",
        &["topic", "partition"],
    )
});

static OWNED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    metrics::gauge_vec(
        "oms_consumer_partitions_owned",
        "Partitions this instance consumes, by topic.",
        &["topic"],
    )
});

static LEASE_EPOCH: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    metrics::gauge_vec(
        "oms_consumer_partition_lease_epoch",
        "The epoch of this instance's lease on each partition it consumes.",
        &["topic", "partition"],
    )
});

/// A batch of `records` records (`dead_letters` of them dead-lettered)
/// committed after `took`.
pub(super) fn committed(
    topic: &str,
    partition: i32,
    records: usize,
    dead_letters: u64,
    took: Duration,
) {
    let partition = partition.to_string();
    let labels = [topic, partition.as_str()];
    RECORDS.with_label_values(&labels).inc_by(records as u64);
    BATCHES.with_label_values(&labels).inc();
    COMMIT_DURATION
        .with_label_values(&[topic])
        .observe(took.as_secs_f64());
    if dead_letters > 0 {
        dead_lettered(topic, dead_letters);
    }
}

/// `count` records of `topic` committed to its dead-letter topic (0 makes
/// the counter served before the first).
pub fn dead_lettered(topic: &str, count: u64) {
    DEAD_LETTERS
        .with_label_values(&[dead_letter_topic(topic).as_str()])
        .inc_by(count);
}

/// The hook that reads every partition's lag, last commit and lease into
/// the gauges, forgetting partitions this instance no longer consumes.
pub fn refresh(stats: Arc<ConsumerStats>) -> Refresh {
    Box::new(move || {
        let partitions = stats.progress.snapshot();
        async move {
            for gauge in [&*LAG, &*LEASE_EPOCH, &*OWNED] {
                gauge.reset();
            }
            LAST_COMMIT_AGE.reset();
            for partition in partitions {
                let number = partition.partition.to_string();
                let labels = [partition.topic.as_str(), number.as_str()];
                LAG.with_label_values(&labels).set(partition.lag);
                LAST_COMMIT_AGE
                    .with_label_values(&labels)
                    .set(partition.since_commit.as_secs_f64());
                if let Some(epoch) = partition.epoch {
                    LEASE_EPOCH.with_label_values(&labels).set(epoch);
                }
                OWNED.with_label_values(&[partition.topic.as_str()]).inc();
            }
        }
        .boxed()
    })
}
