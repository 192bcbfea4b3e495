//! The tower layer that gives every gRPC call a server span, continuing the
//! trace of the caller's `traceparent` or starting one. Health and
//! reflection calls get none: probes would drown the traces of orders.

use std::task::{Context, Poll};

use futures::future::{BoxFuture, FutureExt};
use tower::{Layer, Service};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::propagation;
use crate::auth::methods::{Requirement, requirement_of};
use crate::metrics::grpc::status_in;

#[derive(Clone, Default)]
pub struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = TraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceService { inner }
    }
}

#[derive(Clone)]
pub struct TraceService<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for TraceService<S>
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
        let path = request.uri().path();
        let traced = propagation::is_enabled()
            && !matches!(
                requirement_of(path),
                Requirement::Open | Requirement::Refused
            );
        if !traced {
            return self.inner.call(request).boxed();
        }
        let span = server_span(path);
        let _ = span.set_parent(propagation::context_from_http(request.headers()));
        let response = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        let recorded = span.clone();
        async move {
            let response = response.await;
            if let Ok(response) = &response {
                // A unary error's status is in the headers; otherwise the
                // call is OK as far as its first answer goes.
                let code = status_in(response.headers()).map_or(0, |code| code as i64);
                recorded.record("rpc.grpc.status_code", code);
                if code != 0 {
                    recorded.record("otel.status_code", "ERROR");
                }
            }
            response
        }
        .instrument(span)
        .boxed()
    }
}

/// The span of a call to `path` (`/package.Service/Method`), named and
/// described as OpenTelemetry's RPC conventions say.
fn server_span(path: &str) -> tracing::Span {
    let name = path.trim_start_matches('/');
    let (service, method) = name.split_once('/').unwrap_or((name, ""));
    tracing::info_span!(
        "grpc call",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
    )
}
