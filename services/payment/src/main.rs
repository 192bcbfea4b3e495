use payment_service::Application;

#[tokio::main]
async fn main() {
    oms_common::entrypoint::run(
        "payment-service",
        Application::config_from_env(),
        |config, shutdown| async move {
            let app = Application::build(config).await?;
            tracing::info!(addr = %app.local_addr(), "payment-service listening");
            app.run_until(shutdown).await
        },
    )
    .await;
}
