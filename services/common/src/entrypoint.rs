//! What every binary's `main` does: read the config (a bad value exits 2
//! with a message naming the variable, before logging exists), start
//! logging, install the signal handlers, run, and report a failure with its
//! whole cause chain (exit 1).

use std::future::Future;

use anyhow::Context;
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
    telemetry::init(log_format);
    let result = async {
        let shutdown = shutdown::on_signal().context("failed to install signal handlers")?;
        run(config, shutdown).await
    };
    if let Err(err) = result.await {
        tracing::error!(error = format!("{err:#}"), "{name} failed");
        std::process::exit(1);
    }
}
