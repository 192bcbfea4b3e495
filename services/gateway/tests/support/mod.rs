//! Starting a gateway for the gateway's integration tests.

use std::net::SocketAddr;
use std::time::Duration;

use gateway::{Application, GatewayConfig};
use oms_testkit::kafka;
use oms_testkit::service::RunningService;

/// A gateway config on port 0 with the test's topic prefix; without an order
/// service it points at a port where nothing listens.
pub fn gateway_config(prefix: &str, order_service: Option<SocketAddr>) -> GatewayConfig {
    let order_service = order_service.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9)));
    GatewayConfig {
        grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        order_service_url: format!("http://{order_service}"),
        kafka: kafka::test_config(prefix),
        shutdown_grace: Duration::from_secs(5),
        publish_timeout: Duration::from_secs(5),
    }
}

/// Starts the gateway in-process and waits until it serves.
pub async fn start_gateway(config: GatewayConfig) -> RunningService {
    let app = Application::build(config).await.expect("build");
    let addr = app.local_addr();
    RunningService::start(addr, |shutdown| app.run_until(shutdown)).await
}
