//! The tower layer that measures every gRPC call a server answers: calls
//! and errors by method and status code, latency, and calls in flight.
//!
//! A call ends with its status, which a unary error carries in the response
//! headers and everything else in the trailers at the end of the body, so
//! the body is watched to its end. A body dropped before then was
//! abandoned: the client cancelled or went away.

use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use futures::future::{BoxFuture, FutureExt};
use http_body::{Body, Frame, SizeHint};
use prometheus::{HistogramVec, IntCounterVec, IntGauge, IntGaugeVec};
use tokio::time::Instant;
use tonic::Code;
use tower::{Layer, Service};

use crate::auth::methods::{Requirement, requirement_of};

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    super::counter_vec(
        "oms_grpc_server_requests_total",
        "gRPC calls this server finished, by method and status code.",
        &["method", "code"],
    )
});

static ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    super::counter_vec(
        "oms_grpc_server_errors_total",
        "gRPC calls this server finished with a status other than OK.",
        &["method", "code"],
    )
});

static DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    super::histogram_vec(
        "oms_grpc_server_request_duration_seconds",
        "Time from a call's arrival to its status (a stream's whole life).",
        &["method"],
        super::LATENCY_BUCKETS,
    )
});

static IN_FLIGHT: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    super::gauge_vec(
        "oms_grpc_server_in_flight_requests",
        "gRPC calls this server has started and not yet finished.",
        &["method"],
    )
});

/// The method label of a call: its path when it names one of our methods,
/// else `other`, so that made-up paths cannot grow the label set. (The
/// open services take any method name, so theirs are listed.)
fn method_label(path: &str) -> &str {
    let known = match requirement_of(path) {
        Requirement::Refused => false,
        Requirement::Open => OPEN_METHODS.contains(&path),
        Requirement::Read | Requirement::Write => true,
    };
    if known { path } else { "other" }
}

const OPEN_METHODS: [&str; 4] = [
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

#[derive(Clone, Default)]
pub struct MetricsLayer;

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService { inner }
    }
}

#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for MetricsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let mut call = Call::start(method_label(request.uri().path()));
        let response = self.inner.call(request);
        async move {
            let response = response
                .await
                .inspect_err(|_| call.code = Some(Code::Unknown))?;
            let (parts, body) = response.into_parts();
            call.code = status_in(&parts.headers);
            let body = tonic::body::Body::new(WatchedBody { inner: body, call });
            Ok(http::Response::from_parts(parts, body))
        }
        .boxed()
    }
}

/// One call being measured; recorded once, when it ends or is dropped.
struct Call {
    method: String,
    started: Instant,
    in_flight: IntGauge,
    /// The status seen so far (from the headers, then the trailers).
    code: Option<Code>,
    recorded: bool,
}

impl Call {
    fn start(method: &str) -> Self {
        let in_flight = IN_FLIGHT.with_label_values(&[method]);
        in_flight.inc();
        Self {
            method: method.to_owned(),
            started: Instant::now(),
            in_flight,
            code: None,
            recorded: false,
        }
    }

    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        self.in_flight.dec();
        let labels = [self.method.as_str(), code_name(code)];
        REQUESTS.with_label_values(&labels).inc();
        if code != Code::Ok {
            ERRORS.with_label_values(&labels).inc();
        }
        DURATION
            .with_label_values(&[self.method.as_str()])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // Ended before its status went out: the caller went away, or the
        // server's timeout (outside this layer) ended the call, which tonic
        // answers CANCELLED too.
        let code = self.code.unwrap_or(Code::Cancelled);
        self.finish(code);
    }
}

/// A response body that records its call when it ends.
struct WatchedBody {
    inner: tonic::body::Body,
    call: Call,
}

impl Body for WatchedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_in) {
                    self.call.code = Some(code);
                }
            }
            Poll::Ready(Some(Err(status))) => self.call.code = Some(status.code()),
            Poll::Ready(None) => {
                let code = self.call.code.unwrap_or(Code::Unknown);
                self.call.finish(code);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The `grpc-status` in `headers`, if any.
pub(crate) fn status_in(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    Some(Code::from_i32(value.parse().ok()?))
}

/// The status code's name as the gRPC specification spells it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(method: &str, code: &str) -> u64 {
        REQUESTS.with_label_values(&[method, code]).get()
    }

    fn in_flight(method: &str) -> i64 {
        IN_FLIGHT.with_label_values(&[method]).get()
    }

    /// A server that answers `/grpc.health.v1.Health/Check` with `status`
    /// in the trailers after one message, or in the headers alone.
    async fn call_through_layer(path: &str, answer: Result<(), tonic::Status>) {
        let is_ok = answer.is_ok();
        let inner = tower::service_fn(move |_request: http::Request<()>| {
            let answer = answer.clone();
            async move {
                let response = match answer {
                    Err(status) => status.into_http(),
                    Ok(()) => {
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                        let frames = futures::stream::iter([
                            Ok::<_, tonic::Status>(Frame::data(bytes::Bytes::from_static(b"x"))),
                            Ok(Frame::trailers(trailers)),
                        ]);
                        http::Response::new(tonic::body::Body::new(
                            http_body_util::StreamBody::new(frames),
                        ))
                    }
                };
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let mut service = MetricsLayer.layer(inner);
        let request = http::Request::builder()
            .uri(format!("http://test{path}"))
            .body(())
            .expect("request");
        let response = service.call(request).await.expect("response");
        let method = method_label(path);
        // An error in the headers alone is over at once; a body that ends
        // with trailers keeps the call in flight until then.
        let expected = if is_ok { 1 } else { 0 };
        assert_eq!(in_flight(method), expected);
        http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("body");
        assert_eq!(in_flight(method), 0);
    }

    #[tokio::test]
    async fn a_call_is_counted_once_with_the_status_it_ended_with() {
        let path = "/grpc.health.v1.Health/Check";
        let (ok, not_found) = (requests(path, "OK"), requests(path, "NOT_FOUND"));
        let errors = ERRORS.with_label_values(&[path, "NOT_FOUND"]).get();
        call_through_layer(path, Ok(())).await;
        call_through_layer(path, Err(tonic::Status::not_found("no"))).await;
        assert_eq!(requests(path, "OK"), ok + 1);
        assert_eq!(requests(path, "NOT_FOUND"), not_found + 1);
        assert_eq!(
            ERRORS.with_label_values(&[path, "NOT_FOUND"]).get(),
            errors + 1
        );
    }

    #[tokio::test]
    async fn a_made_up_path_is_counted_as_other() {
        let before = requests("other", "UNIMPLEMENTED");
        for path in ["/no.Such/Method", "/grpc.health.v1.Health/MadeUp"] {
            call_through_layer(path, Err(tonic::Status::unimplemented("no"))).await;
            assert_eq!(requests(path, "UNIMPLEMENTED"), 0);
        }
        assert_eq!(requests("other", "UNIMPLEMENTED"), before + 2);
    }

    #[tokio::test]
    async fn a_call_abandoned_before_its_status_counts_as_cancelled() {
        let path = "/grpc.health.v1.Health/Watch";
        let before = requests(path, "CANCELLED");
        let call = Call::start(path);
        assert_eq!(in_flight(path), 1);
        drop(call);
        assert_eq!(in_flight(path), 0);
        assert_eq!(requests(path, "CANCELLED"), before + 1);
    }
}
