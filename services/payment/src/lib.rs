//! The payment service: takes payment for each `process-payment` request,
//! records one payment per order (taken or declined), announces it on
//! `payment-succeeded` or `payment-failed`, and serves `GetPayment`.

pub mod error;
pub mod events;
pub mod provider;
pub mod query;
pub mod repository;
pub mod schema;
pub mod startup;

pub use startup::{Application, PaymentConfig, SCHEMA, SERVICE_NAME};
