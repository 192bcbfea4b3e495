//! Test harness shared by the integration and end-to-end tests.
//!
//! Every test gets its own PostgreSQL database and its own topic prefix, so
//! tests run in parallel against one broker and one server. Missing
//! infrastructure fails the test with a message that says how to start it;
//! nothing is skipped silently.

pub mod audit;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod database;
pub mod events;
pub mod grpc;
pub mod kafka;
pub mod load;
pub mod metrics;
pub mod orders;
pub mod otlp;
pub mod process;
pub mod proxy;
pub mod raw_produce;
pub mod service;
pub mod system;

use std::future::Future;
use std::time::Duration;

pub use database::TestDatabase;

/// Polls `condition` every 50 ms until it holds; panics with `what` after
/// `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A topic prefix no other test uses.
pub fn unique_topic_prefix() -> String {
    format!("t{}-", &uuid::Uuid::new_v4().simple().to_string()[..12])
}
