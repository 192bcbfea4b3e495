//! Database pool use, read from each bb8 pool right before a scrape.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use futures::FutureExt;
use prometheus::{CounterVec, IntCounterVec, IntGaugeVec, Opts};

use super::Refresh;
use crate::db::DbPool;

static CONNECTIONS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    super::gauge_vec(
        "oms_db_pool_connections",
        "Open database connections of a pool, by state (in_use or idle).",
        &["pool", "state"],
    )
});

static WAIT_SECONDS: LazyLock<CounterVec> = LazyLock::new(|| {
    super::registered(CounterVec::new(
        Opts::new(
            "oms_db_pool_checkout_wait_seconds_total",
            "Time tasks spent waiting for a connection from a pool; its rate is the mean number of tasks waiting.",
        ),
        &["pool"],
    ))
});

static TIMED_OUT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    super::counter_vec(
        "oms_db_pool_checkout_timeouts_total",
        "Checkouts from a pool that gave up waiting for a connection.",
        &["pool"],
    )
});

/// What a pool's counters stood at when last reported.
#[derive(Default)]
struct Reported {
    timeouts: AtomicU64,
    wait_micros: AtomicU64,
}

/// The hook that reads `pools`, each under its name.
///
/// bb8 counts time-outs and waiting time since the pool was made; the
/// counters move by the difference since the last scrape. (bb8's count of
/// checkouts pending is not used: one abandoned while it waits is never
/// counted as done, so it only grows.)
pub fn refresh(pools: Vec<(&'static str, DbPool)>) -> Refresh {
    let pools: Arc<Vec<_>> = Arc::new(
        pools
            .into_iter()
            .map(|(name, pool)| (name, pool, Reported::default()))
            .collect(),
    );
    Box::new(move || {
        let pools = Arc::clone(&pools);
        async move {
            for (name, pool, reported) in pools.iter() {
                let state = pool.state();
                let idle = i64::from(state.idle_connections);
                let open = i64::from(state.connections);
                CONNECTIONS
                    .with_label_values(&[name, "in_use"])
                    .set((open - idle).max(0));
                CONNECTIONS.with_label_values(&[name, "idle"]).set(idle);
                let timed_out = state.statistics.get_timed_out;
                let before = reported.timeouts.swap(timed_out, Ordering::Relaxed);
                TIMED_OUT
                    .with_label_values(&[name])
                    .inc_by(timed_out.saturating_sub(before));
                let waited =
                    u64::try_from(state.statistics.get_wait_time.as_micros()).unwrap_or(u64::MAX);
                let before = reported.wait_micros.swap(waited, Ordering::Relaxed);
                WAIT_SECONDS
                    .with_label_values(&[name])
                    .inc_by(waited.saturating_sub(before) as f64 / 1e6);
            }
        }
        .boxed()
    })
}
