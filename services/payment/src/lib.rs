//! The payment service: records one payment per order for each
//! `process-payment` request, takes it to the provider outside the
//! consumer's transaction (`settlement`), announces the outcome (taken or
//! declined) on `payment-succeeded` or `payment-failed`, and serves
//! `GetPayment`.

pub mod error;
pub mod events;
pub mod provider;
pub mod query;
pub mod repository;
pub mod schema;
pub mod settlement;
pub mod startup;

pub use startup::{Application, PaymentConfig, SCHEMA, SERVICE_NAME};
