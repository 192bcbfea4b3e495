//! Services run in-process on port 0, for integration tests.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use oms_common::grpc::ServingConfig;
use oms_common::membership::MembershipConfig;
use oms_common::service::ServiceConfig;

use crate::TestDatabase;

/// A downstream service's config for a test: port 0, the test's database
/// and topic prefix.
pub fn service_config(db: &TestDatabase, topic_prefix: &str) -> ServiceConfig {
    ServiceConfig {
        grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        database: db.config(),
        kafka: crate::kafka::test_config(topic_prefix),
        membership: MembershipConfig::with_instance_id(unique_instance_id()),
        shutdown_grace: Duration::from_secs(5),
        // Most tests are about something else; the auth tests turn it on.
        serving: ServingConfig::for_tests(),
    }
}

/// An instance id no other test uses.
pub fn unique_instance_id() -> String {
    format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A service running on the test's runtime until `stop`.
pub struct RunningService {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl RunningService {
    /// Spawns `run` (an `Application::run_until`) and waits until its health
    /// says SERVING, so its database and topics are ready.
    pub async fn start<F, Fut>(addr: SocketAddr, run: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(run(shutdown.clone()));
        crate::grpc::wait_until_serving(addr, "", Duration::from_secs(30)).await;
        Self {
            addr,
            shutdown,
            handle,
        }
    }

    /// Shuts the service down as a signal would, and returns how it ended.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.handle.await.expect("service task panicked")
    }
}
