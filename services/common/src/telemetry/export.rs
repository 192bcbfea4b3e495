//! Span export over OTLP/gRPC, on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set. The OpenTelemetry SDK reads
//! the other standard variables itself: `OTEL_SERVICE_NAME` (default here:
//! the binary's name), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`
//! and `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*` for the batch processor.
//!
//! Spans are exported by the SDK's batch processor on a thread of its own:
//! a request only puts its spans in a bounded queue and never waits for the
//! collector. At shutdown the queue is flushed within the grace period, and
//! a flush that fails or runs out of time is logged, not silent.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::config::{ConfigError, var};

/// The exporter, when tracing is on.
pub struct SpanExport {
    provider: SdkTracerProvider,
}

impl SpanExport {
    /// Builds the exporter when an endpoint is configured; `Ok(None)` when
    /// none is (or `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`).
    /// Must run inside the Tokio runtime: the gRPC client lives there.
    pub fn from_env(service_name: &str) -> Result<Option<Self>, ConfigError> {
        let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .map(|value| ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", value))
            .or_else(|| {
                var("OTEL_EXPORTER_OTLP_ENDPOINT").map(|v| ("OTEL_EXPORTER_OTLP_ENDPOINT", v))
            });
        let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        let Some((variable, endpoint)) = endpoint.filter(|_| !disabled) else {
            return Ok(None);
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|err| ConfigError::new(variable, &endpoint, err))?;
        let mut resource = Resource::builder();
        if var("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(service_name.to_owned());
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        Ok(Some(Self { provider }))
    }

    pub fn tracer(&self, name: &str) -> SdkTracer {
        self.provider.tracer(name.to_owned())
    }

    /// Exports what is still queued, within `timeout`.
    pub async fn shutdown(self, timeout: Duration) {
        let provider = self.provider;
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(timeout)).await;
        match flushed {
            Ok(Ok(())) => tracing::debug!("spans flushed"),
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "spans not yet exported may be lost: the flush failed")
            }
            Err(err) => tracing::warn!(error = %err, "spans not yet exported may be lost"),
        }
    }
}
