//! The life of an event-driven service, shared by the order, payment and
//! notification services: serve gRPC at once (NOT_SERVING), wait for the
//! database and broker, migrate, create topics, then run the consumers and
//! the outbox relay until shutdown, and wind down in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use diesel_migrations::EmbeddedMigrations;
use futures::future::BoxFuture;
use rskafka::client::Client;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

use crate::config::{ConfigError, DatabaseConfig, KafkaConfig, listen_addr};
use crate::consumer::{Consumer, ConsumerStats, EventHandler, FetchSettings};
use crate::db::{self, DbPool};
use crate::grpc::ServingConfig;
use crate::health::Readiness;
use crate::kafka::{self, Producer};
use crate::membership::{Membership, MembershipConfig};
use crate::metrics::MetricsEndpoint;
use crate::supervisor::{TaskHealth, supervise};
use crate::topics::dead_letter_topic;
use crate::{consumer, grpc, metrics, outbox, retry, shutdown};

/// The configuration every downstream service reads.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub grpc_addr: SocketAddr,
    pub database: DatabaseConfig,
    pub kafka: KafkaConfig,
    pub membership: MembershipConfig,
    pub shutdown_grace: Duration,
    pub serving: ServingConfig,
}

impl ServiceConfig {
    /// Reads the shared variables plus the service's own listen address
    /// (`addr_var`, default `default_addr`), database URL (`database_var`)
    /// and metrics address (default `default_metrics_addr`).
    pub fn from_env(
        addr_var: &str,
        default_addr: &str,
        database_var: &str,
        default_metrics_addr: &str,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            grpc_addr: listen_addr(addr_var, default_addr)?,
            database: DatabaseConfig::from_env(database_var)?,
            kafka: KafkaConfig::from_env()?,
            membership: MembershipConfig::from_env()?,
            shutdown_grace: shutdown::grace_period()?,
            serving: ServingConfig::from_env(default_metrics_addr)?,
        })
    }
}

