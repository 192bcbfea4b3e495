//! What every binary's `main` does: read the config (a bad value exits 2
//! with a message naming the variable, before logging exists), start
//! logging, install the signal handlers, run, and report a failure with its
//! whole cause chain (exit 1). Spans still queued for export are flushed
//! before the process ends.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ConfigError;
use crate::{shutdown, telemetry};

pub async fn run<C, F, Fut>(name: &str, config: Result<C, ConfigError>, run: F)
where
    F: FnOnce(C, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let (config, log_format) = match (config, telemetry::LogFormat::from_env()) {
        (Ok(config), Ok(format)) => (config, format),
        (Err(err), _) | (_, Err(err)) => {
            eprintln!("{name}: {err}");
            std::process::exit(2);
        }
    };
    let telemetry = match telemetry::init(log_format, name) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("{name}: {err}");
            std::process::exit(2);
        }
    };
    let grace = shutdown::grace_period().unwrap_or(Duration::from_secs(10));
    let mut signalled_at = None;
    let result = async {
        let shutdown = shutdown::on_signal().context("failed to install signal handlers")?;
        signalled_at = Some(signal_time(&shutdown));
        run(config, shutdown).await
    };
    let result = result.await;
    // The spans of the last calls and batches go out before the process,
    // within what is left of the grace period since the signal (at least a
    // moment, so a drain that used it all still sends what it can).
    let left = match signalled_at.and_then(|at| *at.borrow()) {
        Some(at) => grace.saturating_sub(at.elapsed()),
        None => grace,
    };
    telemetry
        .shutdown(left.max(Duration::from_millis(500)))
        .await;
    if let Err(err) = result {
        tracing::error!(error = format!("{err:#}"), "{name} failed");
        std::process::exit(1);
    }
}

/// When `shutdown` is cancelled, once it is.
fn signal_time(shutdown: &CancellationToken) -> watch::Receiver<Option<Instant>> {
    let (sender, receiver) = watch::channel(None);
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        let _ = sender.send(Some(Instant::now()));
    });
    receiver
}
