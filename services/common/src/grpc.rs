//! gRPC server scaffolding shared by all services: health, server reflection
//! (v1, and v1alpha for grpcurl 1.8 and Python's grpcio-reflection), bounded
//! message sizes, and graceful shutdown.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;

/// The largest request message the servers decode. Our requests are a few
/// hundred bytes; anything near this is abuse.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Requests one connection may have in flight; more wait their turn, so one
/// client cannot pile up unbounded work.
const MAX_CONCURRENT_REQUESTS_PER_CONNECTION: usize = 256;

/// Creates the health reporter and the routes that serve health and both
/// reflection versions. Reflection lists health, reflection and the
/// `served` services only, and can describe every type they use, including
/// the `google.rpc` error details carried by errors.
pub fn health_and_reflection_routes(served: &[&str]) -> (HealthReporter, Routes) {
    let (reporter, health) = tonic_health::server::health_reporter();
    let builder = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(oms_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
            // Listed explicitly below, so both versions list both.
            .include_reflection_service(false);
        for name in served.iter().copied().chain([
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]) {
            builder = builder.with_service_name(name);
        }
        builder
    };
    // The descriptor sets are compiled into the binary, so building from
    // them only fails if the build itself is broken.
    #[allow(clippy::expect_used)]
    let v1 = builder()
        .build_v1()
        .expect("embedded descriptor sets are valid");
    #[allow(clippy::expect_used)]
    let v1alpha = builder()
        .build_v1alpha()
        .expect("embedded descriptor sets are valid");
    (
        reporter,
        Routes::new(health).add_service(v1).add_service(v1alpha),
    )
}

/// Serves `routes` on `listener` until `stop` is cancelled, then lets
/// in-flight calls finish.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .timeout(Duration::from_secs(30))
        .concurrency_limit_per_connection(MAX_CONCURRENT_REQUESTS_PER_CONNECTION)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
}
