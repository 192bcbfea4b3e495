//! Builds and runs the gateway.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use oms_api::orders::v1::order_service_server::OrderServiceServer;
use oms_common::batching::BatchingProducer;
use oms_common::config::{ConfigError, KafkaConfig, listen_addr, var};
use oms_common::grpc::ServingConfig;
use oms_common::grpc::{self, MAX_REQUEST_BYTES};
use oms_common::health::Readiness;
use oms_common::kafka::{self, Producer};
use oms_common::metrics::MetricsEndpoint;
use oms_common::retry::retry_until_ok;
use oms_common::shutdown;
use oms_common::tls::ClientTls;
use oms_common::topics::{ORDER_CREATED, TopicNames};

use crate::service::Gateway;
use crate::upstream::{OrderService, parse_targets};
use crate::watch_limits::{WatchLimitConfig, WatchLimits};

pub const SERVICE_NAME: &str = "gateway";

/// The longest publish timeout allowed: the server's own timeout, which ends
/// any call that outlives it. A longer publish timeout could never be waited
/// out, and would only suggest it can.
const MAX_PUBLISH_TIMEOUT_MS: u64 = grpc::SERVER_TIMEOUT.as_millis() as u64;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub grpc_addr: SocketAddr,
    pub order_service_url: String,
    pub kafka: KafkaConfig,
    pub shutdown_grace: Duration,
    pub publish_timeout: Duration,
    /// The least time between two produce requests of a partition; records
    /// arriving sooner share the next request.
    pub produce_linger: Duration,
    pub serving: ServingConfig,
    /// TLS towards the order service (`ORDER_SERVICE_CA_FILE` and friends).
    pub order_service_tls: Option<ClientTls>,
    pub watch_limits: WatchLimitConfig,
}

impl GatewayConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let order_service_url =
            var("ORDER_SERVICE_URL").unwrap_or_else(|| "http://127.0.0.1:50052".into());
        let targets = parse_targets(&order_service_url)
            .map_err(|err| ConfigError::new("ORDER_SERVICE_URL", &order_service_url, err))?;
        let order_service_tls = ClientTls::from_env("ORDER_SERVICE")?;
        // TLS is all or nothing, and the URL says which.
        if targets
            .iter()
            .any(|t| t.is_https() != order_service_tls.is_some())
        {
            return Err(ConfigError::new(
                "ORDER_SERVICE_URL",
                &order_service_url,
                "use https:// URLs exactly when ORDER_SERVICE_CA_FILE is set",
            ));
        }
        Ok(Self {
            grpc_addr: listen_addr("GATEWAY_GRPC_ADDR", "0.0.0.0:50051")?,
            order_service_url,
            kafka: KafkaConfig::from_env()?,
            shutdown_grace: shutdown::grace_period()?,
            publish_timeout: Duration::from_millis(oms_common::config::parse_in_range(
                "GATEWAY_PUBLISH_TIMEOUT_MS",
                5_000,
                10..=MAX_PUBLISH_TIMEOUT_MS,
            )?),
            produce_linger: Duration::from_micros(oms_common::config::parse_in_range(
                "GATEWAY_PRODUCE_LINGER_US",
                2_000,
                0..=100_000,
            )?),
            serving: ServingConfig::from_env("0.0.0.0:9101")?,
            order_service_tls,
            watch_limits: WatchLimitConfig::from_env()?,
        })
    }
}

pub struct Application {
    config: GatewayConfig,
    listener: TcpListener,
}

impl Application {
    pub fn config_from_env() -> Result<GatewayConfig, ConfigError> {
        GatewayConfig::from_env()
    }

    /// Binds the listener; port 0 picks a free port (see `local_addr`).
    pub async fn build(config: GatewayConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("failed to bind {}", config.grpc_addr))?;
        Ok(Self { config, listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.config.grpc_addr)
    }

    pub async fn run_until(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let config = self.config;
        let topic = TopicNames::new(config.kafka.topic_prefix.clone()).name(ORDER_CREATED);
        let targets = parse_targets(&config.order_service_url)
            .map_err(|err| anyhow::anyhow!("invalid ORDER_SERVICE_URL: {err}"))?;
        let tls = config
            .order_service_tls
            .as_ref()
            .map(ClientTls::load)
            .transpose()?;
        let orders = OrderService::connect(targets, tls).await;
        tokio::spawn(Arc::clone(&orders).keep_resolving(shutdown.clone()));
        let producer = Arc::new(OnceCell::new());
        let gateway = Gateway {
            producer: Arc::clone(&producer),
            orders,
            publish_timeout: config.publish_timeout,
            shutdown: shutdown.clone(),
            watches: WatchLimits::new(config.watch_limits),
        };

        // Before serving anything: a key set or certificate that cannot be
        // read stops the gateway rather than leaving it open.
        let serving = config.serving.load()?;
        let (readiness, routes) = Readiness::new(&[SERVICE_NAME, "orders.v1.OrderService"]).await;
        let routes = routes.add_service(
            OrderServiceServer::new(gateway).max_decoding_message_size(MAX_REQUEST_BYTES),
        );
        let server_stop = CancellationToken::new();
        grpc::spawn_health_port(&config.serving, &readiness, server_stop.clone()).await?;
        crate::metrics::describe();
        MetricsEndpoint::default()
            .spawn(&config.serving.metrics, server_stop.clone())
            .await?;
        let server = tokio::spawn(grpc::serve(
            self.listener,
            routes,
            serving,
            server_stop.clone(),
        ));

        let connect = || async {
            let client = kafka::connect(&config.kafka, SERVICE_NAME).await?;
            kafka::ensure_topics(
                &client,
                std::slice::from_ref(&topic),
                config.kafka.partitions,
                config.kafka.replication_factor,
            )
            .await?;
            // Opens the partition connections now rather than on the first
            // order. A record is never sent after its caller's deadline, and
            // a batch is abandoned at its earliest one, so an UNAVAILABLE
            // stays true.
            let producer = BatchingProducer::with_max_message_bytes(
                Arc::new(Producer::new(client)),
                &topic,
                config.produce_linger,
                config.publish_timeout,
                config.kafka.max_message_bytes,
            )
            .await?;
            anyhow::Ok(Arc::new(producer))
        };
        if let Some(connected) = retry_until_ok("the broker", &shutdown, connect).await {
            let client = Arc::clone(connected.producer().client());
            let _ = producer.set(connected);
            let probe = || {
                let client = Arc::clone(&client);
                async move {
                    if kafka::is_reachable(&client).await {
                        Ok(())
                    } else {
                        Err("broker does not answer".to_owned())
                    }
                }
            };
            readiness.monitor(probe, shutdown.clone()).await;
        }

        readiness.set_serving(false).await;
        server_stop.cancel();
        match tokio::time::timeout(config.shutdown_grace, server).await {
            Ok(result) => result?.context("gRPC server failed")?,
            Err(_) => tracing::warn!("in-flight calls did not finish within the grace period"),
        }
        tracing::info!("gateway stopped");
        Ok(())
    }
}
