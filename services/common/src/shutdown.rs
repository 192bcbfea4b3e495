//! Shutdown on SIGINT or SIGTERM: the first signal cancels the returned
//! token, and the service winds down within its grace period; a second
//! signal exits at once.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, parse_in_range};

/// Reads `SHUTDOWN_GRACE_SECONDS` (default 10): how long in-flight work may
/// take to finish after a shutdown signal.
pub fn grace_period() -> Result<Duration, ConfigError> {
    parse_in_range("SHUTDOWN_GRACE_SECONDS", 10u64, 0..=600).map(Duration::from_secs)
}

/// Returns a token cancelled by the first SIGINT or SIGTERM.
pub fn on_signal() -> std::io::Result<CancellationToken> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("shutdown signal received, finishing in-flight work");
        cancel.cancel();
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::warn!("second shutdown signal, exiting now");
        std::process::exit(130);
    });
    Ok(token)
}
