//! Builds and runs the notification service.

use std::net::SocketAddr;

use anyhow::Context;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use oms_api::notifications::v1::notification_service_server::NotificationServiceServer;
use oms_common::config::ConfigError;
use oms_common::db;
use oms_common::grpc::MAX_REQUEST_BYTES;
use oms_common::service::{EventService, ServiceConfig};
use oms_common::topics::{ORDER_CREATED, PAYMENT_FAILED, PAYMENT_SUCCEEDED, TopicNames};

use crate::events::NotificationEvents;
use crate::query::NotificationQueries;

pub const SERVICE_NAME: &str = "notification-service";
pub const SCHEMA: &str = "notification_service";
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/notification");

pub struct Application {
    config: ServiceConfig,
    listener: TcpListener,
}

impl Application {
    pub fn config_from_env() -> Result<ServiceConfig, ConfigError> {
        ServiceConfig::from_env(
            "NOTIFICATION_GRPC_ADDR",
            "0.0.0.0:50054",
            "NOTIFICATION_DATABASE_URL",
            "0.0.0.0:9104",
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
        let queries = NotificationServiceServer::new(NotificationQueries {
            pool: reads.clone(),
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
            produces: vec![],
            handler: NotificationEvents,
            grpc_services: vec!["notifications.v1.NotificationService"],
            relay_wakeup: Default::default(),
            workers: Vec::new(),
            metered_pools: vec![("reads", reads)],
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
