//! What the outbox reports to Prometheus. The relay counts what it
//! publishes and parks; the outbox's depth and the age of its oldest row are
//! read from the database right before each scrape. Every instance reads
//! the same shared tables, so aggregate those gauges with `max`, not `sum`.

use std::sync::LazyLock;
use std::time::Duration;

use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use futures::FutureExt;
use prometheus::{Gauge, Histogram, IntCounter, IntGauge};

use crate::db::DbPool;
use crate::metrics::{self, Refresh};

static PUBLISH_DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    metrics::histogram(
        "oms_outbox_publish_duration_seconds",
        "Time from sending one produce request of outbox rows to the broker's acknowledgement.",
        metrics::LATENCY_BUCKETS,
    )
});

static PUBLISHED: LazyLock<IntCounter> = LazyLock::new(|| {
    metrics::counter(
        "oms_outbox_rows_published_total",
        "Outbox rows this instance's relay published (acknowledged by the broker).",
    )
});

static PARKED: LazyLock<IntCounter> = LazyLock::new(|| {
    metrics::counter(
        "oms_outbox_rows_parked_total",
        "Outbox rows this instance's relay moved to outbox_parked because the broker can never accept them.",
    )
});

static WAITING: LazyLock<IntGauge> = LazyLock::new(|| {
    metrics::gauge(
        "oms_outbox_rows_waiting",
        "Rows in the service's outbox waiting to be published (all instances; counted up to 100,000).",
    )
});

static OLDEST_AGE: LazyLock<Gauge> = LazyLock::new(|| {
    let gauge = Gauge::new(
        "oms_outbox_oldest_row_age_seconds",
        "How long the oldest row in the service's outbox has waited; 0 when it is empty.",
    );
    metrics::registered(gauge)
});

static PARKED_STORED: LazyLock<IntGauge> = LazyLock::new(|| {
    metrics::gauge(
        "oms_outbox_parked_rows",
        "Rows in the service's outbox_parked table, waiting for an operator.",
    )
});

/// Registers every outbox metric, so that each is served (at 0) before
/// it first moves.
pub fn describe() {
    LazyLock::force(&PUBLISH_DURATION);
    LazyLock::force(&PUBLISHED);
    LazyLock::force(&PARKED);
    LazyLock::force(&WAITING);
    LazyLock::force(&OLDEST_AGE);
    LazyLock::force(&PARKED_STORED);
}

/// One produce request of `rows` rows acknowledged after `took`.
pub(super) fn published(rows: usize, took: Duration) {
    PUBLISH_DURATION.observe(took.as_secs_f64());
    PUBLISHED.inc_by(rows as u64);
}

pub(super) fn parked() {
    PARKED.inc();
}

#[derive(QueryableByName)]
struct Depth {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    waiting: i64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    oldest_seconds: f64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    parked: i64,
}

/// Rows counted at most, so a scrape stays cheap behind a huge backlog.
const COUNT_CAP: i64 = 100_000;

/// The hook that reads the outbox's depth into the gauges, through `pool`
/// (a connection of the metrics' own). When the database does not answer
/// within a second, the gauges keep their last values.
pub fn refresh(pool: DbPool) -> Refresh {
    Box::new(move || {
        let pool = pool.clone();
        async move {
            let Ok(mut conn) = pool.get().await else {
                return;
            };
            let query = diesel::sql_query(format!(
                "SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox LIMIT {COUNT_CAP}) AS o) AS waiting, \
                 COALESCE((SELECT EXTRACT(EPOCH FROM now() - created_at)::float8 \
                           FROM outbox ORDER BY id LIMIT 1), 0) AS oldest_seconds, \
                 (SELECT count(*) FROM (SELECT 1 FROM outbox_parked LIMIT {COUNT_CAP}) AS p) AS parked"
            ));
            let depth = async {
                diesel::sql_query("SET statement_timeout TO '1s'")
                    .execute(&mut conn)
                    .await?;
                query.get_result::<Depth>(&mut conn).await
            }
            .await;
            match depth {
                Ok(depth) => {
                    WAITING.set(depth.waiting);
                    OLDEST_AGE.set(depth.oldest_seconds.max(0.0));
                    PARKED_STORED.set(depth.parked);
                }
                Err(err) => tracing::debug!(error = %err, "cannot read the outbox's depth"),
            }
        }
        .boxed()
    })
}