/// What distinguishes one event-driven service from another.
pub struct EventService<H> {
    /// Process name: the health service name, Kafka client id and
    /// CloudEvents source.
    pub name: &'static str,
    /// The PostgreSQL schema that holds the service's tables.
    pub schema: &'static str,
    /// Its own migrations (`|| MIGRATIONS`; the embedded set is not `Copy`).
    pub migrations: fn() -> EmbeddedMigrations,
    /// Full names of the topics it consumes.
    pub consumes: Vec<String>,
    /// Full names of the topics it publishes to.
    pub produces: Vec<String>,
    pub handler: H,
    /// Its own gRPC services, reported by health beside the overall status.
    pub grpc_services: Vec<&'static str>,
    /// Wakes the relay; shared with workers that write outbox rows, so their
    /// events go out at once rather than at the relay's next sweep.
    pub relay_wakeup: Arc<Notify>,
    /// Its own background tasks, supervised like the consumers and stopped
    /// after them, before the relay.
    pub workers: Vec<Worker>,
    /// Its pools beside the main one, by name, for the metrics.
    pub metered_pools: Vec<(&'static str, DbPool)>,
}

/// A background task of a service: `start` makes the task, which runs until
/// the token it is given is cancelled.
pub struct Worker {
    pub name: &'static str,
    pub start: Box<dyn FnMut(CancellationToken) -> BoxFuture<'static, ()> + Send + Sync>,
}

impl<H: EventHandler> EventService<H> {
    /// Runs the service on `listener` until `shutdown`; `routes` are its own
    /// gRPC services, served beside health and reflection.
    pub async fn run(
        mut self,
        config: &ServiceConfig,
        pool: DbPool,
        listener: TcpListener,
        add_routes: impl FnOnce(Routes) -> Routes,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut health_names = vec![self.name];
        health_names.extend(&self.grpc_services);
        // Before serving anything: a key set or certificate that cannot be
        // read stops the service rather than leaving it open.
        let serving = config.serving.load()?;
        let (readiness, routes) = Readiness::new(&health_names).await;
        let server_stop = CancellationToken::new();
        grpc::spawn_health_port(&config.serving, &readiness, server_stop.clone()).await?;
        let stats = Arc::new(ConsumerStats::default());
        self.serve_metrics(config, &pool, &stats, server_stop.clone())
            .await?;
        let server = tokio::spawn(grpc::serve(
            listener,
            add_routes(routes),
            serving,
            server_stop.clone(),
        ));

        let start = || self.try_start_dependencies(config);
        let Some(client) = retry::retry_until_ok("dependencies", &shutdown, start).await else {
            server_stop.cancel();
            return server.await?.context("gRPC server failed");
        };

        let wakeup = Arc::clone(&self.relay_wakeup);
        let tasks = Arc::new(TaskHealth::default());
        let membership = Arc::new(Membership::new(config.membership.clone(), pool.clone()));
        tracing::info!(
            service = self.name,
            instance = membership.instance_id(),
            "joining"
        );
        let relay_stop = CancellationToken::new();
        let relay = outbox::Relay {
            pool: pool.clone(),
            producer: Arc::new(Producer::new(Arc::clone(&client))),
            max_message_bytes: config.kafka.max_message_bytes,
            stats: Arc::new(outbox::RelayStats::default()),
            membership: Arc::clone(&membership),
        };
        let relay = {
            let (wakeup, stop) = (Arc::clone(&wakeup), relay_stop.clone());
            tokio::spawn(supervise(
                "outbox relay".to_owned(),
                Arc::clone(&tasks),
                relay_stop.clone(),
                move || relay.clone().run(Arc::clone(&wakeup), stop.clone()),
            ))
        };
        let consumers = Consumer {
            client: Arc::clone(&client),
            pool: pool.clone(),
            membership: Arc::clone(&membership),
            handler: Arc::new(self.handler),
            relay_wakeup: wakeup,
            stats: Arc::clone(&stats),
            fetch: FetchSettings::from_config(&config.kafka),
        };
        let consumers = tokio::spawn(consumers.run(
            self.consumes.clone(),
            Arc::clone(&tasks),
            shutdown.clone(),
        ));
        tracing::info!(service = self.name, topics = ?self.consumes, "consuming");
        let workers_stop = CancellationToken::new();
        let workers: Vec<_> = self
            .workers
            .into_iter()
            .map(|mut worker| {
                let stop = workers_stop.clone();
                tokio::spawn(supervise(
                    worker.name.to_owned(),
                    Arc::clone(&tasks),
                    workers_stop.clone(),
                    move || (worker.start)(stop.clone()),
                ))
            })
            .collect();

        let monitor = {
            let readiness = readiness.clone();
            let shutdown = shutdown.clone();
            let health = ServiceHealth {
                pool,
                client,
                tasks,
                stats,
                stall_after: config.kafka.stall_after,
            };
            tokio::spawn(async move {
                readiness.monitor(|| health.probe(), shutdown).await;
            })
        };

        shutdown.cancelled().await;
        readiness.set_serving(false).await;
        let deadline = tokio::time::Instant::now() + config.shutdown_grace;
        // Consumers commit the batch in hand, then the relay publishes what
        // they wrote, then the server drains in-flight calls.
        if tokio::time::timeout_at(deadline, consumers).await.is_err() {
            tracing::warn!("consumers did not stop within the grace period");
        }
        workers_stop.cancel();
        let _ = tokio::time::timeout_at(deadline, futures::future::join_all(workers)).await;
        relay_stop.cancel();
        let _ = tokio::time::timeout_at(deadline, relay).await;
        // Handed back only now, so a new owner's events never overtake
        // what this instance's relay still had to publish.
        match tokio::time::timeout_at(deadline, membership.leave()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "cannot hand the partitions back; they expire instead")
            }
            Err(_) => {
                tracing::warn!("no time left to hand the partitions back; they expire instead")
            }
        }
        server_stop.cancel();
        let _ = monitor.await;
        match tokio::time::timeout_at(deadline, server).await {
            Ok(result) => result?.context("gRPC server failed")?,
            Err(_) => tracing::warn!("in-flight calls did not finish within the grace period"),
        }
        tracing::info!(service = self.name, "stopped");
        Ok(())
    }

    /// Serves the metrics on `METRICS_ADDR` until `stop`: every family
    /// registered at once, and the hooks that read pools, partitions and
    /// the outbox at each scrape.
    async fn serve_metrics(
        &mut self,
        config: &ServiceConfig,
        pool: &DbPool,
        stats: &Arc<ConsumerStats>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        outbox::metrics::describe();
        for topic in &self.consumes {
            consumer::metrics::dead_lettered(topic, 0);
        }
        // Scrapes read the outbox through a connection of their own, so a
        // slow count never holds one the consumers or callers need.
        let scrape_pool = db::named_pool(
            1,
            &config.database,
            self.schema,
            &format!("{} metrics", self.schema),
            &config.membership.instance_id,
        );
        let mut pools = vec![("main", pool.clone()), ("metrics", scrape_pool.clone())];
        pools.append(&mut self.metered_pools);
        let mut endpoint = MetricsEndpoint::default();
        endpoint.refresh_with(metrics::pools::refresh(pools));
        endpoint.refresh_with(consumer::metrics::refresh(Arc::clone(stats)));
        endpoint.refresh_with(outbox::metrics::refresh(scrape_pool));
        endpoint.spawn(&config.serving.metrics, stop).await
    }

    async fn try_start_dependencies(&self, config: &ServiceConfig) -> anyhow::Result<Arc<Client>> {
        db::prepare(&config.database.url, self.schema, (self.migrations)())
            .await
            .with_context(|| format!("failed to prepare database {}", config.database.url))?;
        let client = kafka::connect(&config.kafka, self.name)
            .await
            .context("failed to connect to Kafka")?;
        let topics: Vec<String> = self
            .consumes
            .iter()
            .cloned()
            .chain(self.consumes.iter().map(|topic| dead_letter_topic(topic)))
            .chain(self.produces.iter().cloned())
            .collect();
        kafka::ensure_topics(
            &client,
            &topics,
            config.kafka.partitions,
            config.kafka.replication_factor,
        )
        .await
        .context("failed to create topics")?;
        Ok(client)
    }
}

