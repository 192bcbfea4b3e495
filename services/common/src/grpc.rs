//! gRPC server scaffolding shared by all services: health, server reflection
//! (v1, and v1alpha for grpcurl 1.8 and Python's grpcio-reflection), bounded
//! message sizes, and graceful shutdown.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;

use std::net::SocketAddr;

use tonic::transport::ServerTlsConfig;

use crate::auth::{AuthConfig, Authenticator};
use crate::config::{ConfigError, listen_addr, var};
use crate::health::Readiness;
use crate::metrics::MetricsConfig;
use crate::metrics::grpc::MetricsLayer;
use crate::telemetry::grpc::TraceLayer;
use crate::tls::ServerTls;

/// The largest request message the servers decode. Our requests are a few
/// hundred bytes; anything near this is abuse.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The most metadata (HTTP/2 header list) a call may carry: a bearer token
/// is under 2 KiB, and a larger list only costs memory.
pub const MAX_METADATA_BYTES: u32 = 16 * 1024;

/// Requests one connection may have in flight; more wait their turn, so one
/// client cannot pile up unbounded work. A streaming call counts only until
/// its response starts.
const MAX_CONCURRENT_REQUESTS_PER_CONNECTION: usize = 256;

/// HTTP/2 streams one connection may have open: enough for thousands of
/// WatchOrder streams over the gateway's one connection to the order
/// service (hyper's default is 200).
const MAX_STREAMS_PER_CONNECTION: u32 = 10_000;

/// Creates the health reporter and the routes that serve health and both
/// reflection versions. Reflection lists health, reflection and the
/// `served` services only, and can describe every type they use, including
/// the `google.rpc` error details carried by errors.
/// Also returns routes with health alone, for a plaintext health port.
pub fn health_and_reflection_routes(served: &[&str]) -> (HealthReporter, Routes, Routes) {
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
        Routes::new(health.clone())
            .add_service(v1)
            .add_service(v1alpha),
        Routes::new(health),
    )
}

/// How a service's gRPC port serves, as configured: who may call it, TLS,
/// and a plaintext health-only port.
#[derive(Debug, Clone)]
pub struct ServingConfig {
    pub auth: AuthConfig,
    pub tls: Option<ServerTls>,
    /// `HEALTH_GRPC_ADDR`: serves `grpc.health.v1` alone, in plaintext and
    /// without tokens, for probes that cannot speak TLS (Kubernetes' gRPC
    /// probes) when the main port does.
    pub health_addr: Option<SocketAddr>,
    /// `METRICS_ADDR`: where Prometheus scrapes the process.
    pub metrics: MetricsConfig,
}

impl ServingConfig {
    /// Reads the variables; metrics listen on `default_metrics_addr`
    /// unless `METRICS_ADDR` says otherwise.
    pub fn from_env(default_metrics_addr: &str) -> Result<Self, ConfigError> {
        let health_addr = match var("HEALTH_GRPC_ADDR") {
            Some(_) => Some(listen_addr("HEALTH_GRPC_ADDR", "")?),
            None => None,
        };
        Ok(Self {
            auth: AuthConfig::from_env()?,
            tls: ServerTls::from_env()?,
            health_addr,
            metrics: MetricsConfig::from_env(default_metrics_addr)?,
        })
    }

    /// Plaintext, nobody checked, no limits: for tests about other things.
    pub fn for_tests() -> Self {
        Self {
            auth: AuthConfig::disabled(),
            tls: None,
            health_addr: None,
            metrics: MetricsConfig::off(),
        }
    }

    /// Reads the key set and the TLS files. Fails rather than serving open
    /// or in plaintext by mistake.
    pub fn load(&self) -> anyhow::Result<Serving> {
        Ok(Serving {
            auth: Authenticator::from_config(&self.auth)?,
            tls: self.tls.as_ref().map(ServerTls::load).transpose()?,
        })
    }
}

/// How a gRPC port serves: who may call it, and over TLS or not.
#[derive(Clone)]
pub struct Serving {
    pub auth: Authenticator,
    pub tls: Option<ServerTlsConfig>,
}

