//! The notification service: records, and logs, one notification per order
//! and step the customer should hear about (order received, payment
//! succeeded, payment failed), and serves the history as
//! `ListNotifications`.

pub mod error;
pub mod events;
pub mod query;
pub mod schema;
pub mod startup;

pub use startup::{Application, SCHEMA, SERVICE_NAME};
