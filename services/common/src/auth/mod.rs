//! Who is calling, and what they may do.
//!
//! Every gRPC port is wrapped in [`AuthLayer`]. With `AUTH_MODE=jwt` (the
//! default) it verifies the bearer JWT of every call except health and
//! reflection, checks the method's scope, and hands the handler a
//! [`Caller`]. Handlers then decide which customers' records the caller may
//! see ([`Caller::may_access`], [`Caller::customer_filter`]); the layer
//! alone cannot, since ownership is a property of the record.
//!
//! Deny by default: a method missing from the scope map is refused, and a
//! handler that finds no `Caller` refuses the call.

mod caller;
mod config;
mod jwt;
mod layer;
mod limits;
pub(crate) mod methods;

pub use caller::{AccessDenied, Caller, Scopes};
pub use config::{AuthConfig, AuthMode, JwtSettings};
pub use jwt::{JwtVerifier, KeySetError};
pub use layer::{AuthLayer, AuthService};
pub use limits::{RateLimitConfig, RateLimits};
pub use methods::{Requirement, requirement_of};

use std::sync::Arc;

/// How a service admits its calls: built once at start-up from
/// [`AuthConfig`], shared by every connection.
#[derive(Clone)]
pub struct Authenticator {
    /// `None` with `AUTH_MODE=disabled`: every call is let through as an
    /// unchecked caller who may see every customer.
    verifier: Option<Arc<JwtVerifier>>,
    limits: Arc<RateLimits>,
}

impl Authenticator {
    /// Reads the key set named by the configuration. Fails when it cannot be
    /// read or holds no key we accept, so a service never starts open by
    /// mistake.
    pub fn from_config(config: &AuthConfig) -> Result<Self, KeySetError> {
        let verifier = match &config.mode {
            AuthMode::Disabled => {
                tracing::warn!(
                    "AUTH_MODE=disabled: every caller may read and write every customer's orders; use this for local experiments only"
                );
                None
            }
            AuthMode::Jwt(settings) => Some(Arc::new(JwtVerifier::from_settings(settings)?)),
        };
        Ok(Self {
            verifier,
            limits: Arc::new(RateLimits::new(config.limits)),
        })
    }

    pub fn layer(&self) -> AuthLayer {
        AuthLayer::new(self.clone())
    }
}
