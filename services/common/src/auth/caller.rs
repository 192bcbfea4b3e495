//! The caller of one gRPC call, as the auth layer established it.

use std::sync::Arc;

use tonic::Status;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};

/// The scopes we know; others in a token are ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scopes {
    /// `orders:write`: create orders.
    pub write: bool,
    /// `orders:read`: read orders, payments and notifications.
    pub read: bool,
    /// `orders:admin`: any customer's records, not only the caller's own.
    /// It widens whose records, not which methods: an admin still needs
    /// `orders:read` or `orders:write`.
    pub admin: bool,
}

impl Scopes {
    /// Parses RFC 9068's `scope` claim: scope names separated by spaces.
    pub fn parse(claim: &str) -> Self {
        let mut scopes = Self::default();
        for scope in claim.split_ascii_whitespace() {
            match scope {
                "orders:write" => scopes.write = true,
                "orders:read" => scopes.read = true,
                "orders:admin" => scopes.admin = true,
                _ => {}
            }
        }
        scopes
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Identity {
    /// `AUTH_MODE=disabled`: nobody was checked, everything is allowed.
    Unchecked,
    Customer {
        subject: String,
        admin: bool,
    },
}

/// Who is calling: put in each call's extensions by the auth layer.
#[derive(Debug, Clone)]
pub struct Caller {
    identity: Identity,
    /// The `authorization` value the call came with, passed on to the
    /// services it calls so that they check the same caller themselves.
    credentials: Option<Arc<AsciiMetadataValue>>,
}

/// The caller asked for records of a customer other than itself.
#[derive(Debug, thiserror::Error)]
#[error("the caller may not access customer {0:?}'s records")]
pub struct AccessDenied(pub String);

impl From<AccessDenied> for Status {
    fn from(denied: AccessDenied) -> Self {
        Status::permission_denied(denied.to_string())
    }
}

impl Caller {
    /// A caller nobody checked, who may see everything: what
    /// `AUTH_MODE=disabled` hands every handler, and what a test that calls
    /// a handler directly needs.
    pub fn unchecked() -> Self {
        Self {
            identity: Identity::Unchecked,
            credentials: None,
        }
    }

    pub(crate) fn customer(
        subject: String,
        scopes: Scopes,
        credentials: AsciiMetadataValue,
    ) -> Self {
        Self {
            identity: Identity::Customer {
                subject,
                admin: scopes.admin,
            },
            credentials: Some(Arc::new(credentials)),
        }
    }

    /// The caller the auth layer attached to `request`. A request without
    /// one did not pass the layer, and is refused.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Self, Status> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("missing bearer token"))
    }

    /// The token's subject; `None` when authentication is disabled.
    pub fn subject(&self) -> Option<&str> {
        match &self.identity {
            Identity::Unchecked => None,
            Identity::Customer { subject, .. } => Some(subject),
        }
    }

    /// Whether the caller may see or act on `customer_id`'s records.
    pub fn may_access(&self, customer_id: &str) -> bool {
        match &self.identity {
            Identity::Unchecked => true,
            Identity::Customer { subject, admin } => *admin || subject == customer_id,
        }
    }

    /// Whose records a list call returns, from the customer it asked for
    /// (`""` for none): a customer's own by default, and another's or
    /// everyone's (`None`) only for an admin or with authentication off.
    pub fn customer_filter(&self, requested: &str) -> Result<Option<String>, AccessDenied> {
        match &self.identity {
            Identity::Customer {
                subject,
                admin: false,
            } => {
                if requested.is_empty() || requested == subject {
                    Ok(Some(subject.clone()))
                } else {
                    Err(AccessDenied(requested.to_owned()))
                }
            }
            _ => Ok(Some(requested.to_owned()).filter(|id| !id.is_empty())),
        }
    }

    /// Adds the caller's credentials to a call made on its behalf, and the
    /// current trace context, so the service called continues the trace.
    pub fn forward<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        self.forward_into(request.metadata_mut());
        crate::telemetry::propagation::inject_current_into_metadata(request.metadata_mut());
        request
    }

    fn forward_into(&self, metadata: &mut MetadataMap) {
        if let Some(credentials) = &self.credentials {
            metadata.insert("authorization", AsciiMetadataValue::clone(credentials));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer(subject: &str, scope: &str) -> Caller {
        Caller::customer(
            subject.into(),
            Scopes::parse(scope),
            AsciiMetadataValue::from_static("Bearer x"),
        )
    }

    #[test]
    fn scopes_are_read_from_a_space_separated_claim() {
        let scopes = Scopes::parse("openid  orders:read\torders:admin");
        assert!(scopes.read && scopes.admin && !scopes.write);
        assert_eq!(Scopes::parse(""), Scopes::default());
        // Names are exact: a prefix grants nothing.
        assert_eq!(Scopes::parse("orders:readx orders"), Scopes::default());
    }

    #[test]
    fn a_customer_sees_only_its_own_records_and_an_admin_any() {
        let alice = customer("alice", "orders:read");
        assert!(alice.may_access("alice"));
        assert!(!alice.may_access("bob"));
        assert!(customer("root", "orders:read orders:admin").may_access("bob"));
        assert!(Caller::unchecked().may_access("bob"));
    }

    #[test]
    fn a_list_defaults_to_the_callers_own_records() {
        let alice = customer("alice", "orders:read");
        assert_eq!(alice.customer_filter("").unwrap().as_deref(), Some("alice"));
        assert_eq!(
            alice.customer_filter("alice").unwrap().as_deref(),
            Some("alice")
        );
        assert!(alice.customer_filter("bob").is_err());
        let admin = customer("root", "orders:read orders:admin");
        assert_eq!(admin.customer_filter("").unwrap(), None);
        assert_eq!(
            admin.customer_filter("bob").unwrap().as_deref(),
            Some("bob")
        );
        assert_eq!(Caller::unchecked().customer_filter("").unwrap(), None);
    }

    #[test]
    fn forwarded_calls_carry_the_callers_credentials() {
        let forwarded = customer("alice", "orders:read").forward(());
        assert_eq!(
            forwarded.metadata().get("authorization").unwrap(),
            "Bearer x"
        );
        let unchecked = Caller::unchecked().forward(());
        assert!(unchecked.metadata().get("authorization").is_none());
    }
}
