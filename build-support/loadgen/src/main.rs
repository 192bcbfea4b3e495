//! `oms-loadgen`: drives the order system and reports what it measured.
//! `oms-loadgen --help` lists the commands.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    oms_loadgen::run(oms_loadgen::cli::Cli::parse()).await
}
