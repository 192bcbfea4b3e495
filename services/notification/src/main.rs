use notification_service::Application;

#[tokio::main]
async fn main() {
    oms_common::entrypoint::run(
        "notification-service",
        Application::config_from_env(),
        |config, shutdown| async move {
            let app = Application::build(config).await?;
            tracing::info!(addr = %app.local_addr(), "notification-service listening");
            app.run_until(shutdown).await
        },
    )
    .await;
}
