//! gRPC health (`grpc.health.v1`) driven by the service's real dependencies.
//!
//! Every status starts NOT_SERVING, turns SERVING once the database and the
//! broker answer, goes back to NOT_SERVING whenever one of them stops
//! answering, and is NOT_SERVING for good once shutdown begins.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::grpc;

/// How often the dependencies are probed.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Sets the overall status (`""`) and each named service's status together.
#[derive(Clone)]
pub struct Readiness {
    reporter: HealthReporter,
    service_names: Arc<[String]>,
    /// Health alone, for a plaintext health port.
    health_only: Routes,
}

impl Readiness {
    /// Creates the reporter, NOT_SERVING everywhere, and the routes that
    /// serve health and reflection; the caller adds its own services to them.
    /// `service_names` are reported by health; the gRPC ones among them (the
    /// names with a package) are listed by reflection.
    pub async fn new(service_names: &[&str]) -> (Self, Routes) {
        let grpc_services: Vec<&str> = service_names
            .iter()
            .copied()
            .filter(|name| name.contains('.'))
            .collect();
        let (reporter, routes, health_only) = grpc::health_and_reflection_routes(&grpc_services);
        let readiness = Self {
            reporter,
            health_only,
            service_names: service_names
                .iter()
                .map(|name| (*name).to_owned())
                .collect(),
        };
        readiness.set_serving(false).await;
        (readiness, routes)
    }

    /// Routes serving health alone, with the same statuses.
    pub fn health_only_routes(&self) -> Routes {
        self.health_only.clone()
    }

    pub async fn set_serving(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        for name in self.service_names.iter() {
            self.reporter.set_service_status(name, status).await;
        }
    }

    /// Probes the dependencies until `shutdown` and reports what it finds,
    /// logging each change.
    pub async fn monitor<F, Fut>(&self, probe: F, shutdown: CancellationToken)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let mut serving = false;
        loop {
            let result = tokio::select! {
                result = probe() => result,
                _ = shutdown.cancelled() => break,
            };
            match (&result, serving) {
                (Ok(()), false) => tracing::info!("dependencies answer, serving"),
                (Err(why), true) => tracing::warn!(reason = %why, "dependency lost, not serving"),
                _ => {}
            }
            serving = result.is_ok();
            self.set_serving(serving).await;
            tokio::select! {
                _ = tokio::time::sleep(PROBE_INTERVAL) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        self.set_serving(false).await;
    }
}
