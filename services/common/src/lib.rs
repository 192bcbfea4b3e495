//! What every service needs, written once: configuration, telemetry, the
//! database pool and migrations, Kafka topics and producing, the consumer loop
//! that keeps offsets in PostgreSQL, the outbox relay, health reporting, the
//! gRPC server scaffolding and shutdown.

pub mod auth;
pub mod batching;
pub mod config;
pub mod consumer;
pub mod db;
pub mod entrypoint;
pub mod grpc;
pub mod health;
pub mod kafka;
pub mod membership;
pub mod metrics;
pub mod outbox;
pub mod pagination;
pub mod retry;
pub mod schema;
pub mod service;
pub mod shutdown;
pub mod supervisor;
pub mod telemetry;
pub mod tls;
pub mod topics;
