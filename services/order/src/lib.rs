//! The order service: records orders from `order-created`, requests their
//! payment on `process-payment`, marks them paid from `payment-succeeded`,
//! and answers the gateway's reads over internal gRPC.

pub mod error;
pub mod events;
pub mod pagination;
pub mod query;
pub mod repository;
pub mod schema;
pub mod startup;

pub use startup::{Application, SCHEMA, SERVICE_NAME};
