//! Database pool use, read from each bb8 pool right before a scrape.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use futures::FutureExt;
use prometheus::{IntCounterVec, IntGaugeVec};

use super::Refresh;
use crate::db::DbPool;

static CONNECTIONS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    super::gauge_vec(
        "oms_db_pool_connections",
        "Open database connections of a pool, by state (in_use or idle).",
        &["pool", "state"],
    )
});

static WAITING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    super::gauge_vec(
        "oms_db_pool_waiting_checkouts",
        "Tasks waiting for a connection from a pool right now.",
        &["pool"],
    )
});

static TIMED_OUT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    super::counter_vec(
        "oms_db_pool_checkout_timeouts_total",
        "Checkouts from a pool that gave up waiting for a connection.",
        &["pool"],
    )
});

/// The hook that reads `pools`, each under its name.
pub fn refresh(pools: Vec<(&'static str, DbPool)>) -> Refresh {
    // bb8 counts time-outs since the pool was made; the counter moves by
    // the difference since the last scrape.
    let pools: Arc<Vec<_>> = Arc::new(
        pools
            .into_iter()
            .map(|(name, pool)| (name, pool, AtomicU64::new(0)))
            .collect(),
    );
    Box::new(move || {
        let pools = Arc::clone(&pools);
        async move {
            for (name, pool, reported_timeouts) in pools.iter() {
                let state = pool.state();
                let idle = i64::from(state.idle_connections);
                let open = i64::from(state.connections);
                CONNECTIONS
                    .with_label_values(&[name, "in_use"])
                    .set(open - idle);
                CONNECTIONS.with_label_values(&[name, "idle"]).set(idle);
                let pending = state.statistics.pending_gets();
                WAITING
                    .with_label_values(&[name])
                    .set(i64::try_from(pending).unwrap_or(i64::MAX));
                let timed_out = state.statistics.get_timed_out;
                let before = reported_timeouts.swap(timed_out, Ordering::Relaxed);
                TIMED_OUT
                    .with_label_values(&[name])
                    .inc_by(timed_out.saturating_sub(before));
            }
        }
        .boxed()
    })
}
