//! Which scope each gRPC method needs. Deny by default: a method this map
//! does not name is refused, so a new RPC stays closed until it is added.

use super::caller::Scopes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Health and reflection: probes and grpcurl discovery work without a
    /// token.
    Open,
    Read,
    Write,
    /// Not in the map.
    Refused,
}

impl Requirement {
    pub fn is_met_by(self, scopes: Scopes) -> bool {
        match self {
            Requirement::Open => true,
            Requirement::Read => scopes.read,
            Requirement::Write => scopes.write,
            Requirement::Refused => false,
        }
    }
}

/// The requirement of a call to `path` (`/package.Service/Method`).
pub fn requirement_of(path: &str) -> Requirement {
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
        return Requirement::Refused;
    };
    match (service, method) {
        (
            "grpc.health.v1.Health"
            | "grpc.reflection.v1.ServerReflection"
            | "grpc.reflection.v1alpha.ServerReflection",
            _,
        ) => Requirement::Open,
        ("orders.v1.OrderService", "CreateOrder") => Requirement::Write,
        ("orders.v1.OrderService", "GetOrder" | "ListOrders" | "WatchOrder") => Requirement::Read,
        // The gateway's calls on behalf of its caller, with its token.
        ("orders.internal.v1.OrderQueryService", "ClaimRequestKey") => Requirement::Write,
        ("orders.internal.v1.OrderQueryService", "GetOrder" | "ListOrders" | "WatchOrder") => {
            Requirement::Read
        }
        ("payments.v1.PaymentService", "GetPayment") => Requirement::Read,
        ("notifications.v1.NotificationService", "ListNotifications") => Requirement::Read,
        _ => Requirement::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_public_method_needs_its_scope_and_unknown_ones_are_refused() {
        let read = Scopes {
            read: true,
            ..Scopes::default()
        };
        let write = Scopes {
            write: true,
            ..Scopes::default()
        };
        assert!(requirement_of("/orders.v1.OrderService/CreateOrder").is_met_by(write));
        assert!(!requirement_of("/orders.v1.OrderService/CreateOrder").is_met_by(read));
        assert!(requirement_of("/orders.v1.OrderService/GetOrder").is_met_by(read));
        assert!(!requirement_of("/orders.v1.OrderService/GetOrder").is_met_by(write));
        assert_eq!(
            requirement_of("/grpc.health.v1.Health/Check"),
            Requirement::Open
        );
        assert_eq!(
            requirement_of("/orders.v1.OrderService/DeleteOrder"),
            Requirement::Refused
        );
        assert_eq!(requirement_of("/nonsense"), Requirement::Refused);
        // An admin without the method's own scope is refused too.
        let admin = Scopes {
            admin: true,
            ..Scopes::default()
        };
        assert!(!requirement_of("/payments.v1.PaymentService/GetPayment").is_met_by(admin));
    }
}
