//! Builds and runs the payment service.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use oms_api::payments::v1::payment_service_server::PaymentServiceServer;
use oms_common::config::ConfigError;
use oms_common::db;
use oms_common::grpc::MAX_REQUEST_BYTES;
use oms_common::service::{EventService, ServiceConfig, Worker};
use oms_common::topics::{PAYMENT_FAILED, PAYMENT_SUCCEEDED, PROCESS_PAYMENT, TopicNames};

use crate::events::PaymentEvents;
use crate::provider::SimulatedProvider;
use crate::query::PaymentQueries;
use crate::settlement::{ProviderPolicy, Settlement};

pub const SERVICE_NAME: &str = "payment-service";
pub const SCHEMA: &str = "payment_service";
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/payment");
const SOURCE: &str = "/payment-service";

/// The shared service settings plus the payment provider's and how it is
/// called.
#[derive(Debug, Clone)]
pub struct PaymentConfig {
    pub service: ServiceConfig,
    pub provider: SimulatedProvider,
    pub provider_policy: ProviderPolicy,
}

pub struct Application {
    config: PaymentConfig,
    listener: TcpListener,
}

impl Application {
    pub fn config_from_env() -> Result<PaymentConfig, ConfigError> {
        Ok(PaymentConfig {
            service: ServiceConfig::from_env(
                "PAYMENT_GRPC_ADDR",
                "0.0.0.0:50053",
                "PAYMENT_DATABASE_URL",
                "0.0.0.0:9103",
            )?,
            provider: SimulatedProvider::from_env()?,
            provider_policy: ProviderPolicy::from_env()?,
        })
    }

    /// Binds the listener; port 0 picks a free port (see `local_addr`).
    pub async fn build(config: PaymentConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.service.grpc_addr)
            .await
            .with_context(|| format!("failed to bind {}", config.service.grpc_addr))?;
        Ok(Self { config, listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.config.service.grpc_addr)
    }

    pub async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let topics = TopicNames::new(self.config.service.kafka.topic_prefix.clone());
        let pool = db::pool(
            &self.config.service.database,
            SCHEMA,
            &self.config.service.membership.instance_id,
        );
        let reads = db::read_pool(
            &self.config.service.database,
            SCHEMA,
            &self.config.service.membership.instance_id,
        );
        let queries = PaymentServiceServer::new(PaymentQueries {
            pool: reads.clone(),
        })
        .max_decoding_message_size(MAX_REQUEST_BYTES);
        let relay_wakeup = Arc::new(Notify::new());
        let settlement = Arc::new(Settlement {
            pool: pool.clone(),
            provider: self.config.provider,
            policy: self.config.provider_policy,
            payment_succeeded_topic: topics.name(PAYMENT_SUCCEEDED),
            payment_failed_topic: topics.name(PAYMENT_FAILED),
            source: SOURCE,
            relay_wakeup: Arc::clone(&relay_wakeup),
        });
        let settlement_wakeup = Arc::new(Notify::new());
        let settling = {
            let wakeup = Arc::clone(&settlement_wakeup);
            Worker {
                name: "payment settlement",
                start: Box::new(move |stop| {
                    Box::pin(Arc::clone(&settlement).run(Arc::clone(&wakeup), stop))
                }),
            }
        };
        let service = EventService {
            name: SERVICE_NAME,
            schema: SCHEMA,
            migrations: || MIGRATIONS,
            consumes: vec![topics.name(PROCESS_PAYMENT)],
            produces: vec![topics.name(PAYMENT_SUCCEEDED), topics.name(PAYMENT_FAILED)],
            handler: PaymentEvents { settlement_wakeup },
            grpc_services: vec!["payments.v1.PaymentService"],
            relay_wakeup,
            workers: vec![settling],
            metered_pools: vec![("reads", reads)],
        };
        service
            .run(
                &self.config.service,
                pool,
                self.listener,
                |routes| routes.add_service(queries),
                shutdown,
            )
            .await
    }
}
