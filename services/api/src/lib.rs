//! The system's contract: the generated gRPC API and event types from `proto/`,
//! the CloudEvents envelope every Kafka record carries, exact money helpers, and
//! the validation rules every service applies to orders.

pub mod envelope;
pub mod money;
pub mod order_keys;
pub mod time;
pub mod validation;

/// The encoded file descriptor set of every proto in `proto/`, served by
/// each service's reflection endpoint.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/descriptor_set.bin"));

#[allow(clippy::all, missing_docs)]
pub mod google {
    pub mod r#type {
        include!(concat!(env!("OUT_DIR"), "/google.r#type.rs"));
    }
}

#[allow(clippy::all, missing_docs)]
pub mod orders {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/orders.v1.rs"));
    }
    pub mod events {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/orders.events.v1.rs"));
        }
    }
    pub mod internal {
        pub mod v1 {
            include!(concat!(env!("OUT_DIR"), "/orders.internal.v1.rs"));
        }
    }
}

#[allow(clippy::all, missing_docs)]
pub mod payments {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/payments.v1.rs"));
    }
}

#[allow(clippy::all, missing_docs)]
pub mod notifications {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/notifications.v1.rs"));
    }
}

pub use envelope::{Event, EventEnvelope};
