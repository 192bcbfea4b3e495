//! The tower layer in front of every gRPC server: authenticates each call
//! before any handler runs.

use std::net::IpAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use super::Authenticator;
use super::caller::Caller;
use super::methods::{Requirement, requirement_of};

/// What a refused caller hears, whichever check failed: the reason goes to
/// the log (at debug), so a prober learns nothing about our checks.
const INVALID_TOKEN: &str = "invalid token";

/// The packages of internal APIs, called by our own services.
const INTERNAL_API_PREFIX: &str = "/orders.internal.";

#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Authenticator,
}

impl AuthLayer {
    pub fn new(authenticator: Authenticator) -> Self {
        Self { authenticator }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    authenticator: Authenticator,
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let peer = peer_of(request.extensions());
        match self
            .authenticator
            .admit(request.uri().path(), request.headers(), peer)
        {
            Ok(caller) => {
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                self.inner.call(request).boxed()
            }
            Err(status) => futures::future::ready(Ok(status.into_http())).boxed(),
        }
    }
}

impl Authenticator {
    /// Decides a call from its path, headers and peer: the caller to hand
    /// the handler (none for the open health and reflection services), or
    /// the status that refuses it.
    fn admit(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        peer: Option<IpAddr>,
    ) -> Result<Option<Caller>, Status> {
        let requirement = requirement_of(path);
        if requirement == Requirement::Open {
            return Ok(None);
        }
        // No token grants a method the map does not name: no need to check
        // one (with authentication off, the router answers UNIMPLEMENTED).
        if requirement == Requirement::Refused && self.verifier.is_some() {
            return Err(Status::permission_denied(
                "the token does not grant this method",
            ));
        }
        // Internal APIs serve the gateway, which limited the caller already;
        // a second, independent budget would refuse calls the first allowed
        // (and its failures would block the gateway for everyone).
        if path.starts_with(INTERNAL_API_PREFIX) {
            return self.identify(requirement, path, headers).map(Some);
        }
        // A peer that keeps sending bad tokens is refused before another
        // signature is checked for it.
        if let Some(wait) = peer.and_then(|peer| self.limits.peer_blocked(peer)) {
            return Err(too_many_calls(wait));
        }
        let caller = self
            .identify(requirement, path, headers)
            .inspect_err(|status| {
                if let (Code::Unauthenticated, Some(peer)) = (status.code(), peer) {
                    self.limits.count_failed_auth(peer);
                }
            })?;
        // An authenticated caller is limited as itself, anyone else by the
        // address it calls from.
        let key = match caller.subject() {
            Some(subject) => subject.to_owned(),
            None => peer.map_or_else(|| "unknown peer".to_owned(), |ip| ip.to_string()),
        };
        self.limits
            .check(requirement, &key)
            .map_err(too_many_calls)?;
        Ok(Some(caller))
    }

    fn identify(
        &self,
        requirement: Requirement,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Result<Caller, Status> {
        let Some(verifier) = &self.verifier else {
            return Ok(Caller::unchecked());
        };
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(Status::unauthenticated("missing bearer token"));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or_else(|| Status::unauthenticated(INVALID_TOKEN))?;
        let identity = verifier.verify(token).map_err(|reason| {
            tracing::debug!(%reason, path, "token refused");
            Status::unauthenticated(INVALID_TOKEN)
        })?;
        if !requirement.is_met_by(identity.scopes) {
            tracing::debug!(subject = %identity.subject, path, "scope missing");
            return Err(Status::permission_denied(
                "the token does not grant this method",
            ));
        }
        // Checked above to be visible ASCII, so this cannot fail.
        let credentials = AsciiMetadataValue::try_from(value.as_bytes())
            .map_err(|_| Status::unauthenticated(INVALID_TOKEN))?;
        Ok(Caller::customer(
            identity.subject,
            identity.scopes,
            credentials,
        ))
    }
}

/// The caller's address, over TLS or not.
fn peer_of(extensions: &http::Extensions) -> Option<IpAddr> {
    let tcp = extensions.get::<TcpConnectInfo>().or_else(|| {
        extensions
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .map(TlsConnectInfo::get_ref)
    });
    tcp.and_then(TcpConnectInfo::remote_addr)
        .map(|addr| addr.ip())
}

/// RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo` saying when to retry.
fn too_many_calls(wait: Duration) -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        "too many calls from this caller; retry after the delay in RetryInfo",
        ErrorDetails::with_retry_info(Some(wait)),
    )
}
