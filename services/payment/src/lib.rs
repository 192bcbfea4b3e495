//! The payment service: takes payment for each `process-payment` request,
//! records one payment per order and announces it on `payment-succeeded`.

pub mod events;
pub mod provider;
pub mod repository;
pub mod schema;
pub mod startup;

pub use startup::{Application, PaymentConfig, SCHEMA, SERVICE_NAME};
