//! The order service: records orders from `order-created`, requests their
//! payment on `process-payment`, marks them paid from `payment-succeeded`,
//! cancels them from `payment-failed`, and answers the gateway's reads,
//! watches and idempotency-key claims over internal gRPC.

pub mod error;
pub mod events;
pub mod metrics;
pub mod order_stream;
pub mod pagination;
pub mod query;
pub mod repository;
pub mod request_keys;
pub mod schema;
pub mod startup;
pub mod watch;

pub use startup::{Application, SCHEMA, SERVICE_NAME};
