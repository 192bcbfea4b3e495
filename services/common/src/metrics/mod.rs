//! Prometheus metrics. Each process serves the text format at
//! `GET /metrics` on `METRICS_ADDR` (`off` serves none).
//!
//! Metrics live in the process's default registry, defined next to the code
//! that moves them. Counters and histograms are updated on the spot with
//! atomics. Figures that are cheaper to read than to track (pool use,
//! partition lag, the outbox's depth) are read by refresh hooks the endpoint
//! runs before each scrape, so nothing on the request path waits on a
//! scrape. The standard `process_*` metrics (CPU, RSS, open files) come with
//! the registry.

pub mod grpc;
pub mod pools;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    TextEncoder,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, listen_addr, var};

/// Where a process serves its metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// `None` when `METRICS_ADDR=off`.
    pub addr: Option<SocketAddr>,
}

impl MetricsConfig {
    /// Reads `METRICS_ADDR`, `default_addr` when unset.
    pub fn from_env(default_addr: &str) -> Result<Self, ConfigError> {
        if var("METRICS_ADDR").is_some_and(|value| value.trim() == "off") {
            return Ok(Self { addr: None });
        }
        Ok(Self {
            addr: Some(listen_addr("METRICS_ADDR", default_addr)?),
        })
    }

    pub fn off() -> Self {
        Self { addr: None }
    }
}

/// Updates figures that are read rather than tracked, right before a
/// scrape.
pub type Refresh = Box<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// The longest a refresh hook may take: a database that does not answer
/// leaves its figures as they were rather than hanging the scrape.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(2);

/// The metrics endpoint of one process, with its refresh hooks.
#[derive(Default)]
pub struct MetricsEndpoint {
    refreshers: Vec<Refresh>,
}

impl MetricsEndpoint {
    /// Runs `refresh` before every scrape.
    pub fn refresh_with(&mut self, refresh: Refresh) {
        self.refreshers.push(refresh);
    }

    /// Binds `config`'s address (a bad or taken one stops start-up) and
    /// serves until `stop`. Does nothing when metrics are off.
    pub async fn spawn(
        self,
        config: &MetricsConfig,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let Some(addr) = config.addr else {
            return Ok(());
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|err| anyhow::anyhow!("failed to bind METRICS_ADDR {addr}: {err}"))?;
        let bound = listener.local_addr().unwrap_or(addr);
        tracing::info!(addr = %bound, "metrics at http://{bound}/metrics");
        let refreshers = Arc::new(self.refreshers);
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || scrape(Arc::clone(&refreshers))),
        );
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(err) = served {
                tracing::error!(%addr, error = %err, "the metrics endpoint stopped");
            }
        });
        Ok(())
    }
}

async fn scrape(refreshers: Arc<Vec<Refresh>>) -> ([(http::HeaderName, &'static str); 1], Vec<u8>) {
    // One scrape at a time: a hook resets its gauges before it sets them
    // again, and a second scrape in between would see them empty.
    static SCRAPING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = SCRAPING.lock().await;
    for refresh in refreshers.iter() {
        if tokio::time::timeout(REFRESH_TIMEOUT, refresh())
            .await
            .is_err()
        {
            tracing::debug!("a metrics refresh timed out; its figures are stale");
        }
    }
    (
        [(http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        render(),
    )
}

/// The default registry in the text format.
pub fn render() -> Vec<u8> {
    let mut text = String::new();
    if let Err(err) = TextEncoder::new().encode_utf8(&prometheus::gather(), &mut text) {
        tracing::error!(error = %err, "cannot encode metrics");
    }
    text.into_bytes()
}

// Definitions register in the default registry. They are made once, from
// `LazyLock` statics, with constant names and labels, so registering can
// only fail if two definitions share a name, which the first scrape in the
// tests would show.

pub fn counter(name: &str, help: &str) -> IntCounter {
    registered(IntCounter::with_opts(Opts::new(name, help)))
}

pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(IntCounterVec::new(Opts::new(name, help), labels))
}

pub fn gauge(name: &str, help: &str) -> IntGauge {
    registered(IntGauge::with_opts(Opts::new(name, help)))
}

pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    registered(IntGaugeVec::new(Opts::new(name, help), labels))
}

pub fn float_gauge_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
    registered(prometheus::GaugeVec::new(Opts::new(name, help), labels))
}

pub fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    registered(Histogram::with_opts(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
    ))
}

pub fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    registered(HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    ))
}

/// Registers `metric`, made by hand, in the default registry.
#[allow(clippy::expect_used)]
pub fn registered<M>(metric: prometheus::Result<M>) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let metric = metric.expect("a valid metric definition");
    prometheus::register(Box::new(metric.clone())).expect("each metric is defined once");
    metric
}

/// Buckets for calls and database transactions: 250 µs to 30 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

/// Buckets for an order's whole flow, create to final status: 5 ms to 5 min.
pub const FLOW_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Buckets for counts of records in one request or batch.
pub const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0,
];