/// Serves health alone in plaintext on `HEALTH_GRPC_ADDR`, when set, until
/// `stop`: the port probes use when the main one speaks TLS. The port is
/// bound here, so a taken or bad address stops start-up.
pub async fn spawn_health_port(
    config: &ServingConfig,
    readiness: &Readiness,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let Some(addr) = config.health_addr else {
        return Ok(());
    };
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("failed to bind HEALTH_GRPC_ADDR {addr}: {err}"))?;
    let health = readiness.health_only_routes();
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .concurrency_limit_per_connection(MAX_CONCURRENT_REQUESTS_PER_CONNECTION)
            .http2_max_header_list_size(MAX_METADATA_BYTES)
            .add_routes(health)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), stop.cancelled_owned())
            .await;
        if let Err(err) = served {
            tracing::error!(%addr, error = %err, "the health port (HEALTH_GRPC_ADDR) stopped");
        }
    });
    Ok(())
}

/// Serves `routes` on `listener` until `stop` is cancelled, then lets
/// in-flight calls finish. Every call passes the authentication layer
/// first.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    serving: Serving,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = serving.tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .timeout(SERVER_TIMEOUT)
        .concurrency_limit_per_connection(MAX_CONCURRENT_REQUESTS_PER_CONNECTION)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_max_header_list_size(MAX_METADATA_BYTES)
        // Outside authentication, so refused calls are counted and traced
        // too. (tonic's own timeout and concurrency layers sit outside
        // these.)
        .layer(MetricsLayer)
        .layer(TraceLayer)
        .layer(serving.auth.layer())
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
}

/// The status for a failed database call: UNAVAILABLE when the database
/// cannot be reached (worth a retry), INTERNAL otherwise (logged in full,
/// described to the caller in nothing but name).
pub fn database_error_status(err: &crate::db::DbError) -> tonic::Status {
    use crate::db::DbError;
    match err {
        // Every connection stayed busy (or none could be opened) for the
        // checkout timeout. Not UNAVAILABLE: the gateway takes that to mean
        // the instance is gone and avoids it for everyone.
        // (bb8 says TimedOut also while the database cannot be reached.)
        DbError::Pool(bb8::RunError::TimedOut) => {
            tracing::warn!(error = %err, "no database connection free in time");
            <tonic::Status as tonic_types::StatusExt>::with_error_details(
                tonic::Code::ResourceExhausted,
                "no database connection was free in time (busy or unreachable); retry later",
                tonic_types::ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
            )
        }
        DbError::Pool(_) | DbError::Connect(_) => {
            tracing::warn!(error = %err, "database unavailable");
            tonic::Status::unavailable("the database is unavailable, retry later")
        }
        DbError::Query(_) | DbError::Migration(_) => {
            tracing::error!(error = ?err, "internal error");
            tonic::Status::internal("internal error")
        }
    }
}

/// The longest any call may take: the server ends a call at this or at the
/// client's `grpc-timeout`, whichever comes first. Settings that bound a
/// call's work (the gateway's publish timeout) must stay within it.
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(30);

/// The time the caller allows for a call, from its `grpc-timeout` header.
/// `None` without a deadline or with a malformed one.
pub fn timeout_of<T>(request: &tonic::Request<T>) -> Option<Duration> {
    parse_grpc_timeout(request.metadata().get("grpc-timeout")?.to_str().ok()?)
}

/// Reads a `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u
/// or n), as the gRPC HTTP/2 protocol defines it.
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if !value.is_ascii() {
        return None;
    }
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_in_every_unit() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("9n"), Some(Duration::from_nanos(9)));
    }

    #[test]
    fn malformed_grpc_timeouts_are_ignored() {
        for bad in ["", "S", "5", "5s", "-5S", "123456789S", "1.5S", "é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_request_without_a_deadline_has_no_timeout() {
        let mut request = tonic::Request::new(());
        assert_eq!(timeout_of(&request), None);
        request.set_timeout(Duration::from_millis(1500));
        assert_eq!(timeout_of(&request), Some(Duration::from_millis(1500)));
    }
}