/// What health reports on: the dependencies answer, no background task is
/// down, no partition is stalled, and the outbox drains.
struct ServiceHealth {
    pool: DbPool,
    client: Arc<Client>,
    tasks: Arc<TaskHealth>,
    stats: Arc<ConsumerStats>,
    stall_after: Duration,
}

impl ServiceHealth {
    async fn probe(&self) -> Result<(), String> {
        if !db::is_reachable(&self.pool).await {
            return Err("database does not answer".into());
        }
        if !kafka::is_reachable(&self.client).await {
            return Err("broker does not answer".into());
        }
        self.tasks.check()?;
        self.stats.progress.check(self.stall_after)?;
        self.outbox_drains().await
    }

    /// `Err` when the oldest event in the outbox has waited longer than the
    /// stall time: the relay is stuck (a topic missing, a broker refusing).
    async fn outbox_drains(&self) -> Result<(), String> {
        let mut conn = self
            .pool
            .get()
            .await
            .map_err(|err| format!("database does not answer: {err}"))?;
        match outbox::oldest_age(&mut conn).await {
            Ok(Some(age)) if age >= self.stall_after => Err(format!(
                "the outbox's oldest event has waited {}s",
                age.as_secs()
            )),
            Ok(_) => Ok(()),
            Err(err) => Err(format!("cannot read the outbox: {err}")),
        }
    }
}
