//! Structured logging with `tracing`: `RUST_LOG` picks the levels and
//! `LOG_FORMAT` picks human-readable `text` or machine-readable `json`.
//! With an OTLP endpoint configured, the same spans are exported as
//! OpenTelemetry traces (`export`), carried across gRPC and Kafka
//! (`propagation`, `grpc`).

pub mod causes;
mod export;
pub mod grpc;
mod json;
pub mod propagation;

use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, LevelFilter, filter_fn};
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{ConfigError, var};
use export::SpanExport;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn from_env() -> Result<Self, ConfigError> {
        match var("LOG_FORMAT").as_deref().map(str::trim) {
            None | Some("text") => Ok(Self::Text),
            Some("json") => Ok(Self::Json),
            Some(other) => Err(ConfigError::new(
                "LOG_FORMAT",
                other,
                "expected text or json",
            )),
        }
    }
}

/// What `init` set up; `shutdown` exports the spans still queued.
pub struct Telemetry {
    export: Option<SpanExport>,
}

impl Telemetry {
    pub async fn shutdown(self, timeout: Duration) {
        if let Some(export) = self.export {
            export.shutdown(timeout).await;
        }
    }
}

/// Installs the global subscriber: logs in `format`, and spans exported
/// as `service_name` when an OTLP endpoint is configured. Call once, from
/// `main`, inside the Tokio runtime.
pub fn init(format: LogFormat, service_name: &str) -> Result<Telemetry, ConfigError> {
    let export = SpanExport::from_env(service_name)?;
    // Each layer has its own filter: a quieter RUST_LOG (the benchmark's
    // `warn`) must not silence the spans, which are at info.
    let spans = export.as_ref().map(|export| {
        tracing_opentelemetry::layer()
            .with_tracer(export.tracer(service_name))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            .with_filter(span_filter().and(spans_and_warnings()))
    });
    let logs = log_filter(var("RUST_LOG").as_deref());
    let registry = tracing_subscriber::registry().with(spans);
    match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_filter(logs),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(JsonFields::new())
                    .event_format(json::JsonLines)
                    .with_filter(logs),
            )
            .init(),
    }
    if export.is_some() {
        propagation::enable();
        tracing::info!("exporting spans over OTLP");
    }
    Ok(Telemetry { export })
}

/// Spans, and the warnings and errors logged inside them as span events.
/// Info lines are in the log already, with their trace id; as span events
/// they would cost every order a few microseconds more.
fn spans_and_warnings<S>() -> impl tracing_subscriber::layer::Filter<S> {
    // The hint keeps debug and trace calls (and the `log` crate's) off,
    // as the log's own filter would.
    filter_fn(|metadata| metadata.is_span() || *metadata.level() <= tracing::Level::WARN)
        .with_max_level_hint(LevelFilter::INFO)
}

/// What becomes a span or a span event: our info and above, never the
/// OpenTelemetry SDK's own reports (they go to the log), whatever
/// `RUST_LOG` says of the log.
fn span_filter() -> EnvFilter {
    [
        "opentelemetry=off",
        "opentelemetry_sdk=off",
        "opentelemetry_otlp=off",
    ]
    .into_iter()
    .fold(log_filter(None), |filter, directive| {
        filter.add_directive(directive.parse().expect("a valid directive"))
    })
}

/// The levels `rust_log` asks for (default: info).
///
/// rskafka logs every connection and leader lookup at info, so it gets warn
/// by default. Its controller client logs at error every answer it does not
/// retry, including `TopicAlreadyExists` when services starting together
/// race to create a topic, which is expected. Every such error is also
/// returned to us, and we log the ones that matter, so those lines are
/// silenced unless `rust_log` names rskafka itself.
fn log_filter(rust_log: Option<&str>) -> EnvFilter {
    let silenced = || {
        "rskafka::client::controller=off"
            .parse()
            .expect("a valid directive")
    };
    // An unreadable RUST_LOG falls back to the default, as it always did.
    match rust_log.and_then(|levels| Some((levels, EnvFilter::try_new(levels).ok()?))) {
        Some((levels, filter)) if levels.contains("rskafka") => filter,
        Some((_, filter)) => filter.add_directive(silenced()),
        None => EnvFilter::new("info,rskafka=warn").add_directive(silenced()),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What a subscriber with `rust_log`'s filter prints of an error from
    /// rskafka's controller and one of ours.
    fn printed(rust_log: Option<&str>) -> String {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(log_filter(rust_log))
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "rskafka::client::controller", "topic already exists");
            tracing::error!(target: "order_service", "ours");
        });
        let bytes = captured.0.lock().expect("lock").clone();
        String::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn a_topic_creation_race_prints_no_error_but_ours_do() {
        for rust_log in [None, Some("info"), Some("debug,order_service=trace")] {
            let printed = printed(rust_log);
            assert!(printed.contains("ours"), "{rust_log:?}: {printed}");
            assert!(
                !printed.contains("already exists"),
                "{rust_log:?}: {printed}"
            );
        }
        assert!(printed(Some("info,rskafka=debug")).contains("already exists"));
    }
}
