//! Builds and runs the order service.

use std::net::SocketAddr;

use anyhow::Context;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use oms_api::orders::internal::v1::order_query_service_server::OrderQueryServiceServer;
use oms_common::config::ConfigError;
use oms_common::db;
use oms_common::grpc::MAX_REQUEST_BYTES;
use oms_common::service::{EventService, ServiceConfig, Worker};
use oms_common::topics::{
    ORDER_CREATED, PAYMENT_FAILED, PAYMENT_SUCCEEDED, PROCESS_PAYMENT, TopicNames,
};

use crate::events::OrderEvents;
use crate::query::OrderQueries;
use crate::watch::OrderChanges;

/// Connections for reading watched orders: a watch's first state and each
/// change's new state are one short query each.
const WATCH_POOL_SIZE: u32 = 2;

pub const SERVICE_NAME: &str = "order-service";
pub const SCHEMA: &str = "order_service";
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/order");

pub struct Application {
    config: ServiceConfig,
    listener: TcpListener,
}

impl Application {
    pub fn config_from_env() -> Result<ServiceConfig, ConfigError> {
        ServiceConfig::from_env(
            "ORDER_GRPC_ADDR",
            "0.0.0.0:50052",
            "ORDER_DATABASE_URL",
            "0.0.0.0:9102",
        )
    }

    /// Binds the listener; port 0 picks a free port (see `local_addr`).
    pub async fn build(config: ServiceConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("failed to bind {}", config.grpc_addr))?;
        Ok(Self { config, listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.grpc_addr)
    }

    pub async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        crate::metrics::describe();
        let topics = TopicNames::new(self.config.kafka.topic_prefix.clone());
        let pool = db::pool(
            &self.config.database,
            SCHEMA,
            &self.config.membership.instance_id,
        );
        let reads = db::read_pool(
            &self.config.database,
            SCHEMA,
            &self.config.membership.instance_id,
        );
        // Watches read through a pool of their own, so neither a flood of
        // reads nor one of watches holds the other back.
        let watches = db::named_pool(
            WATCH_POOL_SIZE,
            &self.config.database,
            SCHEMA,
            "order_service watches",
            &self.config.membership.instance_id,
        );
        let changes = OrderChanges::new(watches.clone());
        // Supervised with the consumers; a listener that (re)starts reads
        // every watched order again, so watchers miss nothing meanwhile.
        let listener = {
            let (changes, url) = (changes.clone(), self.config.database.url.clone());
            Worker {
                name: "order change listener",
                start: Box::new(move |stop| Box::pin(changes.clone().listen(url.clone(), stop))),
            }
        };
        let queries = OrderQueryServiceServer::new(OrderQueries {
            pool: reads.clone(),
            claims: pool.clone(),
            changes,
            shutdown: shutdown.clone(),
        })
        .max_decoding_message_size(MAX_REQUEST_BYTES);
        let service = EventService {
            name: SERVICE_NAME,
            schema: SCHEMA,
            migrations: || MIGRATIONS,
            consumes: vec![
                topics.name(ORDER_CREATED),
                topics.name(PAYMENT_SUCCEEDED),
                topics.name(PAYMENT_FAILED),
            ],
            produces: vec![topics.name(PROCESS_PAYMENT)],
            handler: OrderEvents {
                process_payment_topic: topics.name(PROCESS_PAYMENT),
                source: "/order-service",
            },
            grpc_services: vec!["orders.internal.v1.OrderQueryService"],
            relay_wakeup: Default::default(),
            workers: vec![listener],
            metered_pools: vec![("reads", reads), ("watches", watches)],
        };
        service
            .run(
                &self.config,
                pool,
                self.listener,
                |routes| routes.add_service(queries),
                shutdown,
            )
            .await
    }
}
