//! gRPC probes: health status and the services listed by reflection, v1 and
//! v1alpha, as grpcurl and grpc-health-probe would see them.

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
pub use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::{v1, v1alpha};

pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy()
}

/// The health status of `service` ("" for the whole server), or `None` if the
/// server does not answer.
pub async fn health(addr: SocketAddr, service: &str) -> Option<ServingStatus> {
    let mut client = HealthClient::new(channel(addr).await);
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    let response = tokio::time::timeout(Duration::from_secs(2), client.check(request))
        .await
        .ok()?
        .ok()?;
    ServingStatus::try_from(response.into_inner().status).ok()
}

/// Waits until the server reports SERVING for `service`.
pub async fn wait_until_serving(addr: SocketAddr, service: &str, timeout: Duration) {
    crate::eventually(&format!("{addr} to serve {service:?}"), timeout, || async {
        health(addr, service).await == Some(ServingStatus::Serving)
    })
    .await;
}

/// The services listed by reflection v1.
pub async fn reflection_v1_services(addr: SocketAddr) -> Vec<String> {
    use v1::server_reflection_client::ServerReflectionClient;
    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel(addr).await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection v1 call")
        .into_inner();
    match responses.next().await {
        Some(Ok(v1::ServerReflectionResponse {
            message_response: Some(MessageResponse::ListServicesResponse(list)),
            ..
        })) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected reflection v1 answer: {other:?}"),
    }
}

/// The services listed by reflection v1alpha (what grpcurl 1.8 speaks).
pub async fn reflection_v1alpha_services(addr: SocketAddr) -> Vec<String> {
    use v1alpha::server_reflection_client::ServerReflectionClient;
    use v1alpha::server_reflection_request::MessageRequest;
    use v1alpha::server_reflection_response::MessageResponse;
    let mut client = ServerReflectionClient::new(channel(addr).await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection v1alpha call")
        .into_inner();
    match responses.next().await {
        Some(Ok(v1alpha::ServerReflectionResponse {
            message_response: Some(MessageResponse::ListServicesResponse(list)),
            ..
        })) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected reflection v1alpha answer: {other:?}"),
    }
}

/// Asserts that health is SERVING for "" and each of `services`, and that
/// both reflection versions list exactly health, both reflection versions
/// and the gRPC services among `services` (the names with a package).
pub async fn assert_health_and_reflection(addr: SocketAddr, services: &[&str]) {
    wait_until_serving(addr, "", Duration::from_secs(30)).await;
    for service in services {
        assert_eq!(
            health(addr, service).await,
            Some(ServingStatus::Serving),
            "health of {service}"
        );
    }
    let mut expected: Vec<String> = services
        .iter()
        .filter(|s| s.contains('.'))
        .map(|s| (*s).to_owned())
        .collect();
    expected.extend(
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]
        .map(str::to_owned),
    );
    expected.sort_unstable();
    for mut listed in [
        reflection_v1_services(addr).await,
        reflection_v1alpha_services(addr).await,
    ] {
        listed.sort_unstable();
        assert_eq!(
            listed, expected,
            "reflection lists exactly the served services"
        );
    }
}
