use anyhow::Context;
use oms_common::{shutdown, telemetry};
use order_service::Application;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (config, log_format) = match (
        Application::config_from_env(),
        telemetry::LogFormat::from_env(),
    ) {
        (Ok(config), Ok(format)) => (config, format),
        (Err(err), _) | (_, Err(err)) => {
            eprintln!("order-service: {err}");
            std::process::exit(2);
        }
    };
    telemetry::init(log_format);
    let shutdown = shutdown::on_signal().context("failed to install signal handlers")?;
    let app = Application::build(config).await?;
    tracing::info!(addr = %app.local_addr(), "order-service listening");
    app.run_until(shutdown).await
}
