//! W3C Trace Context across process boundaries: `traceparent` (and
//! `tracestate`) in gRPC metadata and in Kafka record headers, beside the
//! CloudEvents headers, as the CloudEvents distributed-tracing extension
//! names them.
//!
//! Everything here is a no-op while tracing is off (no OTLP endpoint): no
//! span is made and no header written, so the cost is one atomic load.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported, and so made and propagated at all.
pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub(super) fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

struct HeaderMapCarrier<'a>(&'a http::HeaderMap);

impl Extractor for HeaderMapCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct MetadataCarrier<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator writes `tracestate` even when it is empty.
        if value.is_empty() {
            return;
        }
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct RecordHeaders<'a>(&'a BTreeMap<String, Vec<u8>>);

impl Extractor for RecordHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        std::str::from_utf8(self.0.get(key)?).ok()
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct RecordHeadersMut<'a>(&'a mut BTreeMap<String, Vec<u8>>);

impl Injector for RecordHeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator writes `tracestate` even when it is empty.
        if !value.is_empty() {
            self.0.insert(key.to_owned(), value.into_bytes());
        }
    }
}

/// The context a gRPC call's headers carry (empty without `traceparent`).
pub fn context_from_http(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderMapCarrier(headers))
}

/// The context a Kafka record's headers carry (empty without one).
pub fn context_from_record(headers: &BTreeMap<String, Vec<u8>>) -> Context {
    TraceContextPropagator::new().extract(&RecordHeaders(headers))
}

/// Puts `cx` in a Kafka record's headers, when it holds a valid span.
pub fn inject_into_record(cx: &Context, headers: &mut BTreeMap<String, Vec<u8>>) {
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(cx, &mut RecordHeadersMut(headers));
    }
}

/// Puts `span`'s context in a Kafka record's headers: the record continues
/// the trace from that span.
pub fn inject_span_into_record(span: &tracing::Span, headers: &mut BTreeMap<String, Vec<u8>>) {
    inject_into_record(&span.context(), headers);
}

/// Puts the current span's context in a call's metadata, so the service
/// called continues the trace.
pub fn inject_current_into_metadata(metadata: &mut tonic::metadata::MetadataMap) {
    if !is_enabled() {
        return;
    }
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut MetadataCarrier(metadata));
    }
}

/// A context as the `traceparent` text, to store beside a row whose work
/// continues later (a payment settled by another task).
pub fn to_traceparent(cx: &Context) -> Option<String> {
    let mut headers = BTreeMap::new();
    inject_into_record(cx, &mut headers);
    headers
        .remove(TRACEPARENT)
        .and_then(|value| String::from_utf8(value).ok())
}

/// The context a stored `traceparent` names.
pub fn from_traceparent(traceparent: &str) -> Context {
    let headers = BTreeMap::from([(TRACEPARENT.to_owned(), traceparent.as_bytes().to_vec())]);
    context_from_record(&headers)
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    fn remote(trace: u128, span: u64) -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        ))
    }

    #[test]
    fn a_context_round_trips_through_record_headers_and_text() {
        let cx = remote(0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7);
        let mut headers = BTreeMap::new();
        inject_into_record(&cx, &mut headers);
        assert_eq!(
            headers[TRACEPARENT],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert!(!headers.contains_key(TRACESTATE), "no empty tracestate");
        let back = context_from_record(&headers);
        assert_eq!(
            back.span().span_context().trace_id(),
            TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736)
        );
        let text = to_traceparent(&cx).expect("a traceparent");
        assert_eq!(
            from_traceparent(&text).span().span_context().span_id(),
            SpanId::from(0x00f067aa0ba902b7)
        );
    }

    #[test]
    fn no_context_writes_no_header_and_a_bad_header_reads_as_none() {
        let mut headers = BTreeMap::new();
        inject_into_record(&Context::new(), &mut headers);
        assert!(headers.is_empty());
        headers.insert(TRACEPARENT.to_owned(), b"not-a-traceparent".to_vec());
        assert!(
            !context_from_record(&headers)
                .span()
                .span_context()
                .is_valid()
        );
    }
}
