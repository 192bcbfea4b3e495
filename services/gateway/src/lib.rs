//! The gateway: the public `orders.v1.OrderService`. It validates requests,
//! publishes `order-created` and answers only once the broker has
//! acknowledged it, and serves reads and watches by asking the order service.

pub mod error;
pub mod idempotency;
pub mod metrics;
pub mod service;
pub mod startup;
pub mod upstream;
pub mod validation;
pub mod watch;
pub mod watch_limits;

pub use startup::{Application, GatewayConfig, SERVICE_NAME};
